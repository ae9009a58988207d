"""The model zoo (all ReLU networks with `nn.ReLU` modules) and model files.

`build(name, meta, **kw)` makes a fresh model for a data set's `Meta` (or an `InputSpec` plus
`num_classes=`). Every built model carries `model.modelseal_spec` = {name, kwargs, input_shape,
output_size} so that `save_model` can write it into the safetensors header and `load_model` can rebuild
the architecture without code or pickle.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..errors import ModelError, first_line
from .zoo import ARCHITECTURES

__all__ = ["build", "names", "spec_of", "signature_of", "save_model", "load_model", "export_onnx",
           "model_to_bytes", "model_from_bytes",
           "last_linear", "relu_modules", "reinit"]


def names() -> list[str]:
    return sorted(ARCHITECTURES)


def build(name: str, meta: Any = None, *, input_shape: tuple[int, ...] | None = None,
          num_classes: int | None = None, seed: int | None = None,
          bounds: tuple[float, float] | None = None, **kw: Any) -> nn.Module:
    """A fresh model `name` for inputs of `meta.input_shape` and `meta.num_classes` outputs.

    `seed` fixes the initial weights without touching the global random state. The input bounds
    (from `meta.bounds`, default [0, 1]) are kept in the spec so a saved model knows its input box.
    """
    if name not in ARCHITECTURES:
        raise ModelError(f"unknown architecture '{name}'; known: {', '.join(names())}")
    if meta is not None:
        input_shape = input_shape or tuple(getattr(meta, "input_shape", None) or meta.shape)
        num_classes = num_classes or getattr(meta, "num_classes", None)
        bounds = bounds or getattr(meta, "bounds", None)
    if input_shape is None or num_classes is None:
        raise ModelError(f"build('{name}') needs a Meta, or input_shape= and num_classes=")
    input_shape = tuple(int(s) for s in input_shape)
    ctor: Callable[..., nn.Module] = ARCHITECTURES[name]
    ranks = getattr(ctor, "input_ranks", None)
    if ranks is not None and len(input_shape) not in ranks:
        raise ModelError(f"'{name}' takes image inputs (H, W) or (C, H, W), but this data has inputs of shape "
                         f"{input_shape}; use an architecture for flat inputs such as 'mlp'")
    try:
        if seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = ctor(input_shape, int(num_classes), **kw)
        else:
            model = ctor(input_shape, int(num_classes), **kw)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ModelError(f"cannot build '{name}' for inputs {input_shape} with {kw or 'default options'}: "
                         f"{first_line(e, limit=10_000)}") from None
    # torch's stubs type a Module's attributes as Tensor | Module; the spec is a plain dict
    model.modelseal_spec = {"name": name, "kwargs": dict(kw), "input_shape": list(input_shape),  # type: ignore[assignment]
                            "output_size": int(num_classes),
                            "bounds": [float(b) for b in (bounds or (0.0, 1.0))]}
    return model


def spec_of(model: nn.Module) -> dict[str, Any] | None:
    return getattr(model, "modelseal_spec", None)


def signature_of(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """{input_shape, output_size} of a model: from its spec, else by one forward pass on `input_shape`."""
    spec = spec_of(model)
    if spec is not None:
        return {"input_shape": list(spec["input_shape"]), "output_size": int(spec["output_size"])}
    if input_shape is None:
        raise ModelError("model has no modelseal spec; pass input_shape to compute its signature")
    p = next(model.parameters(), None)
    dev = p.device if p is not None else torch.device("cpu")
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, *input_shape, device=dev))
    model.train(was)
    return {"input_shape": list(input_shape), "output_size": int(out[0].numel())}


def last_linear(model: nn.Module) -> tuple[str, nn.Module]:
    """Name and module of the model's last Linear layer (its classifier head)."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ModelError("model has no nn.Linear layer to act as its last layer")
    return found[-1]


def reinit(module: nn.Module, seed: int) -> None:
    """Re-initialise every sub-module of `module` that can reset itself, reproducibly for `seed`,
    without touching the global random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in module.modules():
            if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
                m.reset_parameters()


def relu_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ReLU)]


from .io import export_onnx, load_model, model_from_bytes, model_to_bytes, save_model  # noqa: E402
