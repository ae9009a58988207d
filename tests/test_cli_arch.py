"""Bring your own model from the command line: `--arch test_cli_arch:make_net`, a class defined in this module."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

import modelseal as ms
from modelseal.cli import app

runner = CliRunner()
ARCH = f"{__name__}:make_net"


class TinyNet(nn.Module):
    """A user's own architecture, nothing like the zoo's: two linear layers with a skip."""

    def __init__(self) -> None:
        super().__init__()
        self.flat = nn.Flatten()
        self.inp = nn.Linear(64, 48)
        self.act = nn.ReLU()
        self.hidden = nn.Linear(48, 48)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.inp(self.flat(x)))
        return self.head(self.act2(self.hidden(h)) + h)


def make_net() -> nn.Module:
    return TinyNet()


def _text(r) -> str:
    return " ".join(r.output.split())  # the console wraps long lines at its width


def _ok(args: list[str]) -> dict:
    r = runner.invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def owner_file(tmp_path_factory):
    """The user trains their own model in their own code and saves a plain state dict."""
    d = tmp_path_factory.mktemp("byo")
    data = ms.data.load("digits", seed=0)
    torch.manual_seed(0)
    model = make_net()
    ms.train.fit(model, data.owner, epochs=15, seed=0, progress=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "mine.safetensors"))
    return d, ms.train.evaluate(model, data.test)


def test_arch_round_trip_embed_verify_lock_unlock(owner_file):
    d, acc = owner_file
    assert acc > 0.8
    common = ["--arch", ARCH, "--data", "digits", "--seed", "3"]
    emb = _ok(["watermark", "embed", str(d / "mine.safetensors"), "--set", "n=20", "--out",
               str(d / "marked.safetensors"), "--key", str(d / "wm.seal"), *common])
    assert emb["test_metric_before"] == pytest.approx(acc, abs=1e-6)
    v = _ok(["verify", str(d / "wm.seal"), str(d / "marked.safetensors"), "--arch", ARCH])
    assert v["owned"] is True and v["p_value"] <= 1e-6
    clean = _ok(["verify", str(d / "wm.seal"), str(d / "mine.safetensors"), "--arch", ARCH])
    assert clean["owned"] is False

    lk = _ok(["lock", str(d / "mine.safetensors"), "--out", str(d / "locked.safetensors"), "--key",
              str(d / "lock.seal"), *common])
    assert lk["test_metric_locked"] < lk["test_metric_before"] - 0.3
    _ok(["unlock", str(d / "locked.safetensors"), str(d / "lock.seal"), "--out", str(d / "restored.safetensors"),
         "--arch", ARCH])
    from safetensors.torch import load_file

    original, restored = load_file(str(d / "mine.safetensors")), load_file(str(d / "restored.safetensors"))
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)


def test_arch_is_required_for_a_user_architecture_file(owner_file):
    d, _ = owner_file
    _ok(["attack", "prune", str(d / "mine.safetensors"), "--set", "amount=0.3", "--out",
         str(d / "pruned.safetensors"), "--arch", ARCH, "--data", "digits"])
    r = runner.invoke(app, ["attack", "prune", str(d / "pruned.safetensors"), "--out", str(d / "p2.safetensors"),
                            "--data", "digits"])
    assert r.exit_code == 2 and f"--arch {ARCH}" in _text(r)


def test_bad_arch_and_pt2_end_in_one_line_errors(owner_file, tmp_path):
    d, _ = owner_file
    r = runner.invoke(app, ["lock", str(d / "mine.safetensors"), "--arch", "no_such_module_xyz:f", "--data",
                            "digits", "--out", str(tmp_path / "l.safetensors"), "--key", str(tmp_path / "k.seal")])
    assert r.exit_code == 2 and "cannot import module 'no_such_module_xyz'" in _text(r)
    r = runner.invoke(app, ["lock", str(d / "mine.safetensors"), "--arch", f"{__name__}:TinyNet.nope", "--data",
                            "digits", "--out", str(tmp_path / "l.safetensors"), "--key", str(tmp_path / "k.seal")])
    assert r.exit_code == 2 and "has no attribute" in _text(r)
    # torch.export archives are refused before torch.load could unpickle anything
    ep = torch.export.export(make_net().eval(), (torch.zeros(1, 1, 8, 8),))
    torch.export.save(ep, str(tmp_path / "mine.pt2"))
    called = []
    real_load = torch.load
    torch.load = lambda *a, **k: called.append(a) or real_load(*a, **k)
    try:
        r = runner.invoke(app, ["watermark", "embed", str(tmp_path / "mine.pt2"), "--arch", ARCH, "--data", "digits",
                                "--out", str(tmp_path / "m.safetensors"), "--key", str(tmp_path / "k.seal")])
    finally:
        torch.load = real_load
    assert r.exit_code == 2 and ".pt2" in _text(r) and "unpickles" in _text(r)
    assert not called and not (tmp_path / "k.seal").exists()


def test_a_dataparallel_state_dict_loads_and_a_misfit_names_its_keys(owner_file, tmp_path):
    """Issue 40: `module.`-prefixed keys (DataParallel/DDP) load; a state dict that does not fit names the
    missing and unexpected tensors in its one-line error."""
    from safetensors.torch import load_file

    d, _ = owner_file
    state = load_file(str(d / "mine.safetensors"))
    save_file({f"module.{k}": v for k, v in state.items()}, str(tmp_path / "dp.safetensors"))
    r = runner.invoke(app, ["unlock", str(tmp_path / "dp.safetensors"), "k.seal", "--arch", ARCH, "--out",
                            str(tmp_path / "o.safetensors")])
    assert "do not fit" not in _text(r), r.output  # the weights loaded (the key is what fails here)
    from modelseal.models.custom import load_custom

    assert isinstance(load_custom(tmp_path / "dp.safetensors", ARCH, (1, 8, 8)), TinyNet)
    bad = {k: v for k, v in state.items() if not k.startswith("head.")}
    bad["extra.weight"] = torch.zeros(2)
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ms.ModelSealError, match=r"missing head\.bias, head\.weight; unexpected extra\.weight"):
        load_custom(tmp_path / "bad.safetensors", ARCH, (1, 8, 8))


def test_lineage_of_your_own_architecture_against_an_onnx_suspect(owner_file):
    """`lineage MINE SUSPECT --arch ...` builds the owner with --arch; an ONNX (or URL) suspect brings its own
    graph, so --arch no longer refuses it (it did: '--arch is for state-dict suspects'), and without --arch the
    owner file cannot be read (one line)."""
    from safetensors.torch import load_file

    d, _ = owner_file
    model = make_net()
    model.load_state_dict(load_file(str(d / "mine.safetensors")))
    ms.models.export_onnx(model, d / "mine.onnx", input_shape=(1, 8, 8), force=True)
    v = _ok(["lineage", str(d / "mine.safetensors"), str(d / "mine.onnx"), "--arch", ARCH, "--data", "digits",
             "--permutations", "99"])
    parts = {p["method"]: p for p in v["details"]["verdicts"]}
    assert parts and all(not p.get("judged", True) for p in parts.values())  # no weights, no references
    r = runner.invoke(app, ["lineage", str(d / "mine.safetensors"), str(d / "mine.onnx")])
    assert r.exit_code == 2 and "--arch" in _text(r)
