"""Top-level verbs that dispatch on the key's method family: `verify`, `trace`, `unlock`."""

from __future__ import annotations

from typing import Any

from torch import nn

from . import methods
from .keys import Key
from .suspect import Suspect, as_suspect
from .verdict import Verdict


def _key(key: Key | str) -> Key:
    return key if isinstance(key, Key) else Key.load(key)


def verify(suspect: Suspect | nn.Module | str, key: Key | str, **kw: Any) -> Verdict:
    """Judge `suspect` with `key` through the judge verb of its method's family. Returns a Verdict."""
    return methods.judge(as_suspect(suspect), _key(key), **kw)


def trace(suspect: Suspect | nn.Module | str, key: Key | str, **kw: Any) -> Verdict:
    """Name the users whose fingerprinted copies a suspect came from (per-user methods: DeepMarks)."""
    key = _key(key)
    methods.require_family(key.method, "per-user", "trace")
    return methods.judge(as_suspect(suspect), key, **kw)


def unlock(locked: nn.Module, key: Key | str, **kw: Any) -> nn.Module:
    """Restore a locked model bit-exactly with its key (lock methods: AdvParams)."""
    key = _key(key)
    mi = methods.require_family(key.method, "lock", "unlock")
    return mi.cls().unlock(locked, key, **kw)
