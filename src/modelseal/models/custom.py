"""Bring your own architecture: `package.module:factory` (like `uvicorn module:app`) plus a state-dict file.

`import_factory("pkg.mod:make")` imports `pkg.mod` (the current directory first, then `sys.path`) and
returns `make`, a callable that takes no arguments and returns an `nn.Module` (a class works too). Whatever
the user's code does on import or call (raises, calls `sys.exit`, returns something else) ends in one
`ModelError` naming `--arch`; only Ctrl-C passes through.
Importing a module runs its code: that is why the architecture always comes from the command line or
the caller, never from a model file's header.

Weights are a plain safetensors state dict (`safetensors.torch.save_file(model.state_dict(), PATH)`).
`save_custom` adds a small JSON header entry (`modelseal_user_arch`: the factory string, input shape,
output size, bounds) so that later commands know the input shape and can say which `--arch` to pass.

torch.export `.pt2` files are refused: `torch.export.load` (torch 2.13) unpickles parts of the archive
with torch's unsafe (weights_only=False) loader, which can run code, and modelseal never unpickles.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError, first_line
from ..safeio import check_writable, loads_json, read_file, write_atomic
from ..tensorfile import USER_ARCH_META, read_head, read_header_metadata
from .io import check_finite


def import_factory(spec: str) -> Any:
    """The callable named by `package.module:factory` (the module is imported, so its code runs)."""
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise ModelError(f"--arch {spec!r}: expected package.module:factory (e.g. mymodels:make_net)")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ModelError(f"--arch {spec!r}: cannot import module {mod_name!r} ({first_line(e, 160)}); run from "
                         "the folder that holds it or add that folder to PYTHONPATH") from None
    except USER_ERRORS as e:  # the module's own code failed (or exited) while importing
        raise ModelError(f"--arch {spec!r}: importing module {mod_name!r} failed ({_what(e)})") from None
    obj: Any = mod
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ModelError(f"--arch {spec!r}: module {mod_name!r} has no attribute {attr!r}") from None
        except USER_ERRORS as e:  # a module-level __getattr__ or a property of the user's
            raise ModelError(f"--arch {spec!r}: reading {attr!r} failed ({_what(e)})") from None
    if not callable(obj):
        raise ModelError(f"--arch {spec!r}: {attr!r} is not callable; it must return an nn.Module")
    return obj


# What the user's code may raise that must end in one line: any Exception, and SystemExit (a factory that
# calls sys.exit, e.g. `--arch sys:exit`, would otherwise end the program with exit 0 and no output).
USER_ERRORS = (Exception, SystemExit)


def _what(e: BaseException) -> str:
    if isinstance(e, SystemExit):
        return f"it called sys.exit({e.code!r})"
    lines = str(e).splitlines()
    return f"{type(e).__name__}: {lines[0][:160]}" if lines and lines[0] else type(e).__name__


def _read_meta(path: Path) -> dict[str, str]:
    return read_header_metadata(read_head(path, ModelError, "model file"), str(path), ModelError)


def user_arch_of(path: str | os.PathLike) -> dict[str, Any] | None:
    """The `modelseal_user_arch` header entry of a model file (None when absent), read without the tensors."""
    p = Path(path)
    if p.suffix.lower() != ".safetensors" or not p.is_file():
        return None
    raw = _read_meta(p).get(USER_ARCH_META)
    if raw is None:
        return None
    info = loads_json(raw, f"{p}: {USER_ARCH_META} metadata", ModelError)
    return info if isinstance(info, dict) else None


def build_custom(arch: str, input_shape: tuple[int, ...], bounds: tuple[float, float] = (0.0, 1.0)) -> nn.Module:
    """A fresh model from the user's factory, tagged with its input shape and output size."""
    factory = import_factory(arch)
    try:
        model = factory()
    except USER_ERRORS as e:  # the user's code: whatever it raises, say where it came from in one line
        raise ModelError(f"--arch {arch!r}: calling the factory failed ({_what(e)}); it must return an "
                         "nn.Module") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"--arch {arch!r} returned {type(model).__name__}, not a torch.nn.Module; the factory "
                         "must return an nn.Module")
    return _tag(model, arch, input_shape, bounds)


def _tag(model: nn.Module, arch: str, input_shape: tuple[int, ...], bounds: tuple[float, float]) -> nn.Module:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *input_shape))
    except USER_ERRORS as e:
        raise ModelError(f"--arch {arch!r}: the model does not accept inputs of shape {list(input_shape)} "
                         f"({_what(e)})") from None
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"--arch {arch!r}: the model returns {type(out).__name__}, not a tensor; its forward "
                         "must return one tensor of outputs")
    # The spec makes the model usable everywhere a zoo model is (signature, suspects, fingerprints); "name"
    # is the factory string, which the zoo cannot rebuild: such models are saved with save_custom.
    # torch's stubs type a Module's attributes as Tensor | Module; the spec is a plain dict
    model.modelseal_spec = {"name": arch, "kwargs": {}, "input_shape": [int(s) for s in input_shape],  # type: ignore[assignment]
                            "output_size": int(out[0].numel()), "bounds": [float(b) for b in bounds],
                            "user_arch": True}
    return model


def load_custom(path: str | os.PathLike, arch: str, input_shape: tuple[int, ...] | None = None,
                bounds: tuple[float, float] | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """Build `arch` and load the state dict in `path` (strict). The input shape comes from the file's header
    when modelseal wrote it, else from `input_shape` (a data set's or a key's)."""
    from safetensors.torch import load

    p = Path(path)
    if p.suffix.lower() == ".pt2":
        raise ModelError(f"{p}: torch.export .pt2 files are refused: torch.export.load unpickles parts of them "
                         "(torch.load with weights_only=False), which can run code. Save the weights with "
                         "safetensors.torch.save_file(model.state_dict(), 'model.safetensors') and pass --arch")
    if not p.is_file():
        raise ModelError(f"model file {p} does not exist")
    info = user_arch_of(p) or {}
    shape = info.get("input_shape") or input_shape
    if shape is None:
        raise ModelError(f"{p}: the input shape of --arch {arch!r} is unknown; pass --data (its input shape is "
                         "used) or verify with a key made for this model")
    box = tuple(info.get("bounds") or bounds or (0.0, 1.0))
    model = build_custom(arch, tuple(int(s) for s in shape), box)
    try:
        state = load(read_file(p, ModelError, "model file"))
    except Exception as e:
        raise ModelError(f"{p}: not a safetensors state dict ({e.__class__.__name__})") from None
    want = set(model.state_dict())
    if set(state) != want:
        for prefix in ("module.", "_orig_mod.", "model."):  # DataParallel/DDP, torch.compile, a wrapper
            if state and all(k.startswith(prefix) for k in state) and {k[len(prefix):] for k in state} == want:
                state = {k[len(prefix):]: v for k, v in state.items()}
                break
    missing, unexpected = sorted(want - set(state)), sorted(set(state) - want)
    if missing or unexpected:
        def names(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        raise ModelError(f"{p}: weights do not fit --arch {arch!r}: "
                         + "; ".join(part for part in (f"missing {names(missing)}" if missing else "",
                                                       f"unexpected {names(unexpected)}" if unexpected else "")
                                     if part))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # the names fit; a shape does not: torch names it after the first line
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:3] if line.strip())
        raise ModelError(f"{p}: weights do not fit --arch {arch!r}: {detail or first_line(e)}") from None
    check_finite(model, str(p))
    return model.to(device).eval()


def custom_to_bytes(model: nn.Module, arch: str) -> bytes:
    """The state dict of a user-architecture model with its `modelseal_user_arch` header entry, as bytes."""
    from safetensors.torch import save

    spec = getattr(model, "modelseal_spec", None) or {}
    info = {"arch": arch, "input_shape": spec.get("input_shape"), "output_size": spec.get("output_size"),
            "bounds": spec.get("bounds")}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return save(state, metadata={USER_ARCH_META: json.dumps(info, sort_keys=True)})


def save_custom(model: nn.Module, path: str | os.PathLike, arch: str, force: bool = False) -> Path:
    """Write the state dict of a user-architecture model with its `modelseal_user_arch` header entry."""
    check_writable(path, force)
    return write_atomic(path, custom_to_bytes(model, arch), force)
