"""Reference pools (modelseal.references) and `modelseal references make` / `verify --references`: the pool is
made of converged models and carries a validated manifest; a pool that does not cover the suspect is refused
(accuracy) or flagged (architecture); with the default pool no reference-null method accuses converged
independents (issue 37)."""

from __future__ import annotations

import json

import pytest
import torch

import modelseal as ms
from modelseal import references as R
from modelseal.errors import DataError, ModelError, ModelSealError, ReferencePoolError


@pytest.fixture(scope="session")
def small_pool(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pool")
    return folder, R.make_pool("digits", 4, folder, archs="mlp", epochs=2, seed=300, progress=False)


def test_pool_is_made_cached_and_grown(small_pool, monkeypatch):
    folder, doc = small_pool
    assert len(doc["models"]) == 4 and (folder / "pool.json").exists()
    assert len({m["digest"] for m in doc["models"]}) == 4  # independent models: all different
    assert [m["seed"] for m in doc["models"]] == [300, 301, 302, 303]
    # a second call trains nothing: every model is read from the folder
    monkeypatch.setattr(ms.train, "fit", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    again = R.make_pool("digits", 4, folder, archs="mlp", epochs=2, seed=300, progress=False)
    assert [m["digest"] for m in again["models"]] == [m["digest"] for m in doc["models"]]
    models = R.load_pool(folder)
    assert [R.model_digest(m) for m in models] == [m["digest"] for m in doc["models"]]
    assert len(R.load_pool(folder, n=2)) == 2


def test_pool_settings_and_tampering_are_refused(small_pool, tmp_path):
    folder, doc = small_pool
    with pytest.raises(ModelSealError, match="other settings"):
        R.make_pool("digits", 4, folder, archs="mlp", epochs=3, seed=300, progress=False)
    with pytest.raises(DataError, match="no pool.json"):
        R.load_pool(tmp_path)
    with pytest.raises(ModelSealError, match="unknown reference architecture"):
        R.arch_plan("nosuch")
    with pytest.raises(ModelSealError, match="1 to"):
        R.make_pool("digits", 0, tmp_path / "x")
    # a model file swapped for another one no longer matches its recorded SHA-256
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in folder.iterdir():
        (bad / p.name).write_bytes(p.read_bytes())
    man = json.loads((bad / "pool.json").read_text())
    man["models"][0]["file"], man["models"][1]["file"] = man["models"][1]["file"], man["models"][0]["file"]
    (bad / "pool.json").write_text(json.dumps(man))
    with pytest.raises(ReferencePoolError, match="SHA-256"):
        R.load_pool(bad)
    # ... and when the SHA-256 is edited to match, by its weights digest
    man["models"][0]["sha256"], man["models"][1]["sha256"] = man["models"][1]["sha256"], man["models"][0]["sha256"]
    (bad / "pool.json").write_text(json.dumps(man))
    with pytest.raises(ModelError, match="digest"):
        R.load_pool(bad)
    man["models"][0]["file"] = "../escape.safetensors"
    (bad / "pool.json").write_text(json.dumps(man))
    with pytest.raises(DataError, match="model entry 0"):
        R.load_pool(bad)


def _copy_pool(folder, dest):
    dest.mkdir()
    for p in folder.iterdir():
        (dest / p.name).write_bytes(p.read_bytes())
    return dest


def _one_line(e):
    return "\n" not in str(e.value) and len(str(e.value)) < 400


def test_manifest_is_written_validated_and_round_tripped(small_pool):
    folder, doc = small_pool
    on_disk = json.loads((folder / "pool.json").read_text())
    assert on_disk["format"] == R.POOL_FORMAT and on_disk["modelseal_version"] == ms.__version__
    assert on_disk["settings"]["data"] == "digits" and on_disk["settings"]["split"] == "attacker"
    assert on_disk["settings"]["epochs"] == 2 and on_disk["settings"]["data_seed"] == 0
    import hashlib

    for e in on_disk["models"]:
        assert e["sha256"] == hashlib.sha256((folder / e["file"]).read_bytes()).hexdigest()
        assert e["arch"] == "mlp" and e["epochs"] == 2 and e["split"] == "attacker" and 0 < e["test_accuracy"] <= 1
    pool = R.load_pool(folder)
    assert isinstance(pool, R.Pool) and pool.manifest == on_disk
    assert pool.manifest_sha256 == hashlib.sha256((folder / "pool.json").read_bytes()).hexdigest()
    found = R.read_manifest(folder)
    assert found is not None and found[0] == on_disk


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.update(format=1), "format 1"),
    (lambda m: m.pop("modelseal_version"), "modelseal_version"),
    (lambda m: m["settings"].pop("data_seed"), "settings"),
    (lambda m: m["models"][1].pop("test_accuracy"), "model entry 1"),
    (lambda m: m["models"][0].update(test_accuracy=1.5), "model entry 0"),
    (lambda m: m["models"][0].update(epochs="many"), "model entry 0"),
    (lambda m: m["models"][2].update(sha256="00" * 32), "SHA-256"),
    (lambda m: m["models"][3].update(test_accuracy=0.999), "edited"),  # a widened accuracy range
])
def test_a_bad_or_edited_manifest_is_refused_in_one_line(small_pool, tmp_path, edit, match):
    folder, _ = small_pool
    bad = _copy_pool(folder, tmp_path / "bad")
    man = json.loads((bad / "pool.json").read_text())
    edit(man)
    (bad / "pool.json").write_text(json.dumps(man))
    with pytest.raises(ReferencePoolError, match=match) as e:
        R.load_pool(bad)
    assert _one_line(e)


def test_a_garbled_manifest_is_refused_in_one_line(small_pool, tmp_path):
    folder, _ = small_pool
    bad = _copy_pool(folder, tmp_path / "bad")
    for text in ["{not json", "[]", json.dumps({"type": "modelseal-reference-pool"}), "x" * (R.MAX_MANIFEST_BYTES + 1)]:
        (bad / "pool.json").write_text(text)
        with pytest.raises(ReferencePoolError) as e:
            R.load_pool(bad)
        assert _one_line(e)


def test_the_default_pool_trains_converged_models(tmp_path):
    doc = R.make_pool("digits", 2, tmp_path / "p", archs="mlp", seed=40, progress=False)
    assert doc["settings"]["epochs"] == "converged" and "plateau" in doc["settings"]["convergence"]
    for e in doc["models"]:
        assert R.MIN_EPOCHS <= e["epochs"] <= R.MAX_EPOCHS and e["epochs"] % R.CHUNK == 0
        assert e["test_accuracy"] > 0.9, e  # 1- to 3-epoch models of the old default: 0.22 to 0.92
    assert [e["options"] for e in doc["models"]] == [{}, {"hidden": [64]}]  # the zoo's default width first


def test_model_digest_is_the_weights():
    a = ms.models.build("mlp", input_shape=(1, 8, 8), num_classes=10, seed=0, hidden=[8])
    b = ms.models.build("mlp", input_shape=(1, 8, 8), num_classes=10, seed=0, hidden=[8])
    assert R.model_digest(a) == R.model_digest(b) == R.model_digest(ms.Suspect(a))
    with torch.no_grad():
        next(b.parameters()).view(-1)[0] += 1e-6
    assert R.model_digest(a) != R.model_digest(b)


def test_cli_references_make_writes_the_manifest_and_verify_uses_it(tmp_path):
    from typer.testing import CliRunner

    from modelseal.cli import app

    runner = CliRunner()
    folder = tmp_path / "refs"
    r = runner.invoke(app, ["references", "make", "--data", "digits", "--n", "3", "--arch", "mlp",
                            "--out", str(folder), "--seed", "7", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["models"] == 3 and out["manifest"] == str(folder / "pool.json") and out["test_accuracy_min"] > 0.9
    man = json.loads((folder / "pool.json").read_text())
    assert man["settings"]["epochs"] == "converged" and len(man["models"]) == 3
    assert all(e["epochs"] >= R.MIN_EPOCHS and len(e["sha256"]) == 64 for e in man["models"])
    d = ms.data.load("digits", seed=0)
    owner = ms.models.build("mlp", d.meta, seed=0)
    ms.train.fit(owner, d.owner, epochs=30, lr=3e-3, seed=0, progress=False)
    ms.models.io.save_model(owner, tmp_path / "owner.safetensors")
    key = ms.methods.get("c-examples")(variant="c", n=10, seed=1).extract(owner, d.meta)
    key.save(tmp_path / "ce.seal")
    verify = ["verify", str(tmp_path / "ce.seal"), str(tmp_path / "owner.safetensors"), "--alpha", "0.3"]
    r = runner.invoke(app, [*verify, "--references", str(folder), "--json"])
    assert r.exit_code == 0, r.output
    v = json.loads(r.output)
    assert v["details"]["references"] == 3 and v["details"]["p_floor"] == 0.25
    assert v["details"]["reference_pool"]["manifest_sha256"] == R.load_pool(folder).manifest_sha256
    r = runner.invoke(app, [*verify, "--references", str(tmp_path / "nowhere")])
    assert r.exit_code == 2 and "not a folder" in r.output
    # an under-trained pool does not cover a converged suspect: one line, exit 2
    weak = tmp_path / "weak"
    r = runner.invoke(app, ["references", "make", "--data", "digits", "--n", "2", "--arch", "mlp", "--epochs", "1",
                            "--out", str(weak), "--seed", "9"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, [*verify, "--references", str(weak)])
    assert r.exit_code == 2 and "does not cover the suspect" in r.output
    assert len(r.output.strip().splitlines()) == 1
    # an edited manifest: one line, exit 2
    man["models"][0]["test_accuracy"] = 0.5
    (folder / "pool.json").write_text(json.dumps(man))
    r = runner.invoke(app, [*verify, "--references", str(folder)])
    assert r.exit_code == 2 and "edited" in r.output and len(r.output.strip().splitlines()) == 1


# ------------------------------------------------------------------------------- coverage of the suspect
@pytest.fixture(scope="module")
def cover():
    """A converged digits CNN owner, a converged independent CNN and MLP, small keys of every reference-null
    method, an under-trained pool (1 epoch) and a converged MLP-only pool (3 models each)."""
    import tempfile

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    d = ms.data.load("digits", seed=0)
    owner = ms.models.build("cnn", d.meta, seed=0)
    ms.train.fit(owner, d.owner, epochs=30, lr=3e-3, seed=0, progress=False)
    ind = {}
    for arch in ("cnn", "mlp"):
        m = ms.models.build(arch, d.meta, seed=77)
        ms.train.fit(m, d.attacker, epochs=30, lr=3e-3, seed=77, progress=False)
        ind[arch] = m.eval()
    keys = {"c-examples": ms.methods.get("c-examples")(n=20, seed=0).extract(owner, d.meta)}
    for name, kw in {"akh": {"n": 20}, "ipguard": {"n": 20, "steps": 100}, "modeldiff": {"n": 20},
                     "sac": {"n": 20}}.items():
        keys[name] = ms.methods.get(name)(seed=0, **kw).extract(owner, d.meta)
    root = tempfile.TemporaryDirectory()
    weak = R.make_pool("digits", 3, f"{root.name}/weak", archs="mlp,cnn", epochs=1, seed=900, progress=False)
    R.make_pool("digits", 3, f"{root.name}/mlp", archs="mlp", seed=950, progress=False)
    yield {"data": d, "owner": owner.eval(), "ind": ind, "keys": keys, "weak": f"{root.name}/weak",
           "weak_doc": weak, "mlp": f"{root.name}/mlp"}
    root.cleanup()
    torch.set_num_threads(before)


REFERENCE_NULL = ["c-examples", "akh", "ipguard", "modeldiff", "sac"]


def _judge(cover, name, suspect, refs, **kw):
    if name == "lineage-outputs":
        from modelseal.lineage import Lineage

        meta = cover["data"].meta
        return Lineage(alpha=0.01).outputs_part(cover["owner"], ms.Suspect(suspect), refs, tuple(meta.input_shape),
                                                tuple(meta.bounds))
    return ms.methods.get(name)().verify(suspect, cover["keys"][name], references=refs, alpha=0.01, **kw)


@pytest.mark.parametrize("name", [*REFERENCE_NULL, "lineage-outputs"])
def test_an_under_trained_pool_is_refused_in_one_line(cover, name):
    accs = [e["test_accuracy"] for e in cover["weak_doc"]["models"]]
    assert max(accs) < 0.8  # 1-epoch models: what the old default pool looked like
    for refs in (cover["weak"], R.load_pool(cover["weak"])):  # a folder or a loaded Pool
        with pytest.raises(ReferencePoolError, match="does not cover the suspect") as e:
            _judge(cover, name, cover["ind"]["cnn"], refs)
        assert _one_line(e)


@pytest.mark.parametrize("name", [*REFERENCE_NULL, "lineage-outputs"])
def test_a_pool_without_the_suspects_architecture_is_flagged(cover, name):
    v = _judge(cover, name, cover["ind"]["cnn"], cover["mlp"])
    pool = v.details["reference_pool"]
    assert pool["architectures"] == ["mlp"] and pool["suspect_architecture"] == "cnn"
    assert any("holds only mlp" in f for f in pool["flags"])
    assert pool["suspect_accuracy"] > 0.9 and pool["manifest_sha256"] == R.load_pool(cover["mlp"]).manifest_sha256
    v = _judge(cover, name, cover["ind"]["mlp"], cover["mlp"])
    assert v.details["reference_pool"]["flags"] == []  # covered: nothing to flag


def test_references_without_a_manifest_or_a_budgeted_suspect_are_flagged(cover):
    v = _judge(cover, "sac", cover["ind"]["mlp"], list(R.load_pool(cover["mlp"])))
    assert v.details["reference_pool"]["manifest"] is None and "without a manifest" in v.details["reference_pool"][
        "flags"][0]
    s = ms.Suspect(cover["ind"]["mlp"], max_queries=5000)
    v = ms.methods.get("sac")().verify(s, cover["keys"]["sac"], references=cover["weak"], alpha=0.01)
    assert v.details["reference_pool"]["suspect_accuracy"] is None  # not measured: no refusal, a flag
    assert any("not measured" in f for f in v.details["reference_pool"]["flags"])


@pytest.mark.parametrize("name", ["sac", "c-examples"])
def test_evidence_records_the_pool_and_check_reports_it(cover, name):
    from modelseal import evidence, methods

    key = cover["keys"][name]
    public = methods.commit(key)
    pool = R.load_pool(cover["mlp"])
    v = methods.judge(ms.Suspect(cover["ind"]["mlp"]), key, references=pool, alpha=0.5)
    ev = evidence.make(v, key, ms.Suspect(cover["ind"]["mlp"]))
    report = evidence.check(ev, public)
    assert report["agrees"], report["problems"]
    assert report["verifier"]["reference_pool"]["manifest_sha256"] == pool.manifest_sha256
    assert any("reference" in line for line in report["not_proved"])
    forged = json.loads(json.dumps(ev))
    forged["transcript"]["verifier"]["reference_pool"]["references"] = 99
    assert not evidence.check(forged, public)["agrees"]


# ------------------------------------------------------------------ converged independents vs the default pool
@pytest.fixture(scope="module")
def population(tmp_path_factory):
    """The default pool (99 converged references, the attacker split) and 32 converged independents of the zoo's
    mlp and cnn (default widths, own seeds, 20-40 epochs on the attacker split), as benchmarks/references.py."""
    import importlib.util
    from pathlib import Path

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("bench_refs", Path(__file__).parents[1] / "benchmarks"
                                                  / "references.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    d = ms.data.load("digits", seed=0)
    folder = tmp_path_factory.mktemp("default-pool")
    R.make_pool("digits", 99, folder, seed=5000, progress=False)
    yield {"bench": bench, "data": d, "pool": R.load_pool(folder), "ind": bench.independents(d, 32, 0)}
    torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.parametrize("name", [*REFERENCE_NULL, "lineage-outputs"])
def test_no_reference_null_method_accuses_converged_independents(cover, population, name):
    ind = population["ind"]
    assert {m["arch"] for m in ind} == {"mlp", "cnn"} and len(ind) >= 30
    assert min(m["test_accuracy"] for m in ind) > 0.9
    p = [float(_judge(cover, name, m["model"], population["pool"]).p_value) for m in ind]
    assert [i for i, x in enumerate(p) if x <= 0.01] == [], p
    # ...while the owner itself is accused (the pool can reach alpha 0.01: R = 99). Asserted for the methods
    # whose small test keys have the power: not akh (the converged owner misclassifies only 8 test inputs, and
    # 8 agreements cannot reach 0.01 under its null), ipguard (20 points: p 0.027 for the owner) nor the lineage
    # test's black-box part (an intersection-union of sign tests, conservative by design).
    if name in ("c-examples", "modeldiff", "sac"):
        assert _judge(cover, name, cover["owner"], population["pool"]).owned


def test_the_references_benchmark_runs_quick(capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_refs", Path(__file__).parents[1] / "benchmarks"
                                                  / "references.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    before = torch.get_num_threads()
    try:
        report = bench.main(["--quick"])
    finally:
        torch.set_num_threads(before)
    assert json.loads(capsys.readouterr().out)["methods"].keys() == report["methods"].keys()
    assert set(report["methods"]) == {*REFERENCE_NULL, "lineage-outputs"}
    assert all(r["judged"] + r["refused"] == report["models"] for r in report["methods"].values())


def test_cli_references_make_takes_device_and_batch_size(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from modelseal.cli import app

    calls = []
    real = ms.train.fit
    monkeypatch.setattr(ms.train, "fit", lambda *a, **k: calls.append(k) or real(*a, **k))
    folder = tmp_path / "refs"
    r = CliRunner().invoke(app, ["references", "make", "--data", "digits", "--n", "2", "--arch", "mlp", "--epochs",
                                 "1", "--out", str(folder), "--device", "cpu", "--batch-size", "32", "--json"])
    assert r.exit_code == 0, r.output
    assert [(c["device"], c["batch_size"]) for c in calls] == [("cpu", 32)] * 2
    # the batch size changes the models, so it is a pool setting (recorded only when not the default 64)
    assert json.loads(r.output)["settings"]["batch_size"] == 32
    with pytest.raises(ModelSealError, match="other settings"):
        R.make_pool("digits", 2, folder, archs="mlp", epochs=1, seed=1000, progress=False)
    assert "batch_size" not in R.make_pool("digits", 1, tmp_path / "d", archs="mlp", epochs=1,
                                            progress=False)["settings"]

