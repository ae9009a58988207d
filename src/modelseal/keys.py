"""`Key`: the secret a protection method learns, as one safetensors file.

A key holds named tensors (trigger images, projections, positions, ...) and JSON metadata in the
safetensors header: the format version, the method, its parameters, the signature of the model it
belongs to (input shape, output size), the creation time and a SHA-256 digest over everything but the
creation time. Nothing executable is ever read: the header is parsed as JSON and checked before the
tensors are decoded, and every failure ends in `KeyFormatError` or `KeyIntegrityError`.

The same seed gives the same tensors, parameters and digest. The creation time is taken from
`SOURCE_DATE_EPOCH` when set (the reproducible-builds convention), so with it the bytes are equal too.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import KeyFormatError, KeyIntegrityError, KeyMismatchError, first_line
from .safeio import loads_json, read_file, write_atomic
from .tensorfile import KEY_META, read_header_metadata, tensor_bytes

FORMAT_VERSION = 1


def now() -> str:
    """The creation time a new key records (ISO 8601, UTC; SOURCE_DATE_EPOCH when set)."""
    sde = os.environ.get("SOURCE_DATE_EPOCH")
    if sde and sde.isdigit():
        t = _dt.datetime.fromtimestamp(int(sde), tz=_dt.timezone.utc)
    else:
        t = _dt.datetime.now(tz=_dt.timezone.utc).replace(microsecond=0)
    return t.isoformat()


@dataclass
class Key:
    """The secret of one protection: `method`, its `params`, the model `signature` and `tensors`."""

    method: str
    params: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    signature: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=now)
    format: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.tensors.items()}

    # ------------------------------------------------------------------ content
    def digest(self) -> str:
        """SHA-256 over format, method, params, signature and every tensor (name, dtype, shape, bytes)."""
        h = hashlib.sha256()
        head = {"format": self.format, "method": self.method, "params": self.params,
                "signature": self.signature}
        h.update(json.dumps(head, sort_keys=True, separators=(",", ":")).encode())
        for name in sorted(self.tensors):
            t = self.tensors[name]
            h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
            h.update(tensor_bytes(t))
        return h.hexdigest()

    def check_signature(self, input_shape: tuple[int, ...] | None = None,
                        output_size: int | None = None) -> None:
        """Raise KeyMismatchError if the key was made for a model of another input shape or output size."""
        want_in = self.signature.get("input_shape")
        if input_shape is not None and want_in is not None and list(input_shape) != list(want_in):
            raise KeyMismatchError(
                f"this {self.method} key belongs to a model with input shape {tuple(want_in)}, "
                f"but the suspect takes {tuple(input_shape)}; use the key made for this model")
        want_out = self.signature.get("output_size")
        if output_size is not None and want_out is not None and int(output_size) != int(want_out):
            raise KeyMismatchError(
                f"this {self.method} key belongs to a model with {want_out} outputs, "
                f"but the suspect has {output_size}; use the key made for this model")

    # ------------------------------------------------------------------ bytes
    def to_bytes(self) -> bytes:
        from safetensors.torch import save

        meta = {"format": self.format, "method": self.method, "params": self.params,
                "signature": self.signature, "created": self.created, "digest": self.digest()}
        return save(dict(sorted(self.tensors.items())),
                    metadata={KEY_META: json.dumps(meta, sort_keys=True)})

    @classmethod
    def from_bytes(cls, data: bytes, method: str | None = None, source: str = "key") -> Key:
        meta = read_header_metadata(data, source, KeyFormatError).get(KEY_META)
        if meta is None:
            raise KeyFormatError(f"{source} is a safetensors file but not a modelseal key (no '{KEY_META}' metadata)")
        info = loads_json(meta, f"{source}: modelseal metadata", KeyFormatError)
        try:
            fmt = info["format"]
            kmethod = info["method"]
            params, signature = info["params"], info["signature"]
            created, digest = info["created"], info["digest"]
        except (ValueError, KeyError, TypeError) as e:
            raise KeyFormatError(f"{source}: malformed modelseal metadata ({e.__class__.__name__}: {e})") from None
        if not isinstance(fmt, int) or isinstance(fmt, bool):
            raise KeyFormatError(f"{source}: format version must be an integer, got {fmt!r}")
        if fmt > FORMAT_VERSION:
            raise KeyFormatError(f"{source} has key format {fmt}, newer than this modelseal reads "
                                 f"({FORMAT_VERSION}); upgrade modelseal")
        if fmt < 1:
            raise KeyFormatError(f"{source}: invalid key format version {fmt}")
        if not isinstance(kmethod, str) or not isinstance(params, dict) or not isinstance(signature, dict):
            raise KeyFormatError(f"{source}: malformed modelseal metadata (method/params/signature types)")
        if method is not None and kmethod != method:
            raise KeyFormatError(f"{source} is a '{kmethod}' key, expected a '{method}' key")
        tensors = _load_tensors(data, source)
        key = cls(method=kmethod, params=params, tensors=tensors, signature=signature,
                  created=str(created), format=fmt)
        if key.digest() != digest:
            raise KeyIntegrityError(f"{source} has been altered: its content does not match its SHA-256 digest")
        return key

    def save(self, path: str | os.PathLike[str], force: bool = False) -> Path:
        """Write the key atomically, readable by its owner only (mode 0600): it is a secret."""
        return write_atomic(path, self.to_bytes(), force, private=True)

    @classmethod
    def load(cls, path: str | os.PathLike[str], method: str | None = None) -> Key:
        """Read a key file: its format version, `method` (when given) and digest are checked; nothing is unpickled."""
        path = Path(path)
        return cls.from_bytes(read_file(path, KeyFormatError, "key file"), method=method, source=str(path))

    def require(self, params: Iterable[str] = (), tensors: Iterable[str] = ()) -> None:
        """Raise KeyFormatError unless the key holds these parameters and tensors: a method calls this
        before using its key, so that a key of another method relabelled as this one (its digest
        recomputed) ends in a clear error rather than a KeyError deep inside the method."""
        missing = [f"parameter '{p}'" for p in params if p not in self.params]
        missing += [f"tensor '{t}'" for t in tensors if t not in self.tensors]
        if missing:
            raise KeyFormatError(f"this '{self.method}' key lacks {', '.join(missing)}; it is corrupt or was "
                                 f"made by another method")

    def __repr__(self) -> str:
        shapes = {k: tuple(v.shape) for k, v in self.tensors.items()}
        return f"Key(method={self.method!r}, params={self.params!r}, tensors={shapes}, signature={self.signature!r})"


def _load_tensors(data: bytes, source: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    try:
        return load(data)
    except Exception as e:  # safetensors raises its own error types on malformed input
        raise KeyFormatError(f"{source}: tensors could not be decoded ({e.__class__.__name__}: "
                             f"{first_line(e, limit=10_000, empty='malformed')})") from None
