"""What the attacks that train share: their training fields, the one way they call `modelseal.train.fit`,
the attacker-data helpers, and the capture of a model's own outputs for extra loss terms.

Not an attack family: no attack is registered here. Every training attack subclasses `TrainingAttack`, so
its `epochs`, `lr`, `batch_size`, `seed`, `device` and `progress` are declared once (a subclass redeclares
`epochs` or `lr` where its default or meaning differs) and reach `fit` through `fit_kwargs`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .. import validate
from ..data import TensorData, as_tensors, meta_of
from ..schema import batch_param, device_param, param, progress_field, seed_param
from ..train import fit
from . import Attack, AttackError


def require_data(data: Dataset | None, attack: str) -> Dataset:
    """`data` when it is a non-empty map-style dataset, else AttackError naming `attack`."""
    if data is None:
        raise AttackError(f"attack '{attack}' trains and needs data: pass apply(model, data)")
    try:
        n = len(data)  # type: ignore[arg-type]
    except TypeError:
        raise AttackError(f"attack '{attack}' needs a map-style dataset of (x, y), got "
                          f"{type(data).__name__}") from None
    if n == 0:
        raise AttackError(f"attack '{attack}' was given an empty data set")
    return data


def data_fraction(data: Dataset, fraction: float, seed: int) -> Dataset:
    """A seeded random `fraction` of `data` (the data itself when fraction is 1)."""
    if fraction >= 1.0:
        return data
    if isinstance(data, TensorData):
        return data.subset(float(fraction), seed)
    x, y = as_tensors(data)
    k = max(1, min(len(x), int(round(fraction * len(x)))))
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:k]
    return TensorData(x[idx], y[idx], meta_of(data))


def bounds_of(meta: Any) -> tuple[float, float]:
    """The input bounds of a data set's metadata (or input specification); [0, 1] when it declares none."""
    lo, hi = tuple(getattr(meta, "bounds", None) or (0.0, 1.0))
    return float(lo), float(hi)


def _hold_eval(module: nn.Module, _inputs: Any) -> None:
    module.eval()


def train_last_layer(model: nn.Module, head: nn.Module, data: Dataset, **fit_kw: Any) -> dict[str, Any]:
    """Train only `head`: other parameters are frozen and BatchNorm statistics are kept as they are."""
    head_params = {id(p) for p in head.parameters()}
    frozen = [p for p in model.parameters() if id(p) not in head_params and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    # fit puts the whole model in train mode; this keeps BatchNorm layers from updating running stats.
    hooks = [m.register_forward_pre_hook(_hold_eval)
             for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        return fit(model, data, params=list(head.parameters()), **fit_kw)
    finally:
        for h in hooks:
            h.remove()
        for p in frozen:
            p.requires_grad_(True)


class OutputCapture:
    """The model's latest output, kept by a forward hook: `fit` hands an extra loss the batch, not the
    outputs, and running the model a second time would cost a forward pass."""

    def __init__(self, model: nn.Module):
        self.last: dict[str, torch.Tensor] = {}
        self.hook = model.register_forward_hook(lambda _m, _i, o: self.last.__setitem__("out", o))

    def out(self) -> torch.Tensor:
        return self.last["out"].float()

    def remove(self) -> None:
        self.hook.remove()


@contextmanager
def captured(model: nn.Module) -> Iterator[OutputCapture]:
    """An OutputCapture on `model` for the duration of the block."""
    cap = OutputCapture(model)
    try:
        yield cap
    finally:
        cap.remove()


@dataclass
class TrainingAttack(Attack):
    """Base of the attacks that train a model: the training fields, declared once."""

    epochs: int = param(5, "training epochs", lo=0, hi=validate.MAX_EPOCHS)
    lr: float = param(0.001, "learning rate", lo=0, hi=10, lo_open=True)
    batch_size: int = batch_param()
    seed: int = seed_param()
    device: str | None = device_param()
    progress: Any = progress_field()

    def fit_kwargs(self, description: str, **overrides: Any) -> dict[str, Any]:
        """The keyword arguments of `modelseal.train.fit` from this attack's fields; `overrides` win."""
        kw: dict[str, Any] = {"epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size,
                              "seed": self.seed, "device": self.device, "progress": self.progress,
                              "description": description}
        kw.update(overrides)
        return kw

    def attacker_data(self, data: Dataset | None, fraction: float = 1.0) -> Dataset:
        """The seeded `fraction` of the attacker's data this apply trains on, recorded in its cost."""
        used = data_fraction(require_data(data, self.name), fraction, self.seed)
        self.used(examples=len(used))  # type: ignore[arg-type]
        return used


__all__ = ["TrainingAttack", "OutputCapture", "captured", "require_data", "data_fraction", "bounds_of",
           "train_last_layer"]
