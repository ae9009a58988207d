import json

import pytest
from typer.testing import CliRunner

import modelseal as ms
from modelseal.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    r = runner.invoke(app, ["train", "--data", "digits", "--arch", "mlp", "--epochs", "3",
                            "--out", str(d / "owner.safetensors"), "--json"])
    assert r.exit_code == 0, r.output
    return d, json.loads(r.stdout)


def test_train_writes_a_loadable_model_and_json(trained):
    d, payload = trained
    assert payload["test_accuracy"] > 0.5 and payload["epochs"] == 3
    assert ms.models.load_model(d / "owner.safetensors").modelseal_spec["name"] == "mlp"


def test_train_refuses_to_overwrite_without_force(trained):
    d, _ = trained
    before = (d / "owner.safetensors").read_bytes()
    r = runner.invoke(app, ["train", "--data", "digits", "--arch", "mlp", "--epochs", "1",
                            "--out", str(d / "owner.safetensors")])
    assert r.exit_code == 2 and "--force" in r.output
    assert (d / "owner.safetensors").read_bytes() == before


def test_attack_prune_from_the_command_line(trained):
    d, _ = trained
    r = runner.invoke(app, ["attack", "prune", str(d / "owner.safetensors"), "--data", "digits",
                            "--set", "amount=0.5", "--out", str(d / "pruned.safetensors"), "--json"])
    assert r.exit_code == 0, r.output
    payload = json.loads(r.stdout)
    assert payload["params"]["amount"] == 0.5
    m = ms.models.load_model(d / "pruned.safetensors")
    w = [p for n, p in m.named_parameters() if n.endswith("weight")]
    zeros = sum(int((p == 0).sum()) for p in w)
    assert zeros == round(0.5 * sum(p.numel() for p in w))


def test_unknown_names_and_bad_set_end_in_one_line_errors(trained):
    d, _ = trained
    r = runner.invoke(app, ["attack", "nosuch", str(d / "owner.safetensors"), "--out", str(d / "x.safetensors")])
    assert r.exit_code == 2 and "unknown attack" in r.output
    r = runner.invoke(app, ["attack", "prune", str(d / "owner.safetensors"), "--set", "amount",
                            "--out", str(d / "y.safetensors")])
    assert r.exit_code == 2 and "NAME=VALUE" in r.output
    r = runner.invoke(app, ["train", "--data", "nosuch", "--out", str(d / "z.safetensors")])
    assert r.exit_code == 2 and "known:" in r.output
    r = runner.invoke(app, ["verify", str(d / "missing.seal"), str(d / "owner.safetensors")])
    assert r.exit_code == 2 and "does not exist" in r.output


def test_methods_and_attack_list():
    r = runner.invoke(app, ["methods", "--json"])
    assert r.exit_code == 0
    assert "prune" in json.loads(r.stdout)["attacks"]


def _spy_fit(monkeypatch):
    """Record the keyword arguments every `modelseal.train.fit` call gets, and still train."""
    calls = []
    real = ms.train.fit

    def spy(*a, **k):
        calls.append(k)
        return real(*a, **k)

    import importlib
    import sys

    importlib.import_module("modelseal.attacks.finetune")  # loaded now, so the loop below sees its `fit`
    # modules that bound `fit` at import (`from ..train import fit`) are patched too, whatever the test order
    for name, mod in list(sys.modules.items()):
        if name.startswith("modelseal") and getattr(mod, "fit", None) is real:
            monkeypatch.setattr(mod, "fit", spy)
    return calls


def test_batch_size_reaches_fit_from_train_and_training_attacks(trained, monkeypatch):
    d, _ = trained
    calls = _spy_fit(monkeypatch)
    r = runner.invoke(app, ["train", "--data", "digits", "--arch", "mlp", "--epochs", "1", "--batch-size", "16",
                            "--device", "cpu", "--out", str(d / "b16.safetensors"), "--json"])
    assert r.exit_code == 0, r.output
    assert [c["batch_size"] for c in calls] == [16]
    r = runner.invoke(app, ["attack", "finetune", str(d / "owner.safetensors"), "--data", "digits", "--set", "epochs=1",
                            "--batch-size", "8", "--out", str(d / "ft8.safetensors"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["params"]["batch_size"] == 8 and calls[-1]["batch_size"] == 8
    r = runner.invoke(app, ["attack", "prune", str(d / "owner.safetensors"), "--data", "digits",
                            "--batch-size", "8", "--out", str(d / "p8.safetensors")])
    assert r.exit_code == 2 and "does not train" in r.output and not (d / "p8.safetensors").exists()
    r = runner.invoke(app, ["train", "--data", "digits", "--arch", "mlp", "--epochs", "1", "--batch-size", "0",
                            "--out", str(d / "b0.safetensors")])
    assert r.exit_code == 2 and "batch_size" in r.output
