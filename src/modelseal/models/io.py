"""Model files: safetensors with the architecture spec in the header (no pickle), and ONNX export."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError
from ..tensorfile import MAX_HEADER, check_writable, read_header_metadata, write_atomic

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
        raise ModelError(f"{source} is a safetensors file without modelseal architecture metadata; "
                         "save models with modelseal.models.save_model")
    try:
        info = json.loads(raw)
        spec = info["spec"]
        if not isinstance(spec, dict) or "name" not in spec:
            raise KeyError("spec")
    except (ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{source}: malformed modelseal model metadata ({e})") from None
    if info.get("format", 0) > MODEL_FORMAT:
        raise ModelError(f"{source} has model format {info['format']}, newer than this modelseal reads")
    return info


def read_model_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The modelseal metadata of a model file, read from the header without decoding tensors."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) == 8:
            n = int.from_bytes(head, "little")
            head += f.read(min(n, MAX_HEADER + 1))
    return _model_meta(head, str(path))


def model_from_bytes(blob: bytes, source: str = "model", device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the architecture from the header and load the weights (strict: every tensor must match)."""
    from safetensors.torch import load

    from . import build

    info = _model_meta(blob, source)
    spec = info["spec"]
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in spec.get("kwargs", {}).items()}
    try:
        model = build(spec["name"], input_shape=tuple(spec["input_shape"]),
                      num_classes=int(spec["output_size"]), bounds=tuple(spec.get("bounds", (0.0, 1.0))),
                      **kwargs)
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(f"{source}: cannot rebuild architecture {spec.get('name')!r} ({e})") from None
    try:
        state = load(blob)
    except Exception as e:
        raise ModelError(f"{source}: weights could not be decoded ({e.__class__.__name__}); the file is corrupt") \
            from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(f"{source}: weights do not fit architecture {spec['name']!r}: "
                         f"{str(e).splitlines()[0]}") from None
    model.modelseal_extra = info.get("extra", {})
    return model.to(device).eval()


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Load a model file written by `save_model` (no pickle: the architecture comes from the header)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    return model_from_bytes(path.read_bytes(), str(path), device)


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
        raise ModelError(f"ONNX export failed: {str(e).splitlines()[0][:200]}") from None
    finally:
        model.train(was)
    os.replace(tmp, path)
    return path
