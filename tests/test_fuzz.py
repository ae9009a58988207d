"""Fuzzed parsers: every reader of an untrusted file (safetensors header, key metadata, model metadata,
commitment, scenario TOML, npz / IDX / CIFAR / image-folder loaders) is fed random and mutated inputs and
must either return a valid result or raise a `ModelSealError` with a one-line message: never another
exception, never a hang. Examples are kept moderate so the file runs in seconds."""

from __future__ import annotations

import gzip
import io
import json
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modelseal as ms
from modelseal import bench
from modelseal import commitment as commitment_mod
from modelseal import evidence as evidence_mod
from modelseal.errors import KeyFormatError, ModelSealError
from modelseal.keys import Key
from modelseal.safeio import MAX_JSON_DEPTH, loads_json
from modelseal.tensorfile import read_header_metadata

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


def _one_line(e: BaseException) -> None:
    assert isinstance(e, ModelSealError), f"{type(e).__name__}: {e}"
    assert "\n" not in str(e) and str(e).strip(), repr(str(e))


def _accepts(fn, *args, **kw):
    """Run a parser: return its result, or None after checking the error is a one-line ModelSealError."""
    try:
        return fn(*args, **kw)
    except Exception as e:  # noqa: BLE001 - the point is to see which exception types escape
        _one_line(e)
        return None


@st.composite
def mutated(draw, blob: bytes):
    """`blob` with a few bytes flipped, a slice removed or duplicated, or cut short."""
    b = bytearray(blob)
    for _ in range(draw(st.integers(0, 6))):
        if not b:
            break
        i = draw(st.integers(0, len(b) - 1))
        op = draw(st.sampled_from(["set", "cut", "dup", "trunc"]))
        if op == "set":
            b[i] = draw(st.integers(0, 255))
        elif op == "cut":
            del b[i:i + draw(st.integers(1, 16))]
        elif op == "dup":
            b[i:i] = b[i:i + draw(st.integers(1, 16))]
        else:
            del b[i:]
    return bytes(b)


def _safetensors(header: dict, payload: bytes = b"") -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + payload


@pytest.fixture(scope="module")
def key_bytes():
    key = Key("tafa", params={"n": 3, "seed": 1}, tensors={"x": torch.arange(6.0).reshape(2, 3)},
              signature={"input_shape": [3], "output_size": 2}, created="2020-01-01T00:00:00+00:00")
    return key.to_bytes()


@pytest.fixture(scope="module")
def model_bytes():
    m = ms.models.build("mlp", input_shape=(4,), num_classes=3, seed=0, hidden=(8,))
    return ms.models.model_to_bytes(m)


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


# ------------------------------------------------------------------------------------ safetensors header
@FUZZ
@given(st.binary(max_size=256))
def test_header_reader_on_random_bytes(blob):
    meta = _accepts(read_header_metadata, blob, "fuzz", KeyFormatError)
    assert meta is None or isinstance(meta, dict)


@FUZZ
@given(JSON, st.integers(-8, 8))
def test_header_reader_on_any_json_header_and_wrong_length(header, skew):
    h = json.dumps(header).encode()
    blob = struct.pack("<Q", max(0, len(h) + skew)) + h
    meta = _accepts(read_header_metadata, blob, "fuzz", KeyFormatError)
    assert meta is None or all(isinstance(v, str) for v in meta.values())


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1000, 200_000])
def test_header_reader_refuses_deep_nesting(depth):
    blob = struct.pack("<Q", 2 * depth) + b"[" * depth + b"]" * depth
    with pytest.raises(KeyFormatError, match="nested too deeply"):
        read_header_metadata(blob, "deep", KeyFormatError)


@FUZZ
@given(st.data())
def test_key_loader_on_mutated_keys(key_bytes, data):
    blob = data.draw(mutated(key_bytes))
    key = _accepts(Key.from_bytes, blob, source="fuzz")
    if key is not None:  # anything accepted passed the digest check: it is the original key
        assert key.digest() == Key.from_bytes(key_bytes).digest()


@FUZZ
@given(st.data())
def test_model_loader_on_mutated_models(model_bytes, data):
    blob = data.draw(mutated(model_bytes))
    model = _accepts(ms.models.model_from_bytes, blob, source="fuzz")
    if model is not None:
        assert all(torch.isfinite(p).all() for p in model.parameters())


# ------------------------------------------------------------------------------------------ key metadata
@FUZZ
@given(JSON | st.fixed_dictionaries(
    {"format": JSON | st.integers(-2, 3), "method": JSON | st.sampled_from(["tafa", "trigger-set"]),
     "params": JSON, "signature": JSON, "created": JSON, "digest": JSON | st.text(alphabet="0123456789abcdef")}))
def test_key_metadata_any_json(meta):
    from safetensors.torch import save

    blob = save({"x": torch.zeros(2)}, metadata={"modelseal": json.dumps(meta)})
    _accepts(Key.from_bytes, blob, source="fuzz")


@FUZZ
@given(st.text(max_size=200))
def test_key_metadata_any_text(text):
    from safetensors.torch import save

    blob = save({"x": torch.zeros(2)}, metadata={"modelseal": text})
    _accepts(Key.from_bytes, blob, source="fuzz")


@FUZZ
@given(JSON)
def test_model_metadata_any_json(spec):
    from safetensors.torch import save

    blob = save({"w": torch.zeros(2)}, metadata={"modelseal_model": json.dumps({"format": 1, "spec": spec})})
    _accepts(ms.models.model_from_bytes, blob, source="fuzz")


SIZES = st.integers(-2, 4) | st.sampled_from([10**6, 10**9, 2**40])


@FUZZ
@given(st.fixed_dictionaries({
    "name": st.sampled_from(["mlp", "cnn", "resnet18", "wrn", "vae-decoder", "nope"]) | JSON,
    "input_shape": st.lists(SIZES, max_size=5) | JSON, "output_size": SIZES | JSON,
    "bounds": st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=3) | JSON,
    "kwargs": st.dictionaries(st.sampled_from(["hidden", "width", "depth", "channels", "latent"]),
                              SIZES | st.lists(SIZES, max_size=3), max_size=2) | JSON}))
def test_model_metadata_structured_specs_never_allocate_what_the_file_does_not_hold(model_bytes, spec):
    """A spec asking for a huge model is refused by comparing it with the file's tensors, before any
    allocation; a spec that loads is exactly the file's model."""
    from safetensors.torch import load, save

    state = load(model_bytes)
    blob = save(state, metadata={"modelseal_model": json.dumps({"format": 1, "spec": spec})})
    model = _accepts(ms.models.model_from_bytes, blob, source="fuzz")
    if model is not None:
        assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in state.items()}


@FUZZ
@given(st.text(max_size=300))
def test_bounded_json_parser_on_any_text(text):
    value = _accepts(loads_json, text, "fuzz")
    if value is not None:
        assert json.loads(text) == value


# ------------------------------------------------------------------------------- commitment and evidence
HEX = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
COMMITMENT = st.fixed_dictionaries(
    {"format": JSON | st.sampled_from([1, 2, 3]), "type": JSON | st.just(commitment_mod.TYPE), "method": JSON,
     "signature": JSON | st.just({"input_shape": [1, 8, 8], "output_size": 10}), "created": JSON,
     "params": JSON | st.dictionaries(st.text(max_size=5), JSON, max_size=3), "params_digest": JSON | HEX,
     "tensors": JSON | st.dictionaries(st.text(max_size=5), HEX, max_size=2),
     "commitments": JSON | st.lists(HEX, max_size=3)})


@FUZZ
@given(JSON | COMMITMENT)
def test_commitment_loader_any_json(scratch, public):
    p = scratch / "c.json"
    p.write_text(json.dumps(public))
    got = _accepts(commitment_mod.load, p)
    assert got is None or got == public


@FUZZ
@given(st.binary(max_size=200) | st.sampled_from([b"[" * 100_000, b'{"a": NaN}', b"\xff\xfe"]))
def test_commitment_loader_any_bytes(scratch, blob):
    p = scratch / "c.json"
    p.write_bytes(blob)
    _accepts(commitment_mod.load, p)


@FUZZ
@given(JSON | st.fixed_dictionaries(
    {"type": JSON | st.just(evidence_mod.TYPE), "format": JSON | st.just(evidence_mod.FORMAT), "method": JSON,
     "opened": JSON, "transcript": JSON | st.fixed_dictionaries({"verifier": JSON}), "result": JSON,
     "commitment": JSON | COMMITMENT, "suspect": JSON}))
def test_evidence_loader_and_checker_any_json(scratch, ev):
    p = scratch / "e.json"
    p.write_text(json.dumps(ev))
    loaded = _accepts(evidence_mod.load, p)
    if loaded is not None and isinstance(loaded.get("commitment"), dict):
        report = _accepts(evidence_mod.check, loaded, loaded["commitment"])
        assert report is None or isinstance(report.get("agrees"), bool)


@FUZZ
@given(st.binary(max_size=200))
def test_evidence_loader_any_bytes(scratch, blob):
    p = scratch / "e.json"
    p.write_bytes(blob)
    _accepts(evidence_mod.load, p)


# ---------------------------------------------------------------------------------------- scenario TOML
VALID_TOML = """name = "fz"
data = "digits"
seeds = [0]
[owner]
arch = "mlp"
epochs = 1
[[protections]]
method = "tafa"
params = { n = 8, steps = 2, permutations = 50 }
[[attacks]]
name = "prune"
params = { amount = [0.2, 0.5] }
[negatives]
count = 1
epochs = 1
"""

TOML_VALUES = st.sampled_from(["0", "-1", "1e9", "nan", "inf", "-inf", '"x"', "[]", "[1, 2]", "{}", "true",
                               "1000000000", "0.5", '"mlp"', '"prune"', "[[1]]", "{ a = 1 }", '""'])


@FUZZ
@given(st.data())
def test_scenario_parser_on_mutated_values(data):
    lines = VALID_TOML.splitlines()
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(lines) - 1))
        if "=" in lines[i]:
            k = lines[i].split("=")[0]
            lines[i] = f"{k}= {data.draw(TOML_VALUES)}"
        else:
            del lines[i]
            if not lines:
                break
    sc = _accepts(bench.parse, "\n".join(lines), "fuzz.toml")
    if sc is not None:  # what is accepted is bounded
        from modelseal import validate

        assert len(sc.cells) >= 1
        assert 1 <= sc.owner["epochs"] <= validate.MAX_EPOCHS and 1 <= sc.negatives["epochs"] <= validate.MAX_EPOCHS
        assert 0 <= sc.negatives["count"] <= 1000 and all(0 <= s < 2**63 for s in sc.seeds)
        for p in [*(p.params for p in sc.protections), *(v.params for v in sc.attacks)]:
            for v in p.values():
                for x in (v if isinstance(v, list) else [v]):
                    assert not isinstance(x, float) or np.isfinite(x)


@FUZZ
@given(st.data())
def test_scenario_parser_on_mutated_bytes(data):
    blob = data.draw(mutated(VALID_TOML.encode()))
    text = blob.decode("utf-8", errors="replace")
    _accepts(bench.parse, text, "fuzz.toml")


@FUZZ
@given(st.text(max_size=120))
def test_scenario_parser_on_random_text(text):
    _accepts(bench.parse, text, "fuzz.toml")


# ------------------------------------------------------------------------------------------ data loaders
def _load(spec: str):
    return _accepts(ms.data.load, spec)


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


VALID_NPZ = _npz_bytes(x=np.random.default_rng(0).random((6, 4)).astype(np.float32), y=np.arange(6) % 3)


@FUZZ
@given(st.data())
def test_npz_loader_on_mutated_archives(scratch, data):
    p = scratch / "d.npz"
    p.write_bytes(data.draw(mutated(VALID_NPZ)))
    splits = _load(f"npz:{p}")
    assert splits is None or splits.meta.input_shape == (4,)


NUMERIC = st.sampled_from([np.uint8, np.int64, np.float32, np.float64, np.bool_, np.int8, np.uint64, np.float16])


@FUZZ
@given(st.data())
def test_npz_loader_on_random_arrays(scratch, data):
    from hypothesis.extra import numpy as hnp

    x = data.draw(hnp.arrays(NUMERIC, hnp.array_shapes(min_dims=0, max_dims=5, max_side=4)))
    y = data.draw(hnp.arrays(NUMERIC, hnp.array_shapes(min_dims=0, max_dims=2, max_side=5)))
    p = scratch / "r.npz"
    p.write_bytes(_npz_bytes(x=x, y=y))
    splits = _load(f"npz:{p}")
    if splits is not None:
        total = len(splits.owner) + len(splits.attacker) + len(splits.test)
        assert total == len(x) and bool(torch.isfinite(splits.owner.x).all())


@FUZZ
@given(st.sampled_from([b"\x93NUMPY", b"PK\x03\x04", b"\x80\x04\x95", b""]), st.binary(max_size=100))
def test_npz_loader_on_random_bytes(scratch, prefix, blob):
    p = scratch / "b.npz"
    p.write_bytes(prefix + blob)
    assert _load(f"npz:{p}") is None


@FUZZ
@given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 4),
       st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 40), min_size=0, max_size=4),
       st.integers(0, 3000), st.booleans())
def test_idx_loader_on_random_headers(scratch, b2, b3, nd, dims, extra, gz):
    d = scratch / f"idx-{gz}"
    d.mkdir(exist_ok=True)
    for f in d.iterdir():
        f.unlink()
    head = struct.pack(">HBB", 0, b2, b3 if b3 < 8 else nd) + b"".join(struct.pack(">I", v) for v in dims)
    img = head + bytes(extra)
    lab = struct.pack(">HBBI", 0, 8, 1, 5) + bytes(5)
    suffix = ".gz" if gz else ""
    wrap = gzip.compress if gz else (lambda b: b)
    (d / f"train-images-idx3-ubyte{suffix}").write_bytes(wrap(img))
    (d / f"train-labels-idx1-ubyte{suffix}").write_bytes(wrap(lab))
    splits = _load(f"idx:{d}")
    assert splits is None or len(splits.owner) + len(splits.attacker) + len(splits.test) == 5


@FUZZ
@given(st.integers(0, 4000), st.integers(0, 255), st.sampled_from(["cifar10", "cifar100"]))
def test_cifar_loader_on_random_sizes_and_labels(scratch, size, label, kind):
    d = scratch / f"cifar-{kind}"
    d.mkdir(exist_ok=True)
    name = "data_batch_1.bin" if kind == "cifar10" else "train.bin"
    rec = (1 if kind == "cifar10" else 2) + 3072
    blob = bytearray(size)
    for i in range(0, size, rec):
        blob[i:i + rec // 3072] = bytes([label]) * (rec - 3072)
    (d / name).write_bytes(bytes(blob[:size]))
    splits = _load(f"{kind}:{d}")
    if splits is not None:
        assert size % rec == 0 and size // rec >= 3


def _png(w: int, h: int, mode: str = "RGB") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (w, h), 128).save(buf, format="PNG")
    return buf.getvalue()


VALID_PNG = _png(5, 4)


@FUZZ
@given(st.data(), st.sampled_from([".png", ".jpg", ".bmp", ".pgm"]))
def test_image_folder_loader_on_mutated_images(scratch, data, suffix):
    d = scratch / "imgs"
    for c in ("a", "b"):
        (d / c).mkdir(parents=True, exist_ok=True)
        for f in (d / c).iterdir():
            f.unlink()
        for i in range(2):
            (d / c / f"{i}.png").write_bytes(VALID_PNG)
    (d / "b" / f"odd{suffix}").write_bytes(data.draw(mutated(VALID_PNG)))
    splits = _load(f"folder:{d}")
    assert splits is None or splits.meta.num_classes == 2


@FUZZ
@given(st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9), st.sampled_from(["L", "RGB", "I;16", "1", "LA", "P"])),
                min_size=1, max_size=4))
def test_image_folder_loader_on_mixed_sizes_and_modes(scratch, specs):
    from PIL import Image

    c = scratch / "mixed" / "only"
    c.mkdir(parents=True, exist_ok=True)
    for f in c.iterdir():
        f.unlink()
    for i, (w, h, mode) in enumerate(specs):
        Image.new(mode, (w, h)).save(c / f"{i}.png")
    splits = _load(f"folder:{c.parent}")
    assert splits is not None or len(specs) < 3  # three images or more always load (resized to the first)
    if splits is not None:
        w, h, _ = specs[0]
        assert splits.meta.input_shape[1:] == (h, w)


def test_zip_bomb_shaped_npz_is_refused_before_allocation(scratch):
    """An .npz whose x header promises 10^12 elements is refused from the header, not by running out of
    memory."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (10**6, 10**6)})
    p = scratch / "bomb.npz"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("x.npy", header.getvalue() + b"\0" * 64)
        zf.writestr("y.npy", _npz_member(np.arange(3)))
    with pytest.raises(ModelSealError, match="declares shape"):
        ms.data.load(f"npz:{p}")


def _npz_member(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()
