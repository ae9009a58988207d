"""Reference pools (modelseal.references) and `modelseal references make` / `verify --references`."""

from __future__ import annotations

import json

import pytest
import torch

import modelseal as ms
from modelseal import references as R
from modelseal.errors import DataError, ModelError, ModelSealError


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
    # a model file swapped for another one no longer matches its recorded digest
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in folder.iterdir():
        (bad / p.name).write_bytes(p.read_bytes())
    man = json.loads((bad / "pool.json").read_text())
    man["models"][0]["file"], man["models"][1]["file"] = man["models"][1]["file"], man["models"][0]["file"]
    (bad / "pool.json").write_text(json.dumps(man))
    with pytest.raises(ModelError, match="digest"):
        R.load_pool(bad)
    man["models"][0]["file"] = "../escape.safetensors"
    (bad / "pool.json").write_text(json.dumps(man))
    with pytest.raises(DataError, match="bad model entry"):
        R.load_pool(bad)


def test_model_digest_is_the_weights():
    a = ms.models.build("mlp", input_shape=(1, 8, 8), num_classes=10, seed=0, hidden=[8])
    b = ms.models.build("mlp", input_shape=(1, 8, 8), num_classes=10, seed=0, hidden=[8])
    assert R.model_digest(a) == R.model_digest(b) == R.model_digest(ms.Suspect(a))
    with torch.no_grad():
        next(b.parameters()).view(-1)[0] += 1e-6
    assert R.model_digest(a) != R.model_digest(b)


def test_cli_references_make_and_verify_with_pool(tmp_path):
    from typer.testing import CliRunner

    from modelseal.cli import app

    runner = CliRunner()
    folder = tmp_path / "refs"
    r = runner.invoke(app, ["references", "make", "--data", "digits", "--n", "3", "--arch", "mlp", "--epochs", "1",
                            "--out", str(folder), "--seed", "7", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["models"] == 3
    d = ms.data.load("digits", seed=0)
    owner = ms.models.build("mlp", d.meta, seed=0)
    ms.train.fit(owner, d.owner, epochs=3, seed=0, progress=False)
    ms.models.io.save_model(owner, tmp_path / "owner.safetensors")
    key = ms.methods.get("c-examples")(variant="c", n=10, seed=1).extract(owner, d.meta)
    key.save(tmp_path / "ce.seal")
    r = runner.invoke(app, ["verify", str(tmp_path / "ce.seal"), str(tmp_path / "owner.safetensors"),
                            "--references", str(folder), "--alpha", "0.3", "--json"])
    assert r.exit_code == 0, r.output
    v = json.loads(r.output)
    assert v["details"]["references"] == 3 and v["details"]["p_floor"] == 0.25
    r = runner.invoke(app, ["verify", str(tmp_path / "ce.seal"), str(tmp_path / "owner.safetensors"),
                            "--references", str(tmp_path / "nowhere")])
    assert r.exit_code == 2 and "not a folder" in r.output


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
