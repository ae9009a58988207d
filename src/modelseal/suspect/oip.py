"""Open Inference Protocol (KServe v2) tensors: datatypes, JSON and binary encodings, exact conversions.

Shared by the client (`remote.py`) and the server (`serve.py`). The binary tensor data extension (Triton's
`binary_tensor_data`) puts a JSON header first and the raw tensors after it; the header's length travels in
the `Inference-Header-Content-Length` HTTP header and each binary tensor's size in its
`parameters.binary_data_size`, in the order the tensors appear in the header. Raw data is row-major and
little-endian; BOOL is one byte per element (0 or 1); BF16 is the upper half of an IEEE float32; BYTES
tensors (4-byte length + bytes per element) are refused, since no modelseal model takes or returns text.

modelseal computes in float32. A value is converted to float32 only when the conversion is exact (integers
up to 2**24, FP16, BF16, FP64 values that are float32 values, BOOL); anything else is refused with a
message that says which value and what to do. The one deliberate rounding is FP64 *outputs*, which are
rounded to float32 like an in-process model's outputs, and refused when they lie outside float32's range.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_EXTENSION = "binary_tensor_data"

DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),  # raw bits; see to_float32
}
FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64", "BF16"})
INT_TYPES = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
_FP32_MAX = float(np.finfo(np.float32).max)


class TensorError(ValueError):
    """A tensor that cannot be read or converted; the message says why in one line."""


def check_shape(shape: Any, *, allow_zero: bool = True) -> list[int]:
    if (not isinstance(shape, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= (0 if allow_zero else 1)
                       for d in shape)):
        kind = "non-negative" if allow_zero else "positive"
        raise TensorError(f"shape must be a list of {kind} integers, got {shape!r}")
    return shape


def datatype(name: Any) -> str:
    dt = str(name or "").upper()
    if dt == "BYTES":
        raise TensorError("datatype BYTES (text) is not supported; modelseal models take and return numbers")
    if dt not in DTYPES:
        raise TensorError(f"unknown datatype {name!r}; expected one of {', '.join(DTYPES)}")
    return dt


# ----------------------------------------------------------------------------------------- decoding
def from_json(data: Any, dt: str, shape: list[int]) -> np.ndarray:
    """The values of a JSON tensor (flat or nested row-major lists) as an array of its datatype."""
    if dt == "BF16":
        raise TensorError("BF16 tensors must be sent as binary data (the protocol has no JSON form for them)")
    if not isinstance(data, list):
        raise TensorError("a JSON tensor needs a 'data' list of row-major values")
    flat = _flatten(data)
    n = math.prod(shape)
    if len(flat) != n:
        raise TensorError(f"data has {len(flat)} values, but shape {shape} needs {n}")
    if dt == "BOOL":
        if not all(isinstance(v, bool) for v in flat):
            raise TensorError("BOOL data must be true/false values")
        return np.asarray(flat, dtype=np.bool_).reshape(shape)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
        raise TensorError(f"{dt} data must be numbers")
    if dt in INT_TYPES:
        info = np.iinfo(DTYPES[dt])
        if not all(isinstance(v, int) or (math.isfinite(v) and float(v).is_integer()) for v in flat):
            raise TensorError(f"{dt} data must be integers")
        if flat and (min(flat) < info.min or max(flat) > info.max):
            raise TensorError(f"{dt} data out of range [{info.min}, {info.max}]")
        return np.asarray([int(v) for v in flat], dtype=DTYPES[dt]).reshape(shape)
    arr = np.asarray(flat, dtype=np.float64)
    if dt == "FP64":
        return arr.reshape(shape)
    target = DTYPES[dt]
    with np.errstate(over="ignore", invalid="ignore"):
        conv = arr.astype(target)
    # JSON numbers are decimal: a float32/16 value is written as the shortest decimal that reads back as it
    # in that precision, which need not be its exact binary value; reading it in the precision is the rule.
    bad = np.isfinite(arr) & ~np.isfinite(conv)
    if bad.any():
        raise TensorError(f"{dt} data holds values outside its range (e.g. {arr[bad][0]!r})")
    return conv.reshape(shape)


def from_binary(buf: bytes | memoryview, dt: str, shape: list[int]) -> np.ndarray:
    dtype = DTYPES[dt]
    n = math.prod(shape)
    if len(buf) != n * dtype.itemsize:
        raise TensorError(f"binary data has {len(buf)} bytes, but a {dt} tensor of shape {shape} needs "
                          f"{n * dtype.itemsize}")
    raw = np.frombuffer(bytes(buf), dtype=np.uint8 if dt == "BOOL" else dtype)
    if dt == "BOOL":
        if (raw > 1).any():
            raise TensorError("BOOL binary data must be bytes 0 or 1")
        raw = raw.astype(np.bool_)
    return raw.reshape(shape)


def _flatten(data: list) -> list:
    out: list = []
    stack = [iter(data)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                stack.append(iter(v))
                break
            out.append(v)
        else:
            stack.pop()
    return out


# ----------------------------------------------------------------------------------------- conversion
def to_float32(arr: np.ndarray, dt: str, *, what: str = "input", round_fp64: bool = False) -> np.ndarray:
    """`arr` (of datatype `dt`) as float32, exactly; raises TensorError when a value would change.

    `round_fp64` rounds FP64 to float32 instead (outputs), refusing only values beyond float32's range.
    """
    if dt == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    if dt in ("FP32", "FP16", "BOOL"):
        return arr.astype(np.float32)
    if dt == "FP64":
        if not np.isfinite(arr).all():
            return arr.astype(np.float32)  # NaN/inf stay what they are; callers refuse them
        big = np.abs(arr) > _FP32_MAX
        if big.any():
            raise TensorError(f"{what} has FP64 values beyond float32's range (e.g. {arr[big].flat[0]:.6g}); "
                              "modelseal computes in float32")
        out = arr.astype(np.float32)
        if not round_fp64 and not np.array_equal(out.astype(np.float64), arr):
            i = int(np.flatnonzero(out.astype(np.float64) != arr)[0])
            raise TensorError(f"{what} has FP64 values that float32 cannot hold exactly (e.g. "
                              f"{arr.flat[i]!r}); send FP32")
        return out
    if dt in INT_TYPES:
        if arr.size and int(np.abs(arr.astype(np.float64)).max()) > 2**24:
            raise TensorError(f"{what} has {dt} values beyond 2**24, which float32 cannot hold exactly")
        return arr.astype(np.float32)
    raise TensorError(f"{what} datatype {dt} cannot be read as numbers")


def from_float32(arr: np.ndarray, dt: str, *, what: str = "input") -> np.ndarray:
    """float32 `arr` in datatype `dt`, exactly; raises TensorError when a value would change."""
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if dt == "FP32":
        return arr
    if dt == "FP64":
        return arr.astype(np.float64)
    if dt == "BF16":
        bits = arr.view(np.uint32)
        if (bits & 0xFFFF).any():
            raise TensorError(f"{what} values are not all exact in BF16; the model declares BF16 inputs")
        return (bits >> 16).astype(np.uint16)
    if dt == "BOOL":
        if not np.isin(arr, (0.0, 1.0)).all():
            raise TensorError(f"{what} values are not all 0 or 1; the model declares BOOL inputs")
        return arr.astype(np.bool_)
    target = DTYPES[dt]
    with np.errstate(over="ignore", invalid="ignore"):
        if dt == "FP16":
            out = arr.astype(target)
            ok = np.array_equal(out.astype(np.float32), arr)
        else:
            info = np.iinfo(target)
            ok = bool(np.isfinite(arr).all() and (arr == np.round(arr)).all()
                      and (arr.min(initial=0) >= info.min) and (arr.max(initial=0) <= info.max))
            out = arr.astype(target) if ok else arr
    if not ok:
        raise TensorError(f"{what} values are not all exact in {dt}, the datatype the model declares; "
                          "a key for this model sends values it can hold")
    return out


# ----------------------------------------------------------------------------------------- encoding
def to_json_data(arr: np.ndarray, dt: str) -> list:
    """Row-major values for a JSON tensor (exact: float32 values print as the shortest round-trip text)."""
    if dt == "BF16":
        raise TensorError("BF16 tensors can only be sent as binary data")
    return arr.reshape(-1).tolist()


def to_binary(arr: np.ndarray, dt: str) -> bytes:
    dtype = DTYPES[dt]
    if dt == "BOOL":
        return np.ascontiguousarray(arr, dtype=np.uint8).tobytes()
    return np.ascontiguousarray(arr, dtype=dtype).tobytes()


def split_body(body: bytes, header_length: str | None) -> tuple[dict, memoryview]:
    """The JSON header and the binary tail of a request or response body."""
    view = memoryview(body)
    if header_length is None:
        head, tail = body, view[len(body):]
    else:
        if not header_length.strip().isdigit() or int(header_length) > len(body):
            raise TensorError(f"{HEADER_LENGTH} is {header_length!r}, but the body has {len(body)} bytes")
        n = int(header_length)
        head, tail = bytes(view[:n]), view[n:]
    try:
        doc = json.loads(head)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deeply
        raise TensorError("body is not JSON" + (" (binary requests need the header "
                          f"{HEADER_LENGTH})" if header_length is None else "")) from None
    if not isinstance(doc, dict):
        raise TensorError("body must be a JSON object")
    return doc, tail


def binary_slices(tensors: list[dict], tail: memoryview) -> list[memoryview | None]:
    """Each tensor's binary data (None for a JSON tensor), cut from `tail` in order; all of tail must be used."""
    out: list[memoryview | None] = []
    offset = 0
    for t in tensors:
        params = t.get("parameters")
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is None:
            out.append(None)
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(tail):
            raise TensorError(f"binary_data_size {size!r} of tensor {t.get('name')!r} does not fit the "
                              f"{len(tail) - offset} binary bytes left")
        out.append(tail[offset:offset + size])
        offset += size
    if offset != len(tail):
        raise TensorError(f"{len(tail) - offset} binary bytes after the tensors are not claimed by any "
                          "binary_data_size")
    return out


def read_tensor(t: dict, binary: memoryview | None, *, allow_zero: bool = True) -> tuple[str, np.ndarray]:
    """(datatype, values) of one request/response tensor, JSON or binary."""
    dt = datatype(t.get("datatype"))
    shape = check_shape(t.get("shape"), allow_zero=allow_zero)
    if binary is not None:
        return dt, from_binary(binary, dt, shape)
    return dt, from_json(t.get("data"), dt, shape)
