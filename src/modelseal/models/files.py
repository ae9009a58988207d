"""Model files of either kind, behind one set of functions: a modelseal model file (a zoo architecture, named
in the safetensors header, rebuilt without code or pickle: `models.io`), or, with `arch="package.module:factory"`,
a plain safetensors state dict of a user's own nn.Module (`models.custom`: the module is imported and the factory
called). The command line and `api.protect_and_save` reach model files only through these.

A zoo model file's header also keeps `extra` (the data set `modelseal train` recorded, its seeds); every model
made from it (marked, locked, attacked, a user's copy) keeps that `extra` when written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError
from ..runtime import resolve_device
from . import custom
from .io import load_model, model_to_bytes, save_model

__all__ = ["is_user_arch", "build_model", "open_model", "model_bytes", "write_model", "extra_of"]


def is_user_arch(arch: str | None) -> bool:
    """True for a user's `package.module:factory`, False for a zoo name (mlp, cnn, ...) or None."""
    return arch is not None and ":" in arch


def build_model(arch: str, meta: Any, *, seed: int, device: str | torch.device = "cpu") -> nn.Module:
    """A fresh model for a data set's `meta`: a zoo architecture by name, or a user's `package.module:factory`
    (built under `seed`, input shape and bounds from `meta`), on `device`."""
    if is_user_arch(arch):
        from ..runtime import seed_everything

        seed_everything(seed)
        model = custom.build_custom(arch, tuple(meta.input_shape), tuple(meta.bounds))
    else:
        from . import build

        model = build(arch, meta, seed=seed)
    return model.to(resolve_device(device))


def open_model(path: str | os.PathLike, device: str | torch.device = "cpu", arch: str | None = None,
               spec: Any = None) -> nn.Module:
    """Load a model file. Without `arch`: a modelseal model file (a state dict of a user architecture is refused
    with the `--arch` it needs). With `arch`: a state dict of that architecture, whose input shape comes from
    the file's header or else from `spec` (a data set's Meta, whose bounds are used too, or a key's signature
    dict). `device` is auto, cpu, cuda or a torch.device."""
    path = Path(path)
    dev = resolve_device(device)
    if arch is None:
        info = custom.user_arch_of(path)
        if info is not None:
            raise ModelError(f"{path} holds the weights of your own architecture; pass --arch {info.get('arch')}")
        return load_model(path, device=dev)
    shape = bounds = None
    if isinstance(spec, dict):
        shape = spec.get("input_shape")
    elif spec is not None:
        shape, bounds = getattr(spec, "input_shape", None), getattr(spec, "bounds", None)
    return custom.load_custom(path, arch, tuple(shape) if shape else None, bounds, device=dev)


def extra_of(model: nn.Module, data: str | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The header `extra` a model file of `model` gets: the one it was loaded with, the data set name `data`
    when given, and then `extra`."""
    out = dict(getattr(model, "modelseal_extra", None) or {})
    if data is not None:
        out["data"] = data
    out.update(extra or {})
    return out


def model_bytes(model: nn.Module, arch: str | None = None) -> bytes:
    """The bytes of a model file of `model` (for a write of several files as one unit): a modelseal model file
    keeping the model's header `extra`, or with `arch` a state dict with its architecture entry."""
    return model_to_bytes(model, extra_of(model)) if arch is None else custom.custom_to_bytes(model, arch)


def write_model(model: nn.Module, path: str | os.PathLike, force: bool = False, arch: str | None = None,
                data: str | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write `model` to `path` atomically, refusing an existing file without `force`: a modelseal model file
    (header `extra` from `extra_of(model, data, extra)`), or with `arch` a state dict of that architecture."""
    if arch is None:
        return save_model(model, path, force=force, extra=extra_of(model, data, extra))
    return custom.save_custom(model, path, arch, force=force)
