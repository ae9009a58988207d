"""A hostile user's corpus: bad files, bad paths, bad numbers, bad data and scenarios, run through the
command line (in process, through `modelseal.cli.main`, the program's entry point) and the API.

Every input must end in a clear one-line error (exit code 2, one `error:` line naming what is wrong, no
traceback) or in a correct result; never a traceback, a hang (each case has an alarm) or a silent success.
A failing command must leave every file of the workspace byte-for-byte as it was and create none.

Outcomes of the corpus (`CORPUS`): "error" (a ModelSealError, one line) and "ok" (a correct result checked
by the case). The CLI's top level would also turn any other exception into one line ("error: unexpected
..."), but no case may rely on that: an "error" case fails on an "unexpected" line.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import modelseal as ms
from modelseal.cli import main
from modelseal.errors import ModelSealError
from modelseal.keys import Key
from modelseal.tensorfile import USER_ARCH_META

CASE_SECONDS = 120  # generous: the CI box may be shared; a hang is anything longer


class Hang(BaseException):
    """Raised by the alarm: the case ran past CASE_SECONDS."""


def _alarm(signum, frame):
    raise Hang()


def run_cli(args: list[str], capsys, seconds: int = CASE_SECONDS) -> tuple[int, str, str]:
    """Run the `modelseal` program in process; returns (exit code, stdout, stderr)."""
    capsys.readouterr()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(seconds)
    try:
        code = main([str(a) for a in args])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() or p.is_symlink() and p.exists()}


def error_line(code: int, out: str, err: str) -> str:
    """The single `error:` line of a failed command (asserting exit 2, no traceback, one error line)."""
    assert "Traceback" not in out + err, err
    assert code == 2, f"exit {code}; stdout={out[-500:]!r} stderr={err[-500:]!r}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    return errors[0]


# ------------------------------------------------------------------------------------------ workspace
def st_file(header: Any, payload: bytes = b"") -> bytes:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + payload


def split_st(blob: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def with_meta(blob: bytes, name: str, edit: Callable[[str], str]) -> bytes:
    """`blob` with its safetensors metadata entry `name` rewritten by `edit` (raw string)."""
    header, payload = split_st(blob)
    header["__metadata__"][name] = edit(header["__metadata__"][name])
    return st_file(header, payload)


def with_info(blob: bytes, name: str, edit: Callable[[dict], Any]) -> bytes:
    def f(raw: str) -> str:
        info = json.loads(raw)
        out = edit(info)
        return json.dumps(info if out is None else out)
    return with_meta(blob, name, f)


def relabel(key: Key, method: str, **changes: Any) -> bytes:
    """A key of another method (or signature) with a correct digest: what a careful forger makes."""
    return Key(method=method, params=changes.get("params", key.params), tensors=key.tensors,
               signature=changes.get("signature", key.signature)).to_bytes()


def deep(n: int) -> str:
    return "[" * n + "]" * n


@dataclass
class Workspace:
    root: Path
    files: dict[str, Path] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Path:
        return self.files[name]


def _npz(path: Path, **arrays: Any) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _idx(dims: tuple[int, ...], data: bytes, dtype: int = 8, magic: int = 0) -> bytes:
    return struct.pack(">HBB", magic, dtype, len(dims)) + b"".join(struct.pack(">I", d) for d in dims) + data


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Everything the corpus reads: a small owner model on digits, its keys, and hostile files."""
    import warnings

    root = tmp_path_factory.mktemp("hostile")
    w = Workspace(root)
    f = w.files
    put = lambda name, data: f.__setitem__(name, _write(root / name, data))  # noqa: E731

    data = ms.data.load("digits", seed=0)
    owner = ms.models.build("mlp", data.meta, seed=0, hidden=(32,))
    ms.train.fit(owner, data.owner, epochs=3, seed=0, progress=False)
    f["m"] = ms.models.save_model(owner, root / "m.safetensors")
    model_blob = f["m"].read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, tkey = ms.methods.get("trigger-set")(n=12, seed=1, extra_epochs=1).embed(owner, data.owner)
        fkey = ms.methods.get("tafa")(n=24, seed=2).extract(owner, input_spec=data.meta)
        locked, lkey = ms.methods.get("advparams")(seed=3, max_params=10).lock(owner, data.owner)
    from modelseal import commitment as commitment_mod

    f["k"] = tkey.save(root / "ts.seal")
    f["fk"] = fkey.save(root / "tafa.seal")
    f["lk"] = lkey.save(root / "lock.seal")
    f["lm"] = ms.models.save_model(locked, root / "locked.safetensors")
    f["c"] = commitment_mod.save(ms.methods.commit(tkey), root / "ts.commit.json")
    key_blob = f["k"].read_bytes()
    f["adir"] = root / "adir"
    f["adir"].mkdir()
    put("afile", b"not a folder")
    f["link"] = root / "link.safetensors"
    f["link"].symlink_to(f["m"])
    f["hard"] = root / "hard.safetensors"
    os.link(f["m"], f["hard"])
    f["fifo"] = root / "pipe"  # issue 27: a node that is not a regular file, as an input and an output
    os.mkfifo(f["fifo"])

    # key files
    put("k_empty", b"")
    put("k_7", b"\x01" * 7)
    put("k_len0", struct.pack("<Q", 0) + b"{}")
    put("k_len_big", struct.pack("<Q", 10**6) + b"{}")
    put("k_len_max", b"\xff" * 8 + b"{}")
    put("k_utf8", st_file(b"\xff\xfe\xfd"))
    put("k_json", st_file(b"{not json"))
    put("k_list", st_file([1, 2]))
    put("k_deep", st_file(deep(200_000).encode()))
    put("k_deep65", st_file(deep(65).encode()))
    put("k_meta_list", st_file({"__metadata__": ["a"]}))
    put("k_meta_int", st_file({"__metadata__": {"modelseal": 5}}))
    put("k_nometa", st_file({"__metadata__": {"other": "x"}}))
    put("k_meta_text", with_meta(key_blob, "modelseal", lambda s: "not json"))
    put("k_meta_deep", with_meta(key_blob, "modelseal", lambda s: deep(200_000)))
    put("k_meta_nan", with_meta(key_blob, "modelseal", lambda s: s.replace('"format": 1', '"format": NaN')))
    put("k_meta_1e999", with_meta(key_blob, "modelseal", lambda s: s.replace('"format": 1', '"format": 1e999')))
    put("k_meta_bigint", with_meta(key_blob, "modelseal",
                                   lambda s: s.replace('"format": 1', '"format": ' + "9" * 5000)))
    put("k_meta_string", with_meta(key_blob, "modelseal", lambda s: '"just a string"'))
    put("k_noformat", with_info(key_blob, "modelseal", lambda i: i.pop("format") and None))
    put("k_format_str", with_info(key_blob, "modelseal", lambda i: i.update(format="1")))
    put("k_format_bool", with_info(key_blob, "modelseal", lambda i: i.update(format=True)))
    put("k_format_99", with_info(key_blob, "modelseal", lambda i: i.update(format=99)))
    put("k_format_0", with_info(key_blob, "modelseal", lambda i: i.update(format=0)))
    put("k_method_int", with_info(key_blob, "modelseal", lambda i: i.update(method=5)))
    put("k_params_list", with_info(key_blob, "modelseal", lambda i: i.update(params=[1])))
    put("k_digest", with_info(key_blob, "modelseal", lambda i: i.update(digest="0" * 64)))
    flipped = bytearray(key_blob)
    flipped[-1] ^= 0xFF
    put("k_flipped", bytes(flipped))
    h, payload = split_st(key_blob)
    name = next(k for k in h if k != "__metadata__")
    put("k_dtype", st_file({**h, name: {**h[name], "dtype": "Q99"}}, payload))
    put("k_offsets", st_file({**h, name: {**h[name], "data_offsets": [0, 10**9]}}, payload))
    put("k_ts_as_tafa", relabel(tkey, "tafa"))
    put("k_tafa_as_ts", relabel(fkey, "trigger-set"))
    put("k_ts_as_cx", relabel(tkey, "c-examples"))
    put("k_ts_as_dm", relabel(tkey, "deepmarks"))
    put("k_ts_as_lock", relabel(tkey, "advparams"))
    put("k_ts_unknown", relabel(tkey, "no-such-method"))
    put("k_shape", relabel(tkey, "trigger-set", signature={"input_shape": [3, 8, 8], "output_size": 10}))
    put("k_outputs", relabel(tkey, "trigger-set", signature={"input_shape": [1, 8, 8], "output_size": 5}))

    # model files
    put("m_empty", b"")
    put("m_garbage", b"GARBAGE!" * 10)
    put("m_deep", st_file(deep(200_000).encode()))
    put("m_nometa", st_file({"__metadata__": {}}))
    put("m_meta_text", with_meta(model_blob, "modelseal_model", lambda s: "{oops"))
    put("m_meta_deep", with_meta(model_blob, "modelseal_model", lambda s: deep(100_000)))
    put("m_nospec", with_info(model_blob, "modelseal_model", lambda i: i.pop("spec") and None))
    put("m_name_list", with_info(model_blob, "modelseal_model", lambda i: i["spec"].update(name=["mlp"])))
    put("m_name_unknown", with_info(model_blob, "modelseal_model", lambda i: i["spec"].update(name="gpt5")))
    put("m_huge_input", with_info(model_blob, "modelseal_model",
                                  lambda i: i["spec"].update(input_shape=[1, 100000, 100000])))
    put("m_neg_input", with_info(model_blob, "modelseal_model", lambda i: i["spec"].update(input_shape=[1, -8, 8])))
    put("m_5d_input", with_info(model_blob, "modelseal_model", lambda i: i["spec"].update(input_shape=[1] * 5)))
    put("m_out0", with_info(model_blob, "modelseal_model", lambda i: i["spec"].update(output_size=0)))
    put("m_out_huge", with_info(model_blob, "modelseal_model", lambda i: i["spec"].update(output_size=10**9)))
    put("m_bounds", with_info(model_blob, "modelseal_model", lambda i: i["spec"].update(bounds=[1.0, 0.0])))
    put("m_hidden_huge", with_info(model_blob, "modelseal_model",
                                   lambda i: i["spec"].update(kwargs={"hidden": [100000, 100000]})))
    put("m_kwarg_bogus", with_info(model_blob, "modelseal_model", lambda i: i["spec"].update(kwargs={"zz": 1})))
    put("m_kwargs_list", with_info(model_blob, "modelseal_model", lambda i: i["spec"].update(kwargs=[1])))
    put("m_format_str", with_info(model_blob, "modelseal_model", lambda i: i.update(format="x")))
    put("m_format_99", with_info(model_blob, "modelseal_model", lambda i: i.update(format=99)))
    mh, mpay = split_st(model_blob)
    t0 = next(k for k in mh if k != "__metadata__" and len(mh[k]["shape"]) == 2)
    put("m_renamed", st_file({**{k: v for k, v in mh.items() if k != t0}, "zz.weight": mh[t0]}, mpay))
    put("m_reshaped", st_file({**mh, t0: {**mh[t0], "shape": list(reversed(mh[t0]["shape"]))}}, mpay))
    for tag, value in (("nan", float("nan")), ("inf", float("inf"))):
        bad = ms.models.load_model(f["m"])
        with torch.no_grad():
            next(bad.parameters())[0, 0] = value
        f[f"m_{tag}"] = ms.models.save_model(bad, root / f"m_{tag}.safetensors")
    bad = ms.models.load_model(f["m"])
    with torch.no_grad():
        for p in bad.parameters():
            p.fill_(float("nan"))
    f["m_allnan"] = ms.models.save_model(bad, root / "m_allnan.safetensors")
    five = ms.models.build("mlp", input_shape=(1, 8, 8), num_classes=5, seed=0, hidden=(8,))
    f["onnx5"] = ms.models.export_onnx(five, root / "five.onnx")
    f["onnx10"] = ms.models.export_onnx(owner, root / "owner.onnx")
    put("onnx_garbage.onnx", b"\x08\x07garbage onnx")
    put("onnx_empty.onnx", b"")

    # evidence files (`modelseal check`)
    ms.verify(ms.Suspect(owner), fkey, evidence=root / "ev.json")
    f["ev"] = root / "ev.json"
    ev = json.loads(f["ev"].read_text())
    put("ev_text", b"{oops")
    put("ev_deep", deep(100_000).encode())
    put("ev_list", b"[]")
    put("ev_type", json.dumps({**ev, "type": "x"}).encode())
    put("ev_format", json.dumps({**ev, "format": 99}).encode())
    put("ev_no_transcript", json.dumps({**ev, "transcript": []}).encode())
    f["fkc"] = commitment_mod.save(ms.methods.commit(fkey), root / "tafa.commit.json")

    # commitments
    put("c_text", b"not json at all")
    put("c_deep", deep(200_000).encode())
    put("c_list", b"[1, 2, 3]")
    public = json.loads(f["c"].read_text())
    put("c_type", json.dumps({**public, "type": "something-else"}).encode())
    put("c_format", json.dumps({**public, "format": 99}).encode())
    put("c_empty_list", json.dumps({**public, "commitments": []}).encode())
    put("c_badhex", json.dumps({**public, "commitments": ["zz" * 32] * len(public["commitments"])}).encode())
    other = dict(public, commitments=[hashlib.sha256(bytes([i])).hexdigest() for i in range(12)])
    put("c_other", json.dumps(other).encode())
    put("c_binary", bytes(range(256)))

    # data
    put("npz_garbage", b"PK\x03\x04garbage")
    np.save(root / "single.npy", np.zeros((4, 3)))
    f["npy"] = root / "single.npy"
    rng = np.random.default_rng(0)
    x_ok = rng.random((30, 6)).astype(np.float32)
    for tag, arrays in {
        "npz_ok": {"x": x_ok, "y": np.arange(30) % 3},
        "npz_obj": {"x": np.array([object()] * 3, dtype=object), "y": np.arange(3)},
        "npz_nan": {"x": np.full((5, 2), np.nan), "y": np.arange(5)},
        "npz_y2d": {"x": x_ok, "y": np.zeros((30, 2), dtype=np.int64)},
        "npz_biglabel": {"x": x_ok, "y": np.full(30, 10**9)},
        "npz_5d": {"x": np.zeros((3, 1, 1, 1, 1, 1)), "y": np.arange(3)},
        "npz_empty_axis": {"x": np.zeros((3, 0)), "y": np.arange(3)},
        "npz_mismatch": {"x": x_ok, "y": np.arange(7)},
        "npz_noy": {"x": x_ok},
        "npz_complex": {"x": np.zeros((3, 2), dtype=np.complex64), "y": np.arange(3)},
        "npz_f32range": {"x": np.full((3, 2), 1e300), "y": np.arange(3)},
        "npz_neglabel": {"x": x_ok, "y": -(np.arange(30) % 3)},
    }.items():
        f[tag] = root / f"{tag}.npz"
        _npz(f[tag], **arrays)
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (10**6, 10**6)})
    ybuf = io.BytesIO()
    np.save(ybuf, np.arange(3))
    f["npz_bomb"] = root / "bomb.npz"
    with zipfile.ZipFile(f["npz_bomb"], "w") as zf:
        zf.writestr("x.npy", header.getvalue() + b"\0" * 64)
        zf.writestr("y.npy", ybuf.getvalue())
    for d in ("idx_empty", "idx_trunc", "idx_magic", "idx_half", "cifar_py", "cifar_size", "folder_empty",
              "folder_corrupt", "folder_bomb"):
        (root / d).mkdir()
        f[d] = root / d
    _write(f["idx_trunc"] / "train-images-idx3-ubyte", _idx((10, 8, 8), bytes(100)))
    _write(f["idx_trunc"] / "train-labels-idx1-ubyte", _idx((10,), bytes(10)))
    _write(f["idx_magic"] / "train-images-idx3-ubyte", _idx((1, 2, 2), bytes(4), magic=0x1234))
    _write(f["idx_magic"] / "train-labels-idx1-ubyte", _idx((1,), bytes(1)))
    _write(f["idx_half"] / "train-images-idx3-ubyte", _idx((1, 2, 2), bytes(4)))
    (f["cifar_py"] / "data_batch_1").write_bytes(b"\x80\x04pickle")
    (f["cifar_size"] / "data_batch_1.bin").write_bytes(bytes(3073 * 2 + 5))
    (f["folder_corrupt"] / "a").mkdir()
    (f["folder_corrupt"] / "a" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    from PIL import Image

    (f["folder_bomb"] / "a").mkdir()
    Image.new("L", (4000, 4000)).save(f["folder_bomb"] / "a" / "big.png")
    for i in range(270):  # 271 images of 16 Mpx: more than 4 GiB once decoded
        os.link(f["folder_bomb"] / "a" / "big.png", f["folder_bomb"] / "a" / f"copy{i}.png")

    # your own architecture (--arch module:factory): the module lives in the workspace
    (root / "hostile_arch.py").write_text(textwrap.dedent("""\
        from torch import nn
        def net():
            return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        def boom():
            raise RuntimeError("the factory fails")
        def notmodule():
            return 3
        class _Silent(nn.Module):
            def forward(self, x):
                raise AssertionError()  # an exception without a message
        def silent():
            return _Silent()
        """))
    sys.path.insert(0, str(root))
    from modelseal.models import custom

    net = custom.build_custom("hostile_arch:net", (1, 8, 8))
    with torch.no_grad():
        net[1].weight[0, 0] = float("nan")
    f["arch_nan"] = custom.save_custom(net, root / "arch_nan.safetensors", "hostile_arch:net")
    put("arch_deep.safetensors", with_meta(custom.custom_to_bytes(net, "hostile_arch:net"), USER_ARCH_META,
                                           lambda s: deep(100_000)))

    # scenarios and databases
    base = textwrap.dedent("""\
        name = "h"
        data = "digits"
        seeds = [0]
        [owner]
        arch = "mlp"
        epochs = 1
        [[protections]]
        method = "tafa"
        params = { n = 8 }
        [[attacks]]
        name = "prune"
        params = { amount = 0.5 }
        [[attacks]]
        name = "teleport"
        """)
    scen = {
        "s_invalid": "name = \n[[[",
        "s_deep": "a = " + "[" * 50_000 + "]" * 50_000,
        "s_epochs": base.replace("epochs = 1", "epochs = 1e9").replace('name = "teleport"', 'name = "prune"'),
        "s_epochs_int": base.replace("epochs = 1", "epochs = 1000000000"),
        "s_trigger_n": base.replace('method = "tafa"\nparams = { n = 8 }',
                                    'method = "trigger-set"\nparams = { n = 1e9 }'),
        "s_unknown_attack": base,
        "s_nan": base.replace("amount = 0.5", "amount = nan"),
        "s_seeds": base.replace("seeds = [0]", "seeds = [-1]"),
        "s_sweep": base.replace("amount = 0.5", "amount = [" + ", ".join(["0.5"] * 200) + "], seed = ["
                                + ", ".join(str(i) for i in range(200)) + "]"),
        "s_neg": base.replace('name = "teleport"', 'name = "prune"') + "[negatives]\ncount = 1000000\n",
        "s_batch": base.replace("epochs = 1", "epochs = 1\nbatch_size = 0"),
        "s_lr": base.replace("epochs = 1", "epochs = 1\nlr = inf"),
        "s_perms": base.replace("params = { n = 8 }", "params = { n = 8, permutations = 1e9 }"),
        "s_big": "# " + "x" * (1 << 20) + "\n" + base,
        "s_threads": base.replace('seeds = [0]', 'seeds = [0]\nthreads = 100000'),
        "s_alpha": base.replace('seeds = [0]', 'seeds = [0]\nalpha = 2').replace('"teleport"', '"noise"'),
    }
    for k, text in scen.items():
        f[k] = _write(root / f"{k}.toml", text.encode())
    put("s_binary.toml", b"\xff\xfe\x00binary")
    put("db_empty.sqlite", b"")
    put("db_text.sqlite", b"this is not a database")
    import sqlite3

    f["db_other"] = root / "other.sqlite"
    con = sqlite3.connect(f["db_other"])
    con.execute("CREATE TABLE notes (t TEXT)")
    con.commit()
    con.close()
    yield w
    sys.path.remove(str(root))


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------------------------- corpus
@dataclass
class Case:
    id: str
    run: list[str] | Callable[[Workspace], Any]
    match: str = ""
    expect: str = "error"  # error | ok
    check: Callable[..., None] | None = None
    api: bool = False  # run is an API call (raises), not a command line


CORPUS: list[Case] = []


def E(id: str, run, match: str) -> None:
    CORPUS.append(Case(id, run, match))


def OK(id: str, run, check: Callable[..., None]) -> None:
    CORPUS.append(Case(id, run, expect="ok", check=check))


def A(id: str, run, match: str) -> None:
    CORPUS.append(Case(id, run, match, api=True))


def AOK(id: str, run, check: Callable[..., None]) -> None:
    CORPUS.append(Case(id, run, expect="ok", check=check, api=True))


D = "--data", "digits"
V = "verify"

# ---- key files, through `verify KEY MODEL`
for name, match in [
    ("k_empty", "truncated or empty"), ("k_7", "truncated or empty"), ("k_len0", "header length 0"),
    ("k_len_big", "truncated or not a safetensors"), ("k_len_max", "truncated or not a safetensors"),
    ("k_utf8", "not UTF-8"), ("k_json", "not valid JSON"), ("k_list", "not a JSON object"),
    ("k_deep", "nested too deeply"), ("k_deep65", "nested too deeply"), ("k_meta_list", "must map strings"),
    ("k_meta_int", "must map strings"), ("k_nometa", "not a modelseal key"),
    ("k_meta_text", "modelseal metadata: not valid JSON"), ("k_meta_deep", "nested too deeply"),
    ("k_meta_nan", "non-finite number NaN"), ("k_meta_1e999", "out of range"),
    ("k_meta_bigint", "not valid JSON"), ("k_meta_string", "malformed modelseal metadata"),
    ("k_noformat", "malformed modelseal metadata"), ("k_format_str", "format version must be an integer"),
    ("k_format_bool", "format version must be an integer"), ("k_format_99", "newer than this modelseal"),
    ("k_format_0", "invalid key format version"), ("k_method_int", "method/params/signature"),
    ("k_params_list", "method/params/signature"), ("k_digest", "has been altered"),
    ("k_flipped", "has been altered"), ("k_dtype", "tensors could not be decoded"),
    ("k_offsets", "tensors could not be decoded"), ("k_ts_as_tafa", "tafa key is malformed"),
    ("k_tafa_as_ts", "lacks (the )?tensor 'images'"), ("k_ts_as_cx", "c-examples key is missing"),
    ("k_ts_unknown", "no-such-method"), ("k_shape", "inconsistent tensors|input shape"),
    ("k_outputs", "outside the model's classes|outputs"),
    ("m", "not a modelseal key"), ("adir", "is a directory"), ("c", "truncated or not a safetensors"),
]:
    E(f"key-{name}", lambda w, n=name: [V, w[n], w["m"]], match)
E("key-missing", lambda w: [V, w.root / "missing.seal", w["m"]], "does not exist")
E("key-lock-key-to-verify", lambda w: [V, w["lk"], w["m"]], "advparams|lock")
E("key-ts-as-lock-unlock", lambda w: ["unlock", w["lm"], w["k_ts_as_lock"], "--out", w.root / "u1"],
  "advparams key is malformed")
E("key-ts-to-unlock", lambda w: ["unlock", w["lm"], w["k"], "--out", w.root / "u2"], "trigger-set|lock")
E("key-tafa-to-trace", lambda w: ["trace", w["fk"], w["m"]], "tafa|per-user")
E("key-ts-as-deepmarks-trace", lambda w: ["trace", w["k_ts_as_dm"], w["m"]], "lacks parameter 'layer'")
E("key-ts-as-deepmarks-commit", lambda w: ["commit", w["k_ts_as_dm"], "--out", w.root / "c-dm.json"],
  "lacks parameter 'layer'")

# ---- model files, through `verify KEY SUSPECT` and the commands that load a model
for name, match in [
    ("m_empty", "truncated or empty"), ("m_garbage", "truncated or not a safetensors"),
    ("m_deep", "nested too deeply"), ("m_nometa", "without modelseal architecture metadata"),
    ("m_meta_text", "not valid JSON"), ("m_meta_deep", "nested too deeply"), ("m_nospec", "malformed"),
    ("m_name_list", "malformed"), ("m_name_unknown", "unknown architecture 'gpt5'"),
    ("m_huge_input", "elements, more than"), ("m_neg_input", "input_shape must be"),
    ("m_5d_input", "input_shape must be"), ("m_out0", "output_size must be"), ("m_out_huge", "output_size must be"),
    ("m_bounds", "bounds must be"), ("m_hidden_huge", "do not fit architecture"),
    ("m_kwarg_bogus", "cannot rebuild architecture"), ("m_kwargs_list", "kwargs must be an object"),
    ("m_format_str", "format version must be an integer"), ("m_format_99", "newer than this modelseal"),
    ("m_renamed", "do not fit architecture"), ("m_reshaped", "do not fit architecture"),
    ("m_nan", "NaN or infinite"), ("m_inf", "NaN or infinite"), ("m_allnan", "NaN or infinite"),
    ("k", "without modelseal architecture metadata"), ("adir", "is a directory"),
    ("onnx_garbage.onnx", "not a valid ONNX model"), ("onnx_empty.onnx", "is empty"),
    ("onnx5", "5 outputs|10 outputs"),
]:
    E(f"model-{name}", lambda w, n=name: [V, w["k"], w[n]], match)
E("model-missing", lambda w: [V, w["k"], w.root / "missing.safetensors"], "does not exist")
E("model-nan-attack", lambda w: ["attack", "prune", w["m_allnan"], "--out", w.root / "o1", *D], "NaN or infinite")
E("model-nan-lock", lambda w: ["lock", w["m_allnan"], "--out", w.root / "o2", "--key", w.root / "o2k", *D],
  "NaN or infinite")
E("model-nan-embed", lambda w: ["watermark", "embed", w["m_nan"], "--out", w.root / "o3", "--key",
                                w.root / "o3k", *D], "NaN or infinite")
E("model-nan-extract", lambda w: ["fingerprint", "extract", w["m_inf"], "--key", w.root / "o4k"], "NaN or infinite")
E("model-nan-unlock", lambda w: ["unlock", w["m_nan"], w["lk"], "--out", w.root / "o5"], "NaN or infinite")
E("model-nan-distribute", lambda w: ["deepmarks", "distribute", w["m_nan"], "--out-dir", w.root / "o6",
                                     "--key", w.root / "o6k", *D], "NaN or infinite")
E("model-garbage-other", lambda w: ["attack", "average", w["m"], "--other", w["m_garbage"], "--out",
                                    w.root / "o7", *D], "truncated or not a safetensors")

# ---- commitments, through `verify KEY MODEL --commitment FILE`
for name, match in [
    ("c_text", "not valid JSON"), ("c_list", "expected a JSON object"), ("c_type", "'type'"),
    ("c_format", "newer than this modelseal"), ("c_empty_list", "non-empty list"),
    ("c_badhex", "commitment"), ("c_other", "open|commitment"), ("c_binary", "not valid JSON"),
    ("m", "not valid JSON"), ("adir", "does not exist|directory"),
]:
    E(f"commitment-{name}", lambda w, n=name: [V, w["k"], w["m"], "--commitment", w[n]], match)
E("commitment-missing", lambda w: [V, w["k"], w["m"], "--commitment", w.root / "no.json"], "does not exist")
E("commitment-deep", lambda w: [V, w["k"], w["m"], "--commitment", w["c_deep"]], "nested too deeply")
E("commitment-of-another-key", lambda w: [V, w["fk"], w["m"], "--commitment", w["c"]],
  "does not open its commitment")
# the command line makes no folder a user did not ask for (issue 26): an output's folder must exist
E("out-commit-missing-folder", lambda w: ["commit", w["fk"], "--out", w.root / "nofolder" / "c1.json"],
  "folder .* does not exist")
OK("ok-commit-tafa-key", lambda w: (w.root / "okc").mkdir(exist_ok=True) or ["commit", w["fk"], "--out",
                                                                             w.root / "okc" / "c1.json"],
   lambda w, code, out, err: (code == 0 and ms.commitment.load(w.root / "okc" / "c1.json")["method"] == "tafa")
   or pytest.fail(err))
E("commit-out-is-key", lambda w: ["commit", w["k"], "--out", w["k"], "--force"], "same file")
E("commit-out-dir", lambda w: ["commit", w["k"], "--out", w["adir"], "--force"], "is a directory")
E("commit-out-fifo", lambda w: ["commit", w["k"], "--out", w["fifo"], "--force"], "FIFO")
E("commit-out-name-too-long", lambda w: ["commit", w["k"], "--out", w.root / ("n" * 300)], "too long")
E("verify-evidence-fifo", lambda w: [V, w["fk"], w["m"], "--evidence", w["fifo"], "--force"], "FIFO")
E("verify-suspect-fifo", lambda w: [V, w["fk"], w["fifo"]], "FIFO")
E("verify-key-fifo", lambda w: [V, w["fifo"], w["m"]], "FIFO")
E("verify-set-references-int", lambda w: [V, w["fk"], w["m"], "--set", "references=5"],
  "references takes model file paths")
E("train-arch-sys-exit", lambda w: ["train", "--data", "digits", "--arch", "sys:exit", "--epochs", "1",
                                    "--out", w.root / "n-exit.safetensors"], "sys.exit")

# ---- remote suspects that cannot answer (no server is started: each fails before any query)
HTTP = ["--retries", "0", "--timeout", "3"]
E("http-refused", lambda w: [V, w["fk"], "http://127.0.0.1:9/v2/models/x", *HTTP], "127.0.0.1:9|connect|refused")
E("http-bad-port", lambda w: [V, w["fk"], "http://127.0.0.1:99999/v2/models/x", *HTTP], "not a valid URL: Port")
E("http-port-not-a-number", lambda w: [V, w["fk"], "http://127.0.0.1:port/v2/models/x", *HTTP], "not a valid URL")
E("http-no-host", lambda w: [V, w["fk"], "http:///v2/models/x", *HTTP], "host|URL|url")
E("http-timeout-nan", lambda w: [V, w["fk"], "http://127.0.0.1:9/v2/models/x", "--timeout", "nan"], "timeout")
E("http-retries-negative", lambda w: [V, w["fk"], "http://127.0.0.1:9/v2/models/x", "--retries", "-1"], "retries")
E("http-options-on-a-file", lambda w: [V, w["fk"], w["m"], "--timeout", "3"], "http")

# ---- evidence files and the verifier's outputs
for name, match in [("ev_text", "not valid JSON"), ("ev_deep", "nested too deeply"), ("ev_list", "'type' must be"),
                    ("ev_type", "'type' must be"), ("ev_format", "unsupported format"),
                    ("ev_no_transcript", "'transcript' must be"), ("m", "not valid JSON"),
                    ("adir", "does not exist|directory")]:
    E(f"check-{name}", lambda w, n=name: ["check", w[n], "--commitment", w["fkc"]], match)
E("check-missing", lambda w: ["check", w.root / "none.json", "--commitment", w["fkc"]], "does not exist")
E("check-bad-commitment", lambda w: ["check", w["ev"], "--commitment", w["c_deep"]], "nested too deeply")
E("verify-evidence-is-key", lambda w: [V, w["fk"], w["m"], "--evidence", w["fk"], "--force"],
  "KEY 1 and --evidence 1 name the same file")
E("verify-evidence-is-suspect", lambda w: [V, w["fk"], w["m"], "--evidence", w["m"], "--force"],
  "SUSPECT and --evidence 1 name the same file")
E("verify-evidence-is-commitment", lambda w: [V, w["k"], w["m"], "--commitment", w["c"], "--evidence", w["c"],
                                              "--force"], "--commitment 1 and --evidence 1 name the same file")
E("verify-evidence-dir", lambda w: [V, w["fk"], w["m"], "--evidence", w["adir"]], "is a directory")
E("verify-evidence-exists", lambda w: [V, w["fk"], w["m"], "--evidence", w["ev"]], "already exists")
E("verify-evidence-count", lambda w: [V, w["fk"], w["k"], w["m"], "--evidence", w.root / "e1"], "one --evidence")
E("verify-set-unknown", lambda w: [V, w["fk"], w["m"], "--set", "zz=1"], "zz")
E("verify-set-permutations", lambda w: [V, w["fk"], w["m"], "--set", "permutations=1e12"], "permutations")
E("verify-no-suspect", lambda w: [V, w["fk"]], "KEY \\[KEY ...\\] SUSPECT")
E("trace-evidence-is-key", lambda w: ["trace", w["k"], w["m"], "--evidence", w["k"], "--force"],
  "KEY and --evidence name the same file")

# ---- outputs: same paths, bad parents, directories, existing files (the data-loss class)
LOCK = "lock"


def _lock(out, key, *extra):
    return lambda w: [LOCK, w["m"], "--out", out(w), "--key", key(w), *D, *extra]


E("out-lock-out-is-model", _lock(lambda w: w["m"], lambda w: w.root / "n1.seal", "--force"),
  "MODEL and --out name the same file")
E("out-lock-key-is-model", _lock(lambda w: w.root / "n2", lambda w: w["m"], "--force"),
  "MODEL and --key name the same file")
E("out-lock-all-same", _lock(lambda w: w["m"], lambda w: w["m"], "--force"), "same file")
E("out-lock-out-is-key", _lock(lambda w: w.root / "X", lambda w: w.root / "X"), "--out and --key name the same file")
E("out-lock-out-is-key-spelled", _lock(lambda w: w.root / "X", lambda w: w.root / "adir" / ".." / "X"),
  "--out and --key name the same file")
E("out-lock-symlink-to-model", _lock(lambda w: w["link"], lambda w: w.root / "n3", "--force"), "same file")
E("out-lock-hardlink-to-model", _lock(lambda w: w["hard"], lambda w: w.root / "n4", "--force"), "same file")
E("out-lock-key-parent-file", _lock(lambda w: w.root / "n5", lambda w: w["afile"] / "k.seal"),
  "afile is a file, not a directory")
E("out-lock-out-parent-file", _lock(lambda w: w["afile"] / "sub" / "x", lambda w: w.root / "n6"),
  "is a file, not a directory")
E("out-lock-out-dir", _lock(lambda w: w["adir"], lambda w: w.root / "n7"), "is a directory")
E("out-lock-key-dir", _lock(lambda w: w.root / "n8", lambda w: w["adir"], "--force"), "is a directory")
E("out-lock-key-fifo", _lock(lambda w: w.root / "n8f", lambda w: w["fifo"], "--force"), "FIFO")
E("out-lock-out-exists", _lock(lambda w: w["lm"], lambda w: w.root / "n9"), "already exists")
E("out-lock-key-exists", _lock(lambda w: w.root / "n10", lambda w: w["k"]), "already exists")
E("out-lock-out-empty-string", _lock(lambda w: "", lambda w: w.root / "n11"), "is a directory")
E("out-lock-proc", _lock(lambda w: "/proc/modelseal-x.safetensors", lambda w: w.root / "n12"), "cannot write")
E("out-lock-data-file", lambda w: [LOCK, w["m"], "--out", w["npz_ok"], "--key", w.root / "n13",
                                   "--data", f"npz:{w['npz_ok']}", "--force"], "name the same file")
E("out-embed-out-is-model", lambda w: ["watermark", "embed", w["m"], "--out", w["m"], "--key", w.root / "e1",
                                       *D, "--force"], "MODEL and --out")
E("out-embed-out-is-key", lambda w: ["watermark", "embed", w["m"], "--out", w.root / "e2", "--key",
                                     w.root / "e2", *D], "--out and --key")
E("out-embed-key-parent-file", lambda w: ["watermark", "embed", w["m"], "--out", w.root / "e3", "--key",
                                          w["afile"] / "k", *D], "is a file, not a directory")
E("out-embed-out-dir", lambda w: ["watermark", "embed", w["m"], "--out", w["adir"], "--key", w.root / "e4", *D],
  "is a directory")
E("out-embed-key-exists", lambda w: ["watermark", "embed", w["m"], "--out", w.root / "e5", "--key", w["fk"], *D],
  "already exists")
E("out-distribute-dir-is-file", lambda w: ["deepmarks", "distribute", w["m"], "--out-dir", w["afile"], "--key",
                                           w.root / "d1", *D], "is a file, not a folder")
E("out-distribute-key-is-model", lambda w: ["deepmarks", "distribute", w["m"], "--out-dir", w.root / "d2",
                                            "--key", w["m"], *D, "--force"], "MODEL and --key")
E("out-distribute-key-is-manifest", lambda w: ["deepmarks", "distribute", w["m"], "--out-dir", w.root / "d3",
                                               "--key", w.root / "d3" / "manifest.json", *D],
  "--key and manifest name the same file")
E("out-distribute-key-parent-file", lambda w: ["deepmarks", "distribute", w["m"], "--out-dir", w.root / "d4",
                                               "--key", w["afile"] / "k", *D], "is a file, not a directory")
E("out-extract-key-is-model", lambda w: ["fingerprint", "extract", w["m"], "--key", w["m"], "--force"],
  "MODEL and --key name the same file")
E("out-extract-key-dir", lambda w: ["fingerprint", "extract", w["m"], "--key", w["adir"]], "is a directory")
E("out-extract-key-parent-file", lambda w: ["fingerprint", "extract", w["m"], "--key", w["afile"] / "k"],
  "is a file, not a directory")
E("out-unlock-out-is-model", lambda w: ["unlock", w["lm"], w["lk"], "--out", w["lm"], "--force"], "same file")
E("out-unlock-out-is-key", lambda w: ["unlock", w["lm"], w["lk"], "--out", w["lk"], "--force"], "same file")
E("out-attack-out-is-model", lambda w: ["attack", "prune", w["m"], "--out", w["m"], "--force", *D], "same file")
E("out-attack-out-parent-file", lambda w: ["attack", "prune", w["m"], "--out", w["afile"] / "x", *D],
  "is a file, not a directory")
E("out-attack-out-dir", lambda w: ["attack", "prune", w["m"], "--out", w["adir"], *D], "is a directory")
E("out-train-out-dir", lambda w: ["train", "--out", w["adir"], *D, "--arch", "mlp"], "is a directory")
E("out-train-parent-file", lambda w: ["train", "--out", w["afile"] / "m", *D, "--arch", "mlp"],
  "is a file, not a directory")
E("out-train-exists", lambda w: ["train", "--out", w["m"], *D, "--arch", "mlp"], "already exists")
E("out-report-over-db", lambda w: ["bench", "report", w["db_other"], "--out", w["db_other"], "--force"],
  "DB and --out name the same file")
E("out-report-dir", lambda w: ["bench", "report", w["db_empty.sqlite"], "--out", w["adir"], "--force"],
  "directory|not a modelseal results database")

# ---- your own architecture
AR = ["train", *D, "--epochs", "1", "--arch"]
E("arch-nan-weights", lambda w: [V, w["fk"], w["arch_nan"], "--arch", "hostile_arch:net"], "NaN or infinite")
E("arch-deep-metadata", lambda w: ["attack", "prune", w["arch_deep.safetensors"], "--out", w.root / "ar0", *D],
  "nested too deeply")
E("arch-deep-metadata-verify", lambda w: [V, w["fk"], w["arch_deep.safetensors"]], "without modelseal architecture")
E("arch-factory-raises", lambda w: [*AR, "hostile_arch:boom", "--out", w.root / "ar1"], "calling the factory failed")
E("arch-factory-needs-args", lambda w: [*AR, "json:dumps", "--out", w.root / "ar2"], "calling the factory failed")
E("arch-forward-raises-without-message", lambda w: [*AR, "hostile_arch:silent", "--out", w.root / "ar6"],
  r"does not accept inputs of shape \[1, 8, 8\] \(AssertionError\)")
E("arch-not-a-module", lambda w: [*AR, "hostile_arch:notmodule", "--out", w.root / "ar3"], "not a torch.nn.Module")
E("arch-no-such-module", lambda w: [*AR, "no_such_module_zz:f", "--out", w.root / "ar4"], "cannot import module")
E("arch-no-such-factory", lambda w: [*AR, "hostile_arch:nope", "--out", w.root / "ar5"], "has no attribute")
E("arch-bad-spec", lambda w: [V, w["fk"], w["m"], "--arch", "hostile_arch"], "expected package.module:factory")

# ---- numbers: every size, count and rate a user sets
T = ["train", *D, "--arch", "mlp"]
for i, (opt, value, match) in enumerate([
    ("--lr", "nan", "lr must be"), ("--lr", "inf", "lr must be"), ("--lr", "-1", "lr must be"),
    ("--lr", "1e9", "lr must be"), ("--epochs", "-1", "epochs must be"), ("--epochs", "1000000000", "epochs must be"),
    ("--arch", "nosuch", "unknown architecture"), ("--split", "nosuch", "--split"),
    ("--epochs", "abc", "Invalid value for '--epochs'.*valid integer"), ("--device", "tpu9", "unknown device"),
]):
    E(f"num-train{opt}={value}", lambda w, o=opt, v=value, i=i: [*T, "--out", w.root / f"t{i}", o, v], match)
ATK = [
    ("finetune", "epochs=1e9", "epochs must be"), ("finetune", "lr=NaN", "lr must be"),
    ("finetune", "lr=nan", "lr must be"), ("finetune", "batch_size=0", "batch_size must be"),
    ("finetune", "batch_size=1e9", "batch_size must be"), ("finetune", "mode=xx", "unknown mode 'xx'; use one of ftll"),
    ("finetune", "fraction=0", "fraction must be"), ("prune", "amount=1.5", "amount must be"),
    ("prune", "amount=-0.1", "amount must be"), ("prune", "scope=x", "scope"), ("quantize", "bits=0", "bits must be"),
    ("quantize", "bits=64", "bits must be"), ("noise", "std=-1", "std must be"),
    ("noise", "std=Infinity", "std must be"),
    ("distill", "temperature=0", "temperature must be"), ("distill", "student=nosuch", "unknown student"),
    ("distill", "epochs=-3", "epochs must be"), ("fine-prune", "amount=1", "amount must be"),
    ("reset-outliers", "z=0", "z must be"), ("prune", "nonexistent=1", "bad parameter"),
    ("prune", "amount", "NAME=VALUE"), ("prune", "=3", "NAME=VALUE"),
]
for i, (atk, setting, match) in enumerate(ATK):
    E(f"num-attack-{atk}-{setting}", lambda w, a=atk, s=setting, i=i: ["attack", a, w["m"], "--set", s, "--out",
                                                                        w.root / f"a{i}", *D], match)
E("num-attack-unknown", lambda w: ["attack", "teleport", w["m"], "--out", w.root / "a99", *D], "unknown attack")
E("num-attack-no-out", lambda w: ["attack", "prune", w["m"]], "needs a MODEL file and --out")
for opt, value, match in [
    ("--alpha", "0", "alpha"), ("--alpha", "1.5", "alpha"), ("--alpha", "nan", "alpha"), ("--alpha", "-inf", "alpha"),
    ("--max-queries", "0", "max_queries|queries"), ("--max-queries", "-5", "max_queries|queries"),
]:
    E(f"num-verify{opt}={value}", lambda w, o=opt, v=value: [V, w["k"], w["m"], o, v], match)
E("num-lock-eps-nan", _lock(lambda w: w.root / "l1", lambda w: w.root / "l1k", "--set", "eps=NaN"), "eps")
E("num-lock-unknown-param", _lock(lambda w: w.root / "l3", lambda w: w.root / "l3k", "--set", "zz=1"),
  "bad parameter")
E("num-embed-n0", lambda w: ["watermark", "embed", w["m"], "--out", w.root / "w1", "--key", w.root / "w1k", *D,
                             "--set", "n=0"], r"\bn\b")
E("num-embed-method-tafa", lambda w: ["watermark", "embed", w["m"], "--out", w.root / "w2", "--key", w.root / "w2k",
                                      *D, "--method", "tafa"], "is a fingerprint method")
E("num-embed-unknown-method", lambda w: ["watermark", "embed", w["m"], "--out", w.root / "w3", "--key",
                                         w.root / "w3k", *D, "--method", "nope"], "unknown method|nope")
E("num-extract-tafa-n-1e8", lambda w: ["fingerprint", "extract", w["m"], "--key", w.root / "f1", "--set", "n=1e8"],
  "n must be an integer")
E("num-extract-unknown-method", lambda w: ["fingerprint", "extract", w["m"], "--key", w.root / "f2", "--method",
                                           "nope"], "nope")
E("num-extract-variant", lambda w: ["fingerprint", "extract", w["m"], "--key", w.root / "f3", "--method",
                                    "c-examples", "--variant", "zzz"], "variant")
E("num-extract-watermark", lambda w: ["fingerprint", "extract", w["m"], "--key", w.root / "f4", "--method",
                                      "trigger-set"], "is a watermark method")
E("num-distribute-users0", lambda w: ["deepmarks", "distribute", w["m"], "--out-dir", w.root / "u0", "--key",
                                      w.root / "u0k", "--users", "0", *D], "users must be an integer in \\[1, 183\\]")
E("usage-unknown-option", lambda w: ["train", "--bogus"], "No such option")
E("usage-unknown-command", lambda w: ["teleport"], "No such command")
E("usage-missing-argument", lambda w: ["lock"], "Missing")
E("usage-bad-int", lambda w: ["deepmarks", "distribute", w["m"], "--out-dir", w.root / "u1", "--key",
                              w.root / "u1k", "--users", "many"], "Invalid value for '--users'")

# ---- data
for i, (spec, match) in enumerate([
    ("nosuch", "unknown data set"), ("idx:", "needs a path"), ("npz:{root}/missing.npz", "no such file"),
    ("npz:{npz_garbage}", "not an .npz \\(zip\\) archive"), ("npz:{npy}", "single .npy array"),
    ("npz:{npz_obj}", "object array"),
    ("npz:{npz_nan}", "NaN or infinite"), ("npz:{npz_y2d}", "expected \\(N,\\)"),
    ("npz:{npz_biglabel}", "at most 100000 classes"), ("npz:{npz_5d}", "no empty axis"),
    ("npz:{npz_empty_axis}", "no empty axis"), ("npz:{npz_mismatch}", "must match"),
    ("npz:{npz_noy}", "has no array y"), ("npz:{npz_complex}", "real numeric array"),
    ("npz:{npz_f32range}", "float32 range"), ("npz:{npz_neglabel}", "negative label"),
    ("npz:{npz_bomb}", "declares shape"), ("npz:{adir}", "no such file"), ("idx:{idx_empty}", "no IDX files"),
    ("idx:{idx_trunc}", "truncated or corrupt"), ("idx:{idx_magic}", "bad magic"), ("idx:{idx_half}", "both files"),
    ("idx:{afile}", "not a directory"), ("cifar10:{cifar_py}", "pickled python release"),
    ("cifar10:{cifar_size}", "multiple of the 3073-byte record"), ("folder:{folder_empty}", "no class sub-folders"),
    ("folder:{folder_corrupt}", "cannot read image"), ("folder:{folder_bomb}", "would need .* bytes"),
    ("cifar100:{root}/nope", "no such directory"),
]):
    E(f"data-{spec.split(':')[0]}-{i}", lambda w, s=spec, i=i: [
        *T[:1], "--out", w.root / f"dd{i}", "--arch", "mlp", "--epochs", "1",
        "--data", s.format(root=w.root, **{k: v for k, v in w.files.items()})], match)
for arch in ("cnn", "resnet18", "wrn"):
    E(f"data-image-arch-on-tabular-{arch}", lambda w, a=arch: ["train", "--data", f"npz:{w['npz_ok']}", "--arch", a,
                                                               "--epochs", "1", "--out", w.root / f"tab-{a}"],
      "takes image inputs")
A("data-api-unknown-option", lambda w: ms.data.load("digits", foo=1), "bad option")
A("data-api-sample-images-patch", lambda w: ms.data.load("sample-images", patch=10**6), "patch must be")
A("data-api-sample-images-count", lambda w: ms.data.load("sample-images", per_image=10**9), "per_image must be")
A("data-api-npz-num-classes", lambda w: ms.data.load(f"npz:{w['npz_ok']}", num_classes=10**9), "num_classes")
A("data-api-folder-size", lambda w: ms.data.load(f"folder:{w['folder_bomb']}", size=(0, 4)), "size must be")

# ---- scenarios and result databases
BR = ["bench", "run"]
for name, match in [
    ("s_invalid", "not valid TOML"), ("s_deep", "nested too deeply"), ("s_epochs", "line 6: key 'owner.epochs'"),
    ("s_epochs_int", "line 6: key 'owner.epochs': must be an integer in \\[1, 10000\\]"),
    ("s_trigger_n", "line 9: key 'params': trigger-set parameter n"),
    ("s_unknown_attack", "line 14: key 'name': unknown attack 'teleport'"),
    ("s_nan", "line 12: .*amount must be a number in \\[0, 1\\), got nan"),
    ("s_seeds", "line 3: key 'seeds'"), ("s_sweep", "more than 10000 attack variants"),
    ("s_neg", "key 'negatives.count'"), ("s_batch", "line 7: key 'owner.batch_size'"),
    ("s_lr", "line 7: key 'owner.lr'"), ("s_perms", "line 9: .*permutations must be"),
    ("s_big", "a scenario is at most"), ("s_threads", "key 'threads'"), ("s_alpha", "line 4: key 'alpha'"),
    ("s_binary.toml", "not UTF-8"),
    ("adir", "does not exist"),
]:
    E(f"scenario-{name}", lambda w, n=name: [*BR, w[n], "--out", w.root / f"run-{n}"], match)
E("scenario-missing", lambda w: [*BR, w.root / "none.toml", "--out", w.root / "run-x"], "does not exist")
E("scenario-out-is-file", lambda w: [*BR, "tiny", "--out", w["afile"]], "not a directory")
for name, match in [("db_empty.sqlite", "file is empty"), ("db_text.sqlite", "not a modelseal results database"),
                    ("db_other", "neither a meta nor a cells table"),
                    ("adir", "is a directory|does not exist")]:
    E(f"report-{name}", lambda w, n=name: ["bench", "report", w[n], "--out", w.root / f"r-{n}.html"], match)
E("report-missing", lambda w: ["bench", "report", w.root / "none.sqlite", "--out", w.root / "r.html"],
  "does not exist")


# ---- API: NaN models, bad paths, keys
def _nan_model(w):
    return ms.models.model_from_bytes(w["m"].read_bytes()).apply(lambda m: [p.data.fill_(float("nan"))
                                                                           for p in m.parameters(recurse=False)])


A("api-advparams-lock-nan", lambda w: ms.methods.get("advparams")().lock(_nan_model(w), ms.data.load("digits").owner),
  "NaN or infinite")
A("api-attack-prune-nan", lambda w: ms.attacks.get("prune")().apply(_nan_model(w)), "NaN or infinite")
A("api-attack-quantize-nan", lambda w: ms.attacks.get("quantize")().apply(_nan_model(w)), "NaN or infinite")
A("api-attack-noise-nan", lambda w: ms.attacks.get("noise")().apply(_nan_model(w)), "NaN or infinite")
A("api-attack-reset-nan", lambda w: ms.attacks.get("reset-outliers")().apply(_nan_model(w)), "NaN or infinite")
A("api-attack-finetune-nan", lambda w: ms.attacks.get("finetune")(epochs=1).apply(_nan_model(w),
                                                                                   ms.data.load("digits").attacker),
  "NaN or infinite")
A("api-attack-average-nan-other", lambda w: ms.attacks.get("average")(others=[_nan_model(w)]).apply(
    ms.models.load_model(w["m"])), "model 1 to average")
A("api-attack-not-a-module", lambda w: ms.attacks.get("prune")().apply("model.safetensors"), "nn.Module")
A("api-key-load-dir", lambda w: Key.load(w["adir"]), "is a directory")
A("api-write-nul", lambda w: Key("tafa").save(str(w.root / "a\0b")), "cannot write")
A("api-write-pair-same", lambda w: ms.safeio.write_files([(w.root / "p", b"1"), (w.root / "p", b"2")]),
  "name the same file")
A("api-load-model-dir", lambda w: ms.models.load_model(w["adir"]), "is a directory")
A("api-onnx5-verify", lambda w: ms.verify(ms.Suspect.load(w["onnx5"]), Key.load(w["k"])), "outputs")
A("api-suspect-missing", lambda w: ms.Suspect.load(w.root / "none.onnx"), "does not exist")


# ---- valid but unusual: correct results
def _check_lock_pair(w, code, out, err, outdir):
    assert code == 0, err
    model, key = outdir / "locked.safetensors", outdir / "lock.seal"
    assert ms.models.load_model(model) is not None and Key.load(key).method == "advparams"
    assert (key.stat().st_mode & 0o777) == 0o600  # a secret: readable by its owner only
    restored = ms.unlock(ms.models.load_model(model), Key.load(key))
    orig = ms.models.load_model(w["m"])
    assert all(torch.equal(a, b) for a, b in zip(restored.state_dict().values(), orig.state_dict().values(),
                                                 strict=True))


OK("ok-lock-fresh-paths", lambda w: (w.root / "okl").mkdir(exist_ok=True) or [
    LOCK, w["m"], "--out", w.root / "okl" / "locked.safetensors", "--key",
                                     w.root / "okl" / "lock.seal", *D, "--set", "target_accuracy=0.3"],
   lambda w, code, out, err: _check_lock_pair(w, code, out, err, w.root / "okl"))


def _check_verdict(owned: bool):
    def check(w, code, out, err):
        assert code == 0, err
        assert json.loads(out)["owned"] is owned
    return check


OK("ok-verify-owner-model", lambda w: [V, w["fk"], w["m"], "--json"], _check_verdict(True))
OK("ok-verify-onnx10", lambda w: [V, w["fk"], w["onnx10"], "--json"], _check_verdict(True))
OK("ok-verify-with-commitment", lambda w: [V, w["k"], w["m"], "--json", "--commitment", w["c"]],
   lambda w, code, out, err: (_check_verdict(json.loads(out)["owned"])(w, code, out, err),
                              json.loads(out)["details"]["commitment_checked"] is True or pytest.fail(out)))


def _ltrc_small(w):
    """LTRC on a 1x8x8 model: the high-pass filter used to fail with "MKL FFT error" on an empty batch."""
    model = ms.models.load_model(w["m"])
    key = ms.methods.get("c-examples")(variant="ltrc", n=4, steps=15, seed=0).extract(
        model, input_spec=ms.data.InputSpec((1, 8, 8)))
    return key


AOK("ok-ltrc-1x8x8", _ltrc_small, lambda w, key: (key.method == "c-examples"
                                                 and key.tensors and len(next(iter(key.tensors.values()))) >= 1)
   or pytest.fail(repr(key)))
AOK("ok-high-pass-empty-batch", lambda w: __import__("modelseal.methods.characteristic", fromlist=["x"]).high_pass(
    torch.zeros(0, 1, 8, 8), 0.3), lambda w, r: r.shape == (0, 1, 8, 8) or pytest.fail(str(r.shape)))
OK("ok-train-tabular-npz", lambda w: ["train", "--data", f"npz:{w['npz_ok']}", "--arch", "mlp", "--epochs", "1",
                                      "--out", w.root / "oktab.safetensors", "--json"],
   lambda w, code, out, err: (code == 0 and json.loads(out)["epochs"] == 1) or pytest.fail(err))
AOK("ok-tafa-tabular", lambda w: ms.methods.get("tafa")(n=4, seed=0).extract(
    ms.models.build("mlp", input_shape=(6,), num_classes=3, seed=0), input_spec=ms.data.InputSpec((6,))),
   lambda w, key: key.signature["input_shape"] == [6] or pytest.fail(repr(key)))


def test_corpus_is_large_and_varied():
    kinds = {c.expect for c in CORPUS}
    assert len(CORPUS) >= 150 and kinds == {"error", "ok"}
    assert len({c.id for c in CORPUS}) == len(CORPUS)


def _with_alarm(fn, *args):
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_SECONDS)
    try:
        return fn(*args)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("case", CORPUS, ids=[c.id for c in CORPUS])
def test_hostile_input(case: Case, ws: Workspace, capsys):
    before = snapshot(ws.root)
    if case.api and case.expect == "ok":
        case.check(ws, _with_alarm(case.run, ws))
        return
    if case.api:
        with pytest.raises(ModelSealError) as e:
            _with_alarm(case.run, ws)
        line = str(e.value)
        assert "\n" not in line and line.strip(), repr(line)
    else:
        code, out, err = run_cli(case.run(ws), capsys)
        if case.expect == "ok":
            assert "Traceback" not in out + err, err
            case.check(ws, code, out, err)
            return
        line = error_line(code, out, err)
        if case.expect == "error":
            assert not line.startswith("error: unexpected "), line
    assert re.search(case.match, line), f"{line!r} does not match {case.match!r}"
    after = snapshot(ws.root)
    assert after == before, "a failing command changed or created files: " + str(
        sorted(set(after.items()) ^ set(before.items())))


# ------------------------------------------------------------------------------------ the top level
def test_every_unexpected_exception_is_one_line_and_debug_shows_the_traceback(capsys, monkeypatch):
    from modelseal import cli

    def boom(*_a, **_k):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(cli.method_registry, "names", boom)
    code, out, err = run_cli(["methods"], capsys)
    line = error_line(code, out, err)
    assert line == "error: unexpected RuntimeError: boom second line; run with --debug for the traceback " \
                   "(please report it)"
    code, out, err = run_cli(["--debug", "methods"], capsys)
    assert code == 2 and "Traceback" in err and err.rstrip().splitlines()[-1].startswith("error: unexpected")
    monkeypatch.setenv("MODELSEAL_DEBUG", "1")
    code, out, err = run_cli(["methods"], capsys)
    assert code == 2 and "Traceback" in err


def test_error_messages_are_not_read_as_markup_nor_wrapped(capsys, monkeypatch, tmp_path):
    from modelseal import cli

    def bad(*_a, **_k):
        raise ModelSealError("value [bold]x[/] is bad " + "y" * 300)

    monkeypatch.setattr(cli.method_registry, "names", bad)
    code, out, err = run_cli(["methods"], capsys)
    assert error_line(code, out, err) == "error: value [bold]x[/] is bad " + "y" * 300


def test_help_and_success_exit_zero(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0 and "--debug" in out
    code, out, _ = run_cli(["methods", "--json"], capsys)
    assert code == 0 and "trigger-set" in json.loads(out)["methods"]


def test_the_installed_script_is_the_wrapper():
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["modelseal"] == "modelseal.cli:main"


# ------------------------------------------------------------------------ no lost file, no partial file
def test_failing_commands_leave_user_files_unchanged(ws, capsys):
    """The issue's data-loss cases, checked file by file with SHA-256 before and after."""
    files = [ws["m"], ws["k"], ws["lk"], ws["lm"], ws["afile"], ws["npz_ok"]]
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    commands = [
        [LOCK, ws["m"], "--out", ws["m"], "--key", ws["m"], "--force", *D],
        [LOCK, ws["m"], "--out", ws.root / "X", "--key", ws.root / "X", *D],
        [LOCK, ws["m"], "--out", ws.root / "Y", "--key", ws["afile"] / "k.seal", *D],
        [LOCK, ws["m"], "--out", ws["lm"], "--key", ws["lk"], *D],
        ["watermark", "embed", ws["m"], "--out", ws["k"], "--key", ws["m"], "--force", *D],
        ["fingerprint", "extract", ws["m"], "--key", ws["m"], "--force"],
        ["commit", ws["k"], "--out", ws["k"], "--force"],
        ["unlock", ws["lm"], ws["lk"], "--out", ws["lk"], "--force"],
        [LOCK, ws["m"], "--out", ws["npz_ok"], "--key", ws.root / "Z", "--data", f"npz:{ws['npz_ok']}", "--force"],
    ]
    for args in commands:
        code, out, err = run_cli(args, capsys)
        error_line(code, out, err)
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files} == before
    assert not (ws.root / "X").exists() and not (ws.root / "Y").exists() and not (ws.root / "Z").exists()


def test_a_pair_is_written_both_or_neither_when_the_second_rename_fails(tmp_path, monkeypatch):
    from modelseal import safeio

    a, b = tmp_path / "model.safetensors", tmp_path / "key.seal"
    a.write_bytes(b"old model")
    real = os.replace
    calls = []

    def flaky(src, dst):
        calls.append(dst)
        if Path(dst) == b:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(safeio.os, "replace", flaky)
    with pytest.raises(ModelSealError, match="No space left on device; nothing was written"):
        safeio.write_files([(a, b"new model"), (b, b"new key")], force=True, private=[b])
    assert a.read_bytes() == b"old model" and not b.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]  # no temporary or backup left


def test_keys_are_written_private(tmp_path):
    p = Key("tafa", tensors={"x": torch.zeros(2)}).save(tmp_path / "k.seal")
    assert p.stat().st_mode & 0o777 == 0o600


INTERRUPT_SCRIPT = r'''
import json, os, signal, sys
import modelseal.safeio as tf
from modelseal.cli import main

real_write, real_replace = tf._write_tmp, os.replace
results = {}


def run(tag, args, sig, when):
    state = {"n": 0}

    def write(tmp, data, private):
        real_write(tmp, data, private)
        state["n"] += 1
        if when == "write" and state["n"] == 1:
            os.kill(os.getpid(), sig)  # delivered here: the first file of the pair is half done
        return tmp

    def replace(src, dst):
        real_replace(src, dst)
        if when == "rename" and str(dst).endswith(".safetensors"):
            os.kill(os.getpid(), sig)  # held until both renames are done

    tf._write_tmp, tf.os.replace = write, replace
    try:
        results[tag] = main(args)
    finally:
        tf._write_tmp, tf.os.replace = real_write, real_replace


d, model = sys.argv[1], sys.argv[2]
common = ["--data", "digits", "--seed", "1"]  # a lock that misses its target is refused (issue 26)
run("int-write", ["lock", model, "--out", f"{d}/a.safetensors", "--key", f"{d}/a.seal", *common], signal.SIGINT,
    "write")
run("term-write", ["lock", model, "--out", f"{d}/b.safetensors", "--key", f"{d}/b.seal", *common], signal.SIGTERM,
    "write")
run("int-rename", ["lock", model, "--out", f"{d}/c.safetensors", "--key", f"{d}/c.seal", *common], signal.SIGINT,
    "rename")
print(json.dumps(results))
'''


def test_sigint_or_sigterm_mid_write_leaves_no_partial_file(ws, tmp_path):
    """Real signals in a real process: during the write of a pair, nothing is left (no output, no temporary
    file); during the renames the signal waits until both files are in place."""

    script = tmp_path / "interrupt.py"
    script.write_text(INTERRUPT_SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(ms.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    # a shell that starts a job in the background without job control (`cmd &`) starts it with SIGINT ignored,
    # and children inherit that: give the interrupted processes the default disposition, as in a terminal
    r = subprocess.run([sys.executable, str(script), str(out), str(ws["m"])], capture_output=True, text=True,
                       timeout=300, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert r.returncode == 0, r.stderr[-2000:]
    codes = json.loads(r.stdout.strip().splitlines()[-1])
    assert codes == {"int-write": 130, "term-write": 143, "int-rename": 130}
    assert "Traceback" not in r.stderr
    assert r.stderr.count("error: interrupted") == 2 and r.stderr.count("error: terminated") == 1
    left = sorted(p.name for p in out.iterdir())
    assert left == ["c.public.json", "c.safetensors", "c.seal"], left  # no a.*, b.*, .tmp or .bak files
    assert ms.models.load_model(out / "c.safetensors") is not None and Key.load(out / "c.seal").method == "advparams"


# --------------------------------------------------------------------------------- demo secrets
def test_demo_keeps_its_secret_cache_in_a_private_folder(tmp_path, monkeypatch):
    from modelseal import bench, demo
    from modelseal.bench.store import Store

    monkeypatch.setenv("MODELSEAL_CACHE", str(tmp_path / "cache"))
    seen = {}

    def fake_run(sc, run_dir, **kw):
        seen["dir"] = Path(run_dir)
        (Path(run_dir) / "cache").mkdir(parents=True, exist_ok=True)
        Key("deepmarks", params={"k": 3}, tensors={"x": torch.zeros(1)}).save(Path(run_dir) / "cache" / "prot-x.key")
        with Store(Path(run_dir) / "results.sqlite") as st:
            st.put_artifact("prot-x", "protection", "dm seed 0", {"protection": "dm", "key_params": {"k": 3}}, 0.0)
        return {"owner_accuracy": 0.5}

    monkeypatch.setattr(bench, "run", fake_run)
    out = tmp_path / "shared" / "demo-out"
    result = demo.run_demo(out, device="cpu")
    with Store(out / "results.sqlite") as st:  # the keys' parameters travel in the database, the keys do not
        assert st.protection_params() == {"dm": {"k": 3}}
    run_dir = seen["dir"]
    assert out.resolve() not in run_dir.resolve().parents and run_dir.stat().st_mode & 0o777 == 0o700
    assert run_dir.parent.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "results.sqlite"]
    assert not list(out.rglob("*.key")) and result["db"] == str(out / "results.sqlite")


# ------------------------------------------------------------------------------ the smallest inputs
SMALL_SHAPES = [(1, 8, 8), (3, 8, 8), (4,), (10,)]
SMALL_METHODS = [
    ("trigger-set", {"n": 12, "extra_epochs": 1}), ("tafa", {"n": 6}), ("c-examples", {"variant": "c", "n": 4}),
    ("c-examples", {"variant": "rc", "n": 3, "steps": 10, "M": 2}),
    ("c-examples", {"variant": "ltrc", "n": 3, "steps": 10, "M": 2}),
    ("deepmarks", {"users": 7, "max_epochs": 1, "min_fit": 0.01}), ("advparams", {"max_params": 5}),
]


# (DeepMarks refuses, before training, a code the tiny carrier layer cannot trace at alpha: issue 25's power
# check, which names the rows and the layer)
WHY_NOT = ("ltrc filters images in 2-D frequency space|no characteristic example reached its target|"
           "users cannot be traced at alpha .* projection rows")


@pytest.fixture(scope="module")
def small_data():
    out = {}
    for shape in SMALL_SHAPES:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(120, *shape, generator=g)
        y = (x.reshape(120, -1).mean(1) > 0.5).long() + (x.reshape(120, -1)[:, 0] > 0.5).long()
        meta = ms.data.Meta(f"small{shape}", shape, (0.0, 1.0), 3)
        data = ms.data.TensorData(x, y, meta)
        model = ms.models.build("mlp", meta, seed=0, hidden=(16,))
        ms.train.fit(model, data, epochs=2, seed=0, progress=False)
        out[shape] = (model, data, meta)
    return out


@pytest.mark.parametrize("shape", SMALL_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("method,params", SMALL_METHODS, ids=lambda p: p if isinstance(p, str) else
                         p.get("variant", ""))
def test_every_method_on_the_smallest_inputs_works_or_says_why_not(small_data, shape, method, params):
    """1x8x8, 3x8x8 and tabular 4 / 10 features: each method returns a key for this model, or refuses with a
    one-line ModelSealError that says why (e.g. LTRC filters in 2-D frequency space: no tabular inputs)."""
    import warnings

    model, data, meta = small_data[shape]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            key = _with_alarm(lambda: ms.methods.protect(ms.methods.get(method)(seed=0, **params), model,
                                                         data=data, input_spec=meta).key)
    except ModelSealError as e:
        # the only acceptable refusals say why the input does not suit the method
        assert "\n" not in str(e) and re.search(WHY_NOT, str(e)), str(e)
        if method == "c-examples" and params["variant"] == "ltrc":
            assert len(shape) < 2  # LTRC must work on every image shape, 1x8x8 included
        return
    assert key.method == method and list(key.signature["input_shape"]) == list(shape)
