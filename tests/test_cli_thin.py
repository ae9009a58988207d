"""The public pieces the thin command line stands on: `modelseal.sources` (one source test, RemoteOptions),
`suspect.open_source`, `models.files` and `api.protect_and_save`; and errors handled once by the root group."""

import dataclasses
import stat
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import modelseal as ms
from modelseal.cli import app
from modelseal.errors import ModelError, ModelSealError, OutputExistsError
from modelseal.models import files
from modelseal.sources import RemoteOptions, source_kind, source_text
from modelseal.suspect import open_source

runner = CliRunner()


@pytest.fixture
def mlp_file(tmp_path):
    model = ms.models.build("mlp", input_shape=(1, 8, 8), num_classes=10, seed=0)
    path = tmp_path / "m.safetensors"
    files.write_model(model, path, data="digits", extra={"seed": 0})
    return model, path


def test_remote_options_are_frozen_and_name_the_http_flags_given():
    opts = RemoteOptions()
    assert opts.http_given() == [] and opts.token_env == "MODELSEAL_TOKEN"
    assert opts.suspect_kwargs() == {"max_queries": None, "reshape": False}
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.timeout = 3  # type: ignore[misc]
    given = RemoteOptions(max_queries=9, timeout=5.0, rate_limit=2.0, label_only=True, max_batch=4)
    assert given.http_given() == ["--timeout", "--rate-limit", "--max-batch", "--label-only"]
    assert given.backend_kwargs() == {"token_env": "MODELSEAL_TOKEN", "label_only": True, "timeout": 5.0,
                                      "rate_limit": 2.0, "max_batch": 4}
    assert RemoteOptions().backend_kwargs() == {"token_env": "MODELSEAL_TOKEN", "label_only": None}


def test_source_kind_is_the_one_test_of_a_source():
    assert source_kind("http://127.0.0.1:8080/v2/models/m") == "url"
    assert source_kind("https://host/v2/models/m") == "url"
    assert source_kind("model.onnx") == source_kind("MODEL.ONNX") == source_kind(Path("a/b.Onnx")) == "onnx"
    assert source_kind("model.safetensors") == source_kind("weights.bin") == "file"
    # a URL that went through a Path lost one '/': it is still a URL, with its '//' back
    assert source_kind(Path("http://127.0.0.1:8080/v2/models/m")) == "url"
    assert source_text(Path("https://h/v2/models/m")) == "https://h/v2/models/m"


def test_open_source_opens_a_model_file_with_its_options(mlp_file):
    _, path = mlp_file
    s = open_source(path, RemoteOptions(max_queries=5), device="cpu")
    assert s.white_box and s.max_queries == 5 and s.source_path == str(path)
    s.predict(torch.zeros(5, 1, 8, 8))
    assert s.queries == 5


def test_open_source_opens_an_onnx_file_black_box(tmp_path, mlp_file):
    pytest.importorskip("onnxruntime")
    model, _ = mlp_file
    ms.models.export_onnx(model, tmp_path / "m.ONNX")
    s = open_source(str(tmp_path / "m.ONNX"))
    assert s.module is None and s.input_shape == (1, 8, 8)


def test_open_source_passes_the_options_to_the_remote_backend(monkeypatch):
    from modelseal.suspect import remote

    seen = {}

    class FakeBackend:
        OPTIONS = remote.RemoteBackend.OPTIONS

        def __init__(self, url, **kw):
            seen.update(url=url, **kw)

        def __call__(self, x):
            return torch.zeros(len(x), 10)

    monkeypatch.setattr(remote, "RemoteBackend", FakeBackend)
    url = "http://127.0.0.1:9/v2/models/m"
    s = open_source(url, RemoteOptions(max_queries=7, timeout=2.5, retries=1, token_env="MY_TOKEN",
                                       output_name="probs"), device="cpu")
    assert seen == {"url": url, "token_env": "MY_TOKEN", "label_only": None, "timeout": 2.5, "retries": 1,
                    "output_name": "probs"}
    assert s.max_queries == 7 and s.name == url and not s.white_box


def test_open_source_refuses_http_options_on_a_file_in_one_line(mlp_file):
    _, path = mlp_file
    with pytest.raises(ModelSealError) as e:
        open_source(path, RemoteOptions(timeout=3.0, label_only=True))
    assert str(e.value) == f"--timeout, --label-only apply to http(s) suspects only; {path} is a file"


def test_open_source_refuses_an_unknown_suffix_in_one_line(tmp_path):
    junk = tmp_path / "model.pt"
    junk.write_bytes(b"\x80\x04 not a safetensors file")
    with pytest.raises(ModelSealError) as e:
        open_source(junk)
    assert "\n" not in str(e.value) and "model.pt" in str(e.value)
    r = runner.invoke(app, ["trace", str(tmp_path / "k.seal"), str(tmp_path / "m.onnx")])
    assert r.exit_code == 2 and "cannot be traced" in r.output


def test_open_source_with_arch_takes_state_dicts_only():
    for source in ("m.onnx", "http://127.0.0.1:9/v2/models/m"):
        with pytest.raises(ModelSealError, match="--arch is for state-dict .safetensors suspects"):
            open_source(source, arch="mymodels:make_net")


def test_model_files_round_trip_and_keep_the_header_extra(tmp_path, mlp_file):
    model, path = mlp_file
    back = files.open_model(path)
    assert back.modelseal_extra == {"data": "digits", "seed": 0}
    assert files.extra_of(back, extra={"k": 1}) == {"data": "digits", "seed": 0, "k": 1}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values(),
                                                 strict=True))
    with pytest.raises(OutputExistsError):
        files.write_model(back, path)
    again = tmp_path / "again.safetensors"
    again.write_bytes(files.model_bytes(back))
    assert files.open_model(again).modelseal_extra == back.modelseal_extra
    assert files.is_user_arch("pkg.mod:make") and not files.is_user_arch("mlp") and not files.is_user_arch(None)


def test_open_model_names_the_arch_a_state_dict_needs(tmp_path, monkeypatch):
    (tmp_path / "thin_arch_mod.py").write_text(
        "import torch.nn as nn\ndef make():\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    meta = ms.data.load("digits", seed=0).meta
    model = files.build_model("thin_arch_mod:make", meta, seed=1)
    path = files.write_model(model, tmp_path / "own.safetensors", arch="thin_arch_mod:make")
    with pytest.raises(ModelError, match="pass --arch thin_arch_mod:make"):
        files.open_model(path)
    back = files.open_model(path, "cpu", "thin_arch_mod:make")
    assert torch.equal(back[1].weight, model[1].weight)


def test_protect_and_save_writes_model_key_and_commitment_as_one_unit(tmp_path):
    from modelseal.api import protect_and_save

    splits = ms.data.load("digits", seed=0)
    model = ms.models.build("mlp", splits.meta, seed=0)
    ms.train.fit(model, splits.owner, epochs=1, seed=0)
    locker = ms.methods.get("advparams")(max_params=5, seed=3)
    out, key = tmp_path / "locked.safetensors", tmp_path / "lock.seal"
    judged = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved = protect_and_save(locker, model, splits, out, key, again=lambda m, k: judged.append(k) or None)
    assert judged and saved.key.digest() == ms.Key.load(key).digest()
    assert isinstance(saved.before, float) and isinstance(saved.after, float)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    public = tmp_path / "lock.public.json"
    assert ms.commitment.load(public)["method"] == "advparams"
    before = {p: p.read_bytes() for p in (out, key, public)}
    with pytest.raises(OutputExistsError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        protect_and_save(locker, model, splits, out, key)
    assert {p: p.read_bytes() for p in before} == before  # nothing was overwritten


def test_an_error_in_any_command_ends_in_one_line_and_exit_2(tmp_path):
    r = runner.invoke(app, ["commit", str(tmp_path / "nosuch.seal"), "--out", str(tmp_path / "c.json")])
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:")
    # `check` had no handler of its own: under the typer app it now ends the same way
    r = runner.invoke(app, ["check", str(tmp_path / "nosuch.json"), "--commitment", str(tmp_path / "c.json")])
    assert r.exit_code == 2 and r.output.startswith("error:")


def test_a_torch_save_file_is_never_unpickled_and_the_error_says_how_to_convert_it(tmp_path):
    """A `.pt` from torch.save (a zip archive) and a bare pickle are refused in one line that says how to make a
    safetensors state dict of it; the pickle's payload never runs (it would create a file)."""
    import pickle

    import torch

    torch.save({"w": torch.zeros(2)}, tmp_path / "model.pt")
    canary = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (open, (str(canary), "w"))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(Payload()))
    for name in ("model.pt", "evil.pkl"):
        for args in (["verify", str(tmp_path / "k.seal"), str(tmp_path / name)],
                     ["attack", "prune", str(tmp_path / name), "--out", str(tmp_path / "o.safetensors")],
                     ["watermark", "embed", str(tmp_path / name), "--out", str(tmp_path / "o.safetensors"),
                      "--key", str(tmp_path / "o.seal")]):
            (tmp_path / "k.seal").write_bytes(b"placeholder")
            r = runner.invoke(app, args)
            text = " ".join(r.output.split())
            assert r.exit_code == 2 and "PyTorch pickle" in text and "weights_only=True" in text, (args, r.output)
    assert not canary.exists()
