"""End-to-end command-line runs of every protection on a small digits model."""

import json

import pytest
import torch
from typer.testing import CliRunner

import modelseal as ms
from modelseal.cli import app

runner = CliRunner()


def run(*args):
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout) if "--json" in args else r.output


@pytest.fixture(scope="module")
def owner(tmp_path_factory):
    d = tmp_path_factory.mktemp("clim")
    run("train", "--data", "digits", "--arch", "mlp", "--epochs", "20", "--out", d / "owner.safetensors", "--json")
    return d


def test_trigger_set_embed_commit_verify(owner):
    d = owner
    run("watermark", "embed", d / "owner.safetensors", "--data", "digits", "--out", d / "marked.safetensors",
        "--key", d / "wm.seal", "--seed", 3, "--json")
    # the commitment is written beside the key at embedding time; `commit` re-derives the same one
    run("commit", d / "wm.seal", "--out", d / "wm.again.json")
    assert json.loads((d / "wm.again.json").read_text()) == json.loads((d / "wm.public.json").read_text())
    v = run("verify", d / "wm.seal", d / "marked.safetensors", "--commitment", d / "wm.public.json", "--json")
    assert v["owned"] and v["p_value"] <= 1e-6 and v["queries"] <= 20
    v = run("verify", d / "wm.seal", d / "owner.safetensors", "--json")
    assert not v["owned"]
    # a commitment of another key refuses this key, naming the trigger
    run("watermark", "embed", d / "owner.safetensors", "--data", "digits", "--out", d / "m2.safetensors",
        "--key", d / "wm2.seal", "--seed", 4)
    r = runner.invoke(app, ["verify", str(d / "wm.seal"), str(d / "marked.safetensors"),
                            "--commitment", str(d / "wm2.public.json")])
    assert r.exit_code == 2 and "trigger" in r.output


def test_tafa_extract_and_verify_onnx(owner):
    d = owner
    out = run("fingerprint", "extract", d / "owner.safetensors", "--method", "tafa", "--key", d / "fp.seal",
              "--seed", 1, "--set", "n=60", "--json")
    assert out["method"] == "tafa"
    ms.models.export_onnx(ms.models.load_model(d / "owner.safetensors"), d / "owner.onnx")
    v = run("verify", d / "fp.seal", d / "owner.onnx", "--json")
    assert v["owned"]


def test_lock_and_unlock_bit_exact(owner):
    d = owner
    out = run("lock", d / "owner.safetensors", "--data", "digits", "--out", d / "locked.safetensors",
              "--key", d / "lock.seal", "--seed", 0, "--json")
    assert out["test_metric_locked"] < out["test_metric_before"] - 0.3
    run("unlock", d / "locked.safetensors", d / "lock.seal", "--out", d / "restored.safetensors")
    a = ms.models.load_model(d / "owner.safetensors").state_dict()
    b = ms.models.load_model(d / "restored.safetensors").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    r = runner.invoke(app, ["unlock", str(d / "owner.safetensors"), str(d / "lock.seal"),
                            "--out", str(d / "x.safetensors")])
    assert r.exit_code == 2 and "error" in r.output


def test_wrong_method_for_command(owner):
    d = owner
    r = runner.invoke(app, ["watermark", "embed", str(d / "owner.safetensors"), "--method", "tafa",
                            "--out", str(d / "w.safetensors"), "--key", str(d / "w.seal"), "--data", "digits"])
    assert r.exit_code == 2 and "is a fingerprint method" in r.output


@pytest.mark.slow
def test_deepmarks_distribute_and_trace(owner):
    d = owner
    manifest = run("deepmarks", "distribute", d / "owner.safetensors", "--users", 31, "--data", "digits",
                   "--out-dir", d / "copies", "--key", d / "dm.seal", "--seed", 0, "--json")
    assert len(manifest["users"]) == 31 and (d / "copies" / "manifest.json").is_file()
    result = run("trace", d / "dm.seal", d / "copies" / "user-005.safetensors", "--json")
    assert result["accused"] == [5]
    assert "accused" in run("trace", d / "dm.seal", d / "copies" / "user-002.safetensors")
    r = runner.invoke(app, ["deepmarks", "distribute", str(d / "owner.safetensors"), "--users", "31",
                            "--data", "digits", "--out-dir", str(d / "copies"), "--key", str(d / "dm.seal")])
    assert r.exit_code == 2 and "--force" in r.output
