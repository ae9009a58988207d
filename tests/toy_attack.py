"""A toy attack, one file with its schema: scales the last layer's weights by `factor` (labels unchanged for a
positive factor). Importing this module registers it; nothing else in modelseal knows it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from modelseal import attacks
from modelseal.models import last_linear
from modelseal.schema import param, seed_param

NAME = "test-scale-head"


@attacks.register(NAME)
@dataclass
class ScaleHead(attacks.Attack):
    """Toy attack: multiply the last linear layer by a positive factor."""

    factor: float = param(2.0, "factor the last layer's weights and bias are multiplied by", lo=0, hi=100,
                          lo_open=True)
    seed: int = seed_param()

    def _apply(self, model, data=None):
        out = self.copy_model(model)
        _, head = last_linear(out)
        with torch.no_grad():
            head.weight.mul_(self.factor)
            if head.bias is not None:
                head.bias.mul_(self.factor)
        return out
