"""Model files: safetensors with the architecture spec in the header (no pickle), and ONNX export."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError, first_line
from ..tensorfile import (
    check_writable,
    loads_json,
    read_bytes,
    read_head,
    read_header,
    read_header_metadata,
    write_atomic,
)

_META_KEY = "modelseal_model"
MODEL_FORMAT = 1


def _jsonable_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()}


def model_to_bytes(model: nn.Module, extra: dict[str, Any] | None = None) -> bytes:
    """A zoo model's state and architecture spec as safetensors bytes (the model file format)."""
    from safetensors.torch import save

    from . import spec_of

    spec = spec_of(model)
    if spec is None:
        raise ModelError("only models built by modelseal.models.build can be saved with their architecture; "
                         "export other models with export_onnx")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": MODEL_FORMAT, "spec": {**spec, "kwargs": _jsonable_kwargs(spec["kwargs"])},
            "extra": extra or {}}
    return save(state, metadata={_META_KEY: json.dumps(meta, sort_keys=True)})


def save_model(model: nn.Module, path: str | os.PathLike, force: bool = False,
               extra: dict[str, Any] | None = None) -> Path:
    """Write the model's state and architecture spec as one safetensors file."""
    check_writable(path, force)
    return write_atomic(path, model_to_bytes(model, extra), force)


def _model_meta(head: bytes, source: str) -> dict[str, Any]:
    meta = read_header_metadata(head, source, ModelError)
    raw = meta.get(_META_KEY)
    if raw is None:
        if "modelseal" in meta:  # the metadata name of a key file
            raise ModelError(f"{source} is a modelseal key, not a model (a file without modelseal architecture "
                             "metadata); give the model file here, and to `verify` the key(s) first: "
                             "KEY [KEY ...] SUSPECT")
        raise ModelError(f"{source} is a safetensors file without modelseal architecture metadata; a state dict "
                         "of your own architecture loads with --arch package.module:factory")
    info = loads_json(raw, f"{source}: modelseal model metadata", ModelError)
    try:
        spec = info["spec"]
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise KeyError("spec")
    except (ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{source}: malformed modelseal model metadata ({e})") from None
    fmt = info.get("format", 0)
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise ModelError(f"{source}: model format version must be an integer, got {fmt!r}")
    if fmt > MODEL_FORMAT:
        raise ModelError(f"{source} has model format {info['format']}, newer than this modelseal reads")
    return info


def read_model_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The modelseal metadata of a model file, read from the header without decoding tensors."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    return _model_meta(read_head(path, ModelError, "model file"), str(path))


def check_finite(model: nn.Module, source: str = "model", error: type[Exception] = ModelError) -> None:
    """Raise `error` when a floating parameter or buffer of `model` holds NaN or infinite values: such a
    model answers NaN, and locking, attacking or judging it would only produce silent nonsense."""
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if torch.is_floating_point(t) and t.numel() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise error(f"{source}: '{name}' holds {bad} NaN or infinite value(s); the model is corrupt, "
                        "retrain it or restore it from a good copy")


_MAX_INPUT = 1 << 26  # elements of one input; far above any image model here
_MAX_OUTPUTS = 1 << 24


def _checked_spec(spec: dict[str, Any], source: str) -> tuple[tuple[int, ...], int, tuple[float, float]]:
    """Input shape, output size and bounds of a model file's spec, checked as untrusted input."""
    def bad(what: str) -> ModelError:
        return ModelError(f"{source}: malformed modelseal model metadata ({what})")

    shape = spec.get("input_shape")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 4
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)):
        raise bad(f"input_shape must be a list of 1 to 4 positive integers, got {shape!r}")
    n = 1
    for s in shape:
        n *= s
    if n > _MAX_INPUT:
        raise bad(f"input_shape {shape} has {n} elements, more than {_MAX_INPUT}")
    out = spec.get("output_size")
    if not isinstance(out, int) or isinstance(out, bool) or not 1 <= out <= _MAX_OUTPUTS:
        raise bad(f"output_size must be an integer in [1, {_MAX_OUTPUTS}], got {out!r}")
    bounds = spec.get("bounds", [0.0, 1.0])
    if (not isinstance(bounds, list) or len(bounds) != 2
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
            or not bounds[0] < bounds[1]):
        raise bad(f"bounds must be [lo, hi] with lo < hi, got {bounds!r}")
    return tuple(shape), out, (float(bounds[0]), float(bounds[1]))


def model_from_bytes(blob: bytes, source: str = "model", device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the architecture from the header and load the weights (strict: every tensor must match)."""
    from safetensors.torch import load

    from . import build

    info = _model_meta(blob, source)
    spec = info["spec"]
    kwargs = spec.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise ModelError(f"{source}: malformed modelseal model metadata (kwargs must be an object)")
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()}
    shape, outputs, bounds = _checked_spec(spec, source)

    def rebuild() -> nn.Module:
        try:
            return build(spec["name"], input_shape=shape, num_classes=outputs, bounds=bounds, **kwargs)
        except Exception as e:  # the zoo's ModelError included: name the file it came from
            raise ModelError(f"{source}: cannot rebuild architecture {spec.get('name')!r} "
                             f"({first_line(e)})") from None

    # Build on the meta device first (no memory) and compare every tensor shape with the file's header,
    # so that metadata asking for a huge model is refused before anything is allocated.
    with torch.device("meta"):
        skeleton = rebuild()
    want = {k: list(v.shape) for k, v in skeleton.state_dict().items()}
    have = {k: e.get("shape") for k, e in read_header(blob, source, ModelError).items()
            if k != "__metadata__" and isinstance(e, dict)}
    if want != have:
        diff = sorted(set(want) ^ set(have)) or sorted(k for k in want if want[k] != have[k])
        k = diff[0]
        raise ModelError(f"{source}: weights do not fit architecture {spec['name']!r}: tensor '{k}' is "
                         f"{have.get(k, 'missing')} in the file but {want.get(k, 'unexpected')} in the "
                         "architecture; the file is corrupt or was edited")
    model = rebuild()
    try:
        state = load(blob)
    except Exception as e:
        raise ModelError(f"{source}: weights could not be decoded ({e.__class__.__name__}); the file is corrupt") \
            from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(f"{source}: weights do not fit architecture {spec['name']!r}: "
                         f"{first_line(e, limit=10_000)}") from None
    check_finite(model, source)
    model.modelseal_extra = info.get("extra", {})
    return model.to(device).eval()


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Load a model file written by `save_model` (no pickle: the architecture comes from the header)."""
    path = Path(path)
    return model_from_bytes(read_bytes(path, ModelError, "model file"), str(path), device)


def export_onnx(model: nn.Module, path: str | os.PathLike, input_shape: tuple[int, ...] | None = None,
                force: bool = False, opset: int = 17) -> Path:
    """Export to ONNX with a dynamic batch dimension; input named 'input', output 'output'."""
    from . import spec_of

    path = Path(path)
    check_writable(path, force)
    if input_shape is None:
        spec = spec_of(model)
        if spec is None:
            raise ModelError("export_onnx needs input_shape for a model not built by modelseal")
        input_shape = tuple(spec["input_shape"])
    p = next(model.parameters())
    was = model.training
    model.eval()
    dummy = torch.zeros(2, *input_shape, device=p.device, dtype=p.dtype)
    tmp = path.with_name(path.name + ".tmp.onnx")
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter needs no extra package (the dynamo one needs onnxscript).
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, (dummy,), str(tmp), input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                              opset_version=opset, dynamo=False)
    except Exception as e:
        tmp.unlink(missing_ok=True)
        raise ModelError(f"ONNX export failed: {first_line(e)}") from None
    finally:
        model.train(was)
    os.replace(tmp, path)
    return path
