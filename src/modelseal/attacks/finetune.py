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

from torch import nn
from torch.utils.data import Dataset

from .. import validate
from ..models import last_linear, reinit
from ..schema import param
from ..train import fit
from . import AttackError, register
from .training import TrainingAttack, train_last_layer

MODES = ("ftll", "ftal", "rtll", "rtal")


def check_number(name: str, value: Any, lo: float | None = None, hi: float | None = None, *,
                 lo_open: bool = False, hi_open: bool = False, integer: bool = False) -> None:
    """Raise AttackError unless `value` is a (finite) number in the given range."""
    validate.number(name, value, lo, hi, lo_open=lo_open, hi_open=hi_open, integer=integer, error=AttackError)


@register("finetune")
@dataclass
class FineTune(TrainingAttack):
    """Fine-tune the last layer (ftll) or all layers (ftal), optionally after re-initialising the last
    layer (rtll, rtal), on a `fraction` of the attacker's data."""

    mode: str = param('ftal', "ftll/ftal: fine-tune last layer / all layers; rtll/rtal: re-initialise the last layer "
                      "first", choices=MODES)
    epochs: int = param(5, "fine-tuning epochs", lo=0, hi=validate.MAX_EPOCHS)
    lr: float = param(0.001, "learning rate (Adam)", lo=0, hi=10, lo_open=True)
    fraction: float = param(1.0, "share of the attacker's data used (seeded)", lo=0, hi=1, lo_open=True)

    def _apply(self, model: nn.Module, data: Dataset | None = None) -> nn.Module:
        data = self.attacker_data(data, self.fraction)
        out = self.copy_model(model)
        _, head = last_linear(out)
        if self.mode.startswith("rt"):
            reinit(head, self.seed)
        if self.mode.endswith("ll"):
            train_last_layer(out, head, data, **self.fit_kwargs(f"attack {self.mode}"))
        else:
            fit(out, data, **self.fit_kwargs(f"attack {self.mode}"))
        return out
