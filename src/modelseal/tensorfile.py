"""The one safetensors module: a bounded header reader that never trusts the file, tensor bytes for
digests, and atomic writes (one file, or a pair written both-or-neither) that never overwrite a user's file
without `force`. Keys, models, commitments, evidence and bench caches all go through here."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

from .errors import OutputExistsError

MAX_HEADER = 100 * 1024 * 1024


def tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.contiguous().cpu()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def read_header_metadata(data: bytes, source: str, err: type[Exception]) -> dict[str, str]:
    """Parse a safetensors header as JSON without decoding tensors; return its `__metadata__`."""
    if len(data) < 8:
        raise err(f"{source} is truncated or empty: not a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    if n == 0 or n > MAX_HEADER or 8 + n > len(data):
        raise err(f"{source} is truncated or not a safetensors file (header length {n}, file {len(data)} bytes)")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise err(f"{source}: safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise err(f"{source}: safetensors header is not a JSON object")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise err(f"{source}: safetensors metadata must map strings to strings")
    return meta


def check_writable(path, force: bool) -> None:
    """Raise OutputExistsError if `path` exists and `force` is false."""
    p = Path(path)
    if p.exists() and not force:
        raise OutputExistsError(f"{p} already exists; pass --force (force=True) to overwrite it")


def write_atomic(path, data: bytes | str, force: bool = False):
    """Write `data` to `path` through a temporary file and a rename, so a failure never leaves a
    half-written file; refuses to overwrite an existing file unless `force`. Returns the Path."""
    p = Path(path)
    check_writable(p, force)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p
