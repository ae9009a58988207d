"""The robustness benchmark: scenarios, local and Ray runners, resumable SQLite store, HTML report, demo."""

from __future__ import annotations

import base64
import io
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from modelseal import bench  # noqa: E402
from modelseal.attacks.queries import PerturbQueries, jpeg_like  # noqa: E402
from modelseal.bench import backends, driver, jobs  # noqa: E402
from modelseal.bench.report import SECTIONS  # noqa: E402
from modelseal.bench.scenario import Protection, ScenarioError  # noqa: E402
from modelseal.bench.store import Store  # noqa: E402
from modelseal.errors import ModelSealError, OutputExistsError  # noqa: E402

TINY = bench.load("tiny")


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """The tiny scenario run locally, interrupted after 3 cells, then resumed to the end."""
    out = tmp_path_factory.mktemp("tiny-local")
    first = bench.run(TINY, out, max_cells=3)
    second = bench.run(TINY, out)
    return out, first, second


def test_tiny_scenario_expands_cells():
    # 2 protections x (none + prune 0.3 + prune 0.6 + perturb) x 1 seed
    assert len(TINY.cells) == 8
    assert len({c.id for c in TINY.cells}) == 8
    strengths = sorted(c.attack.strength for c in TINY.cells if c.attack.attack == "prune")
    assert strengths == [0.3, 0.3, 0.6, 0.6]


def test_resume_skips_finished_cells(resumed):
    out, first, second = resumed
    assert first["ran"] == 3 and first["pending"] == 5 and first["negatives"] == 0
    assert second["skipped_finished"] == 3 and second["ran"] == 5 and second["pending"] == 0
    with Store(out / "results.sqlite") as s:
        cells, negs = s.cells(), s.negatives()
        kinds = sorted(a["kind"] for a in s.artifacts())
    assert len(cells) == 8 and all(c["status"] == "ok" for c in cells)
    assert len(negs) == 2  # one negative x two protections
    assert kinds == ["negative", "owner", "protection", "protection"]  # nothing prepared twice
    # unattacked protected models are detected, the independent model is not
    assert all(c["owned"] for c in cells if c["attack"] == "none")
    assert not any(n["owned"] for n in negs)
    third = bench.run(TINY, out)
    assert third["ran"] == 0 and third["skipped_finished"] == 8


def test_removed_flag_is_consistent(resumed):
    out, _, _ = resumed
    with Store(out / "results.sqlite") as s:
        for c in s.cells():
            assert c["removed"] == int(c["attack"] != "none" and (not c["owned"])
                                       and c["attacked_acc"] >= c["owner_acc"] - 0.05)


@pytest.mark.slow
def test_ray_backend_gives_identical_rows(resumed, tmp_path):
    pytest.importorskip("ray")
    out, _, _ = resumed
    summary = bench.run(TINY, tmp_path / "ray", backend="ray", num_cpus=2)
    assert summary["pending"] == 0 and summary["errors"] == 0
    assert driver.rows_for_comparison(out / "results.sqlite") == \
        driver.rows_for_comparison(tmp_path / "ray" / "results.sqlite")


def test_report_has_every_section_and_images_decode(resumed, tmp_path):
    out, _, _ = resumed
    path = bench.report(out / "results.sqlite", tmp_path / "report.html")
    text = path.read_text()
    for sec in SECTIONS:
        assert f"id='{sec}'" in text, sec
    for col in ("detection rate", "FPR (negatives)", "ROC AUC", "Uniqueness Score", "colluders found",
                "innocents accused", "locked acc", "unlocked acc", "recovered acc", "mean queries", "fidelity"):
        assert col in text, col
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    assert len(images) == 4  # accuracy, p-value per attack, p-value scatter, arena ROC
    for b in images:
        raw = base64.b64decode(b)
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        assert mpimg.imread(io.BytesIO(raw), format="png").ndim == 3
    assert "http" not in text.split("<body>")[1]  # self-contained
    with pytest.raises(OutputExistsError):
        bench.report(out / "results.sqlite", path)
    with pytest.raises(ModelSealError, match="does not exist"):
        bench.report(tmp_path / "missing.sqlite", tmp_path / "r.html")


BAD = [
    ("name = 'x'\ndata = 'digits'\n[owner\narch = 'mlp'\n", r"line 3"),
    ("data = 'digits'\n[owner]\narch = 'mlp'\nepochs = 'five'\n[[protections]]\nmethod = 'tafa'\n",
     r"line 4: key 'owner.epochs': must be int"),
    ("data = 'digits'\n[owner]\narch = 'mlp'\nepochs = 1\n\n[[protections]]\nmethod = 'nope'\n",
     r"line 7: key 'method': method 'nope' is not installed"),
    ("data = 'digits'\n[owner]\narch = 'mlp'\nepochs = 1\n[[protections]]\nmethod = 'tafa'\n"
     "[[attacks]]\nname = 'prune'\nparams = { amount = 1.5 }\n", r"line 9: key 'params'"),
    ("data = 'digits'\nbogus = 1\n[owner]\narch = 'mlp'\nepochs = 1\n[[protections]]\nmethod = 'tafa'\n",
     r"line 2: key 'bogus': unknown key"),
    ("data = 'digits'\n[owner]\narch = 'mlp'\nepochs = 1\n[[protections]]\nmethod = 'tafa'\n"
     "[[attacks]]\nname = 'teleport'\n", r"line 8: key 'name': unknown attack 'teleport'"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_malformed_scenario_names_key_and_line(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=message) as e:
        bench.load(path)
    assert str(path) in str(e.value)


def test_missing_scenario_and_unknown_backend(tmp_path):
    with pytest.raises(ScenarioError, match="does not exist"):
        bench.load(tmp_path / "nope.toml")
    with pytest.raises(ModelSealError, match="unknown backend"):
        backends.make_backend("spark")


@pytest.mark.parametrize("device,cluster_gpus,gpus", [
    ("cuda", 0.0, 1.0), ("cuda:0", 0.0, 1.0), ("CUDA", 4.0, 1.0),  # cuda asks for a GPU whatever Ray reports
    ("auto", 2.0, 1.0), ("auto", 0.0, None), ("cpu", 8.0, None), (None, 8.0, None),
])
def test_ray_cells_ask_for_a_gpu_when_the_device_is_cuda(device, cluster_gpus, gpus):
    # Ray hides the GPUs from a task that asks for none, so a CUDA bench cell must ask
    opts = backends.ray_task_options(device, cluster_gpus)
    assert opts["num_cpus"] == 1 and opts["max_retries"] == 0
    assert opts.get("num_gpus") == gpus
    assert backends.ray_task_options("cuda", gpus_per_task=0.25)["num_gpus"] == 0.25
    with pytest.raises(ModelSealError, match="GPUs per bench job"):
        backends.ray_task_options("cuda", gpus_per_task=0)


def test_model_bytes_round_trip():
    from modelseal import models

    m = models.build("mlp", input_shape=(1, 8, 8), num_classes=10, seed=3)
    back = models.model_from_bytes(models.model_to_bytes(m))
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(m.eval()(x), back(x))
    with pytest.raises(ModelSealError, match="not valid JSON|not a safetensors"):
        models.model_from_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")


def models_suspect(m):
    from modelseal import Suspect

    return Suspect(m)


def test_query_perturbations():
    x = torch.rand(3, 1, 28, 28)
    y = jpeg_like(x, 50)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert 0 < (y - x).abs().mean() < 0.1
    assert torch.allclose(jpeg_like(x, 100), x, atol=0.02)
    with pytest.raises(ModelSealError):
        PerturbQueries(kind="blur")
    from modelseal import models

    m = models.build("mlp", input_shape=(1, 28, 28), num_classes=10, seed=0)
    s = PerturbQueries(kind="gaussian", std=0.1, seed=1).wrap(models_suspect(m))
    assert s.module is None  # black-box: white-box methods cannot peek past the perturbation
    assert s.predict(x).shape == (3, 10) and s.queries == 3


def test_demo_refuses_to_overwrite_and_its_scenario_is_a_selection_of_the_parsed_one(tmp_path):
    from modelseal import demo, methods

    (tmp_path / "results.sqlite").write_text("x")
    with pytest.raises(OutputExistsError, match="--force"):
        demo.run_demo(tmp_path)
    full = bench.load("demo")
    sc = demo.demo_scenario(seed=4)
    assert sc.seeds == [4] and sc.owner["seed"] == 4 and sc.data == "mnist5k"
    # every protection; the peer baselines (AKH, IPGuard, ...) are comparators, scored by the bench, not demoed
    assert {p.method for p in sc.protections} == {n for n in methods.names() if not methods.get(n).peer_baseline}
    assert len(sc.cells) == len(full.cells) and sc.selection == {"seed": 4}
    # seed 0 is the scenario's own: the same cells, the same content ids (results stay comparable)
    assert [c.id for c in demo.demo_scenario(seed=0).cells] == [c.id for c in full.cells]
    assert {c.id for c in sc.cells}.isdisjoint(c.id for c in full.cells)

    two = demo.demo_scenario(methods=["trigger-set", "tafa"])
    assert {p.method for p in two.protections} == {"trigger-set", "tafa"}
    assert {c.protection.method for c in two.cells} == {"trigger-set", "tafa"}
    # attacks aimed only at dropped protections are gone; the others lose the dropped labels
    assert [(v.label, v.only) for v in two.attacks] == [
        ("none", None), ("finetune", ("trigger-set", "tafa")), ("prune amount=0.3", None),
        ("prune amount=0.6", None), ("quantize", ("trigger-set", "tafa")), ("distill-mlp", ("trigger-set",)),
        ("overwrite", ("trigger-set",)), ("perturb", ("trigger-set", "tafa")),
        ("squeeze", ("trigger-set", "tafa")), ("round", ("trigger-set", "tafa")),
        ("reject-softmax", ("trigger-set",)), ("structured-prune", ("trigger-set", "tafa")),
        ("permute", ("tafa",)), ("knockoff", ("trigger-set", "tafa")), ("prune-then-steal", ("trigger-set",))]
    assert all(c.id in {d.id for d in full.cells} for c in two.cells)
    with pytest.raises(bench.ScenarioError, match="no protection uses nope"):
        full.select(methods=["nope"])


def test_bench_run_and_demo_take_only_and_seed(tmp_path, capsys):
    """`--only` narrows a scenario to some methods and `--seed` runs it with one seed; both are recorded."""
    import json

    from modelseal.bench.store import Store
    from modelseal.cli import main

    code = main(["bench", "run", "tiny", "--out", str(tmp_path / "r"), "--only", "trigger-set", "--seed", "3",
                 "--max-cells", "1", "--json"])
    assert code == 0, capsys.readouterr().err
    with Store(tmp_path / "r" / "results.sqlite") as s:
        assert json.loads(s.get_meta("selection")) == {"methods": ["trigger-set"], "seed": 3}
        assert {c["protection"] for c in s.cells()} <= {"trigger-set"} and {c["seed"] for c in s.cells()} == {3}
    assert main(["bench", "run", "tiny", "--out", str(tmp_path / "r2"), "--only", " , "]) == 2
    assert "at least one method" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "d"), "--only", "nope"]) == 2
    assert "no protection uses nope" in capsys.readouterr().err


def test_negative_of_another_architecture_is_not_accused_and_says_why():
    """A white-box key that cannot apply to an independent model (another architecture) is recorded as no
    accusation with its reason, not as an error."""
    import modelseal as ms

    d = ms.data.load("digits", seed=0)
    owner = ms.models.build("mlp", d.meta, seed=0)
    ms.train.fit(owner, d.owner, epochs=2, seed=0, progress=False)
    _, key = ms.methods.get("deepmarks")(users=7, epochs=1, seed=0).distribute(owner, d.owner, progress=False)
    other = ms.models.build("cnn", d.meta, seed=1)
    prot = Protection("deepmarks", "deepmarks", "per-user", {})

    def neg(model):
        return jobs.NegativeJob("n0", "cnn#0", "cnn", 0.5, ms.models.model_to_bytes(model), prot, 0, key.to_bytes(),
                                [], 1e-6, "cpu", 1)

    row = jobs.job_negative(neg(other))
    assert row["status"] == "ok" and row["owned"] is False and row["innocents_accused"] == 0
    assert row["p_value"] is None and "layer" in row["detail"]["not_applicable"]
    # a negative the key does apply to gets a real verdict with a p-value
    same = ms.models.build("mlp", d.meta, seed=2)
    row = jobs.job_negative(neg(same))
    assert row["status"] == "ok" and row["p_value"] is not None and row["innocents_accused"] == 0


def _spec_job(key, references):
    return jobs.NegativeJob("n0", "mlp#0", "mlp", 0.5, b"model", Protection("tafa", "tafa", "fingerprint", {}), 0,
                            key, references, 1e-6, "cpu", 1)


def test_a_backend_hands_each_job_its_shared_values():
    """A job spec's `Shared` fields reach the job as the values the backend shared; other fields as given."""
    job = _spec_job(backends.Shared("k:tafa:0"), backends.Shared("refs"))
    ((i, got),) = list(backends.LocalBackend().map(lambda j: j, [job], {"k:tafa:0": b"KEY", "refs": [b"R"]}))
    assert i == 0 and got.key == b"KEY" and got.references == [b"R"] and got.model == b"model"
    assert job.key == backends.Shared("k:tafa:0")  # specs are frozen: the original is untouched


def test_a_job_run_without_its_backend_says_so_in_its_row():
    row = jobs.job_negative(_spec_job(backends.Shared("k:tafa:0"), []))
    assert row["status"] == "error" and "unresolved shared value 'k:tafa:0'" in row["detail"]["error"]


def test_a_resumed_run_records_key_parameters_an_older_run_did_not(resumed):
    out, _, _ = resumed
    with Store(out / "results.sqlite") as s:
        recorded = s.protection_params()
        for a in s.artifacts():
            if a["kind"] == "protection":
                a["info"].pop("key_params")
                s.put_artifact(a["artifact_id"], a["kind"], a["label"], a["info"], a["wall_s"])
        assert s.protection_params() == {}
        s.db.execute("DELETE FROM cells WHERE attack = 'none'")  # one pending cell per protection
        s.db.commit()
    assert recorded["trigger-set"]["n"] == 20 and set(recorded) == {"trigger-set", "tafa"}
    summary = bench.run(TINY, out)
    assert summary["ran"] == 2 and summary["pending"] == 0  # nothing else reruns: the protections come from
    # the cache, and their parameters from the cached keys
    with Store(out / "results.sqlite") as s:
        assert s.protection_params() == recorded
