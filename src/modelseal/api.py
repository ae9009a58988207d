"""Top-level verbs that dispatch on the key's method: `verify`, `trace`, `unlock`."""

from __future__ import annotations

from typing import Any

from torch import nn

from . import methods
from .errors import ModelSealError
from .keys import Key
from .suspect import Suspect, as_suspect
from .verdict import Verdict


def _key(key: Key | str) -> Key:
    return key if isinstance(key, Key) else Key.load(key)


def verify(suspect: Suspect | nn.Module | str, key: Key | str, **kw: Any) -> Verdict:
    """Judge `suspect` with `key`; the key's method decides how. Returns a Verdict with a p-value."""
    key = _key(key)
    cls = methods.get(key.method)
    if not hasattr(cls, "verify"):
        raise ModelSealError(f"'{key.method}' keys do not verify suspects")
    return cls().verify(as_suspect(suspect), key, **kw)


def trace(suspect: Suspect | nn.Module | str, key: Key | str, **kw: Any):
    """Name the users whose fingerprinted copies a suspect came from (DeepMarks)."""
    key = _key(key)
    cls = methods.get(key.method)
    if not hasattr(cls, "trace"):
        raise ModelSealError(f"'{key.method}' keys cannot trace users; trace takes a deepmarks key")
    return cls().trace(as_suspect(suspect), key, **kw)


def unlock(locked: nn.Module, key: Key | str, **kw: Any) -> nn.Module:
    """Restore a locked model bit-exactly with its key (AdvParams)."""
    key = _key(key)
    cls = methods.get(key.method)
    if not hasattr(cls, "unlock"):
        raise ModelSealError(f"'{key.method}' keys do not unlock models; unlock takes an advparams key")
    return cls().unlock(locked, key, **kw)
