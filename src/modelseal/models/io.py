"""Model files: safetensors with the architecture spec in the header (no pickle), and ONNX export.

A saved model is the model that was saved: `model_to_bytes` rebuilds the architecture its header will name
and checks that it is the module being saved (the same module tree and types, the same tensor names and
shapes, and equal outputs on a probe input), so that loading the file can only give back that module.
When a zoo MLP, VAE decoder or CNN was changed in its layer widths only (a structurally pruned copy, as
torch-pruning makes: smaller Linear/Conv layers), the header records the widths the module has now, and
the file loads back with equal outputs. Any other change (a layer replaced, e.g. a ReLU by nn.Identity, a
changed forward, a hook that alters outputs) is refused with one line that points to saving the module as
your own architecture (`--arch package.module:factory`, `models.custom.save_custom`, or a plain state dict)
or to ONNX export.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError, first_line
from ..safeio import check_writable, loads_json, read_file, write_atomic, write_target
from ..tensorfile import KEY_META, MODEL_META, read_header, read_header_metadata

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
    kwargs = rebuild_kwargs(model, spec, state)
    meta = {"format": MODEL_FORMAT, "spec": {**spec, "kwargs": _jsonable_kwargs(kwargs)},
            "extra": extra or {}}
    return save(state, metadata={MODEL_META: json.dumps(meta, sort_keys=True)})


def _tree(m: nn.Module) -> list[tuple[str, str]]:
    return [(n, type(x).__qualname__) for n, x in m.named_modules()]


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _width_kwargs(name: str, model: nn.Module) -> dict[str, Any] | None:
    """The zoo options that give a structurally pruned MLP / VAE decoder / CNN its current layer widths."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if name in ("mlp", "vae-decoder") and linears:
        return {"hidden": tuple(int(m.out_features) for m in linears[:-1])}
    if name == "cnn" and len(convs) == 2 and len(linears) == 2:
        return {"channels": tuple(int(c.out_channels) for c in convs), "hidden": int(linears[0].out_features)}
    return None


def _first_difference(a: nn.Module, b: nn.Module, sa: dict, sb: dict) -> str:
    ta, tb = dict(_tree(a)), dict(_tree(b))
    for n in list(ta) + [n for n in tb if n not in ta]:
        if ta.get(n) != tb.get(n):
            return f"module '{n or '<root>'}' is {ta.get(n, 'missing')} but the architecture has {tb.get(n, 'none')}"
    for k in list(sa) + [k for k in sb if k not in sa]:
        if sa.get(k) != sb.get(k):
            return f"tensor '{k}' is {list(sa[k]) if k in sa else 'missing'} but the architecture has " \
                   f"{list(sb[k]) if k in sb else 'none'}"
    return "the module differs from its architecture"


def rebuild_kwargs(model: nn.Module, spec: dict[str, Any], state: dict[str, torch.Tensor] | None = None
                   ) -> dict[str, Any]:
    """The zoo options under which `spec["name"]` rebuilds exactly `model`: its spec's own, or (for a model
    pruned in its widths) the widths it has now. Refuses (ModelError) a module the zoo cannot rebuild: a
    different module tree or tensor shape, or different outputs on a probe input."""
    from . import build

    name = spec["name"]
    state = state if state is not None else {k: v.detach().cpu() for k, v in model.state_dict().items()}
    have = _shapes(state)
    shape = tuple(int(s) for s in spec["input_shape"])

    def make(kw: dict[str, Any]) -> nn.Module:
        return build(name, input_shape=shape, num_classes=int(spec["output_size"]),
                     bounds=tuple(spec.get("bounds", (0.0, 1.0))), **kw)

    refuse = (f"cannot save this module as zoo architecture {name!r}: {{why}}; it is no longer the model "
              "its header would rebuild. Save it as your own architecture (--arch package.module:factory, "
              "models.custom.save_custom, or safetensors.torch.save_file(model.state_dict(), PATH)) or "
              "export it with export_onnx")
    candidates = [dict(spec.get("kwargs") or {})]
    widths = _width_kwargs(name, model)
    if widths is not None:
        candidates.append({**candidates[0], **widths})
    why, chosen = "", None
    for kw in candidates:
        try:
            with torch.device("meta"):
                skeleton = make(kw)
        except ModelError as e:
            why = why or first_line(e)
            continue
        if _tree(skeleton) == _tree(model) and _shapes(skeleton.state_dict()) == have:
            chosen = kw
            break
        why = why or _first_difference(model, skeleton, have, _shapes(skeleton.state_dict()))
    if chosen is None:
        raise ModelError(refuse.format(why=why))
    rebuilt = make(chosen)
    try:
        rebuilt.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(refuse.format(why=first_line(e))) from None
    dev = next((t.device for t in model.parameters()), torch.device("cpu"))
    dtype = next((t.dtype for t in model.parameters() if t.is_floating_point()), torch.float32)
    rebuilt.to(dev, dtype)
    lo, hi = (float(b) for b in spec.get("bounds", (0.0, 1.0)))
    gen = torch.Generator().manual_seed(0)
    probe = (lo + (hi - lo) * torch.rand(4, *shape, generator=gen)).to(dev, dtype)
    was = model.training
    model.eval()
    rebuilt.eval()
    try:
        with torch.no_grad():
            a, b = model(probe), rebuilt(probe)
    except Exception as e:
        raise ModelError(refuse.format(why=f"the module fails on a probe input ({first_line(e)})")) from None
    finally:
        model.train(was)
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
            and torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5, equal_nan=True)):
        gap = (a.float() - b.float()).abs().max().item() if isinstance(a, torch.Tensor) and a.shape == b.shape \
            else "shape"
        raise ModelError(refuse.format(why=f"its outputs differ from the rebuilt architecture's on a probe "
                                           f"input (largest difference {gap})"))
    return chosen


def save_model(model: nn.Module, path: str | os.PathLike, force: bool = False,
               extra: dict[str, Any] | None = None) -> Path:
    """Write the model's state and architecture spec as one safetensors file."""
    check_writable(path, force)
    return write_atomic(path, model_to_bytes(model, extra), force)


def _model_meta(head: bytes, source: str) -> dict[str, Any]:
    meta = read_header_metadata(head, source, ModelError)
    raw = meta.get(MODEL_META)
    if raw is None:
        if KEY_META in meta:  # a key file
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
    return model_from_bytes(read_file(path, ModelError, "model file"), str(path), device)


def _check_onnx(model: nn.Module, onnx_path: Path, input_shape: tuple[int, ...], p: torch.Tensor) -> None:
    """ONNX Runtime must answer like the model at batch sizes other than the traced one (1 and 5): a model whose
    graph fixed the batch size (a reshape to a constant) is refused here, not when a verifier loads it."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        for batch in (1, 5):
            x = torch.rand(batch, *input_shape, generator=torch.Generator().manual_seed(batch))
            with torch.no_grad():
                want = model(x.to(device=p.device, dtype=p.dtype)).float().cpu().numpy()
            feed = x.to(dtype=p.dtype).numpy() if p.dtype in (torch.float32, torch.float64) else x.numpy()
            got = session.run(None, {"input": feed})[0]
            if got.shape != want.shape or not np.allclose(got, want, rtol=1e-3, atol=1e-4):
                raise ModelError(f"the exported ONNX model answers a batch of {batch} differently from the model "
                                 f"(shape {list(got.shape)} vs {list(want.shape)}); not written. A forward that "
                                 "fixes the batch size (e.g. x.view(2, -1)) cannot be exported with a dynamic batch")
    except ModelError:
        raise
    except Exception as e:  # onnxruntime's own errors: the graph does not run at another batch size
        raise ModelError(f"the exported ONNX model fails in ONNX Runtime at another batch size ({first_line(e)}); "
                         "not written. A forward that fixes the batch size cannot be exported with a dynamic "
                         "batch") from None


def export_onnx(model: nn.Module, path: str | os.PathLike, input_shape: tuple[int, ...] | None = None,
                force: bool = False, opset: int = 17) -> Path:
    """Export to ONNX with a dynamic batch dimension; input named 'input', output 'output'. The file is
    written only after ONNX Runtime answered like the model at batch sizes 1 and 5."""
    from . import spec_of

    path = Path(path)
    check_writable(path, force)
    target = write_target(path)  # a link to a regular file is written through, like every other output
    if input_shape is None:
        spec = spec_of(model)
        if spec is None:
            raise ModelError("export_onnx needs input_shape for a model not built by modelseal")
        input_shape = tuple(spec["input_shape"])
    p = next(model.parameters())
    was = model.training
    model.eval()
    dummy = torch.zeros(2, *input_shape, device=p.device, dtype=p.dtype)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp.onnx")
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
    try:
        _check_onnx(model, tmp, input_shape, p)
    except ModelError:
        tmp.unlink(missing_ok=True)
        raise
    try:
        write_target(target)  # still a regular file (or absent) at the moment of the rename
        os.replace(tmp, target)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise ModelError(f"cannot write {path}: {e.strerror or e}") from None
        raise
    return path
