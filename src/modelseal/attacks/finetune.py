"""Fine-tuning attacks FTLL / FTAL / RTLL / RTAL (Adi et al., USENIX Security 2018, "Turning your weakness
into a strength").

Deviations: the attacker's data is any map-style dataset, of which a seeded `fraction` is used (this also
covers the key-free recovery "fine-tune with 1/5/10 % of the data"); training goes through
`modelseal.train.fit` with Adam. In the last-layer modes BatchNorm layers are held in eval mode so that
nothing but the head changes (the paper's models had no BatchNorm to worry about).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .. import validate
from ..data import TensorData, as_tensors, meta_of
from ..models import last_linear, reinit
from ..schema import batch_param, device_param, param, progress_field, seed_param
from ..train import fit
from . import Attack, AttackError, register

MODES = ("ftll", "ftal", "rtll", "rtal")


def check_number(name: str, value: Any, lo: float | None = None, hi: float | None = None, *,
                 lo_open: bool = False, hi_open: bool = False, integer: bool = False) -> None:
    """Raise AttackError unless `value` is a (finite) number in the given range."""
    validate.number(name, value, lo, hi, lo_open=lo_open, hi_open=hi_open, integer=integer, error=AttackError)


def require_data(data: Dataset | None, attack: str) -> Dataset:
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


@register("finetune")
@dataclass
class FineTune(Attack):
    """Fine-tune the last layer (ftll) or all layers (ftal), optionally after re-initialising the last
    layer (rtll, rtal), on a `fraction` of the attacker's data."""

    mode: str = param('ftal', "ftll/ftal: fine-tune last layer / all layers; rtll/rtal: re-initialise the last layer "
                      "first", choices=MODES)
    epochs: int = param(5, "fine-tuning epochs", lo=0, hi=validate.MAX_EPOCHS)
    lr: float = param(0.001, "learning rate (Adam)", lo=0, hi=10, lo_open=True)
    fraction: float = param(1.0, "share of the attacker's data used (seeded)", lo=0, hi=1, lo_open=True)
    batch_size: int = batch_param()
    seed: int = seed_param()
    device: str | None = device_param()
    progress: Any = progress_field()

    def apply(self, model: nn.Module, data: Dataset | None = None) -> nn.Module:
        data = data_fraction(require_data(data, self.name), self.fraction, self.seed)
        self.used(examples=len(data))
        out = self.copy_model(model)
        _, head = last_linear(out)
        if self.mode.startswith("rt"):
            reinit(head, self.seed)
        if self.mode.endswith("ll"):
            train_last_layer(out, head, data, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                             seed=self.seed, device=self.device, progress=self.progress,
                             description=f"attack {self.mode}")
        else:
            fit(out, data, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, seed=self.seed,
                device=self.device, progress=self.progress, description=f"attack {self.mode}")
        return out


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
