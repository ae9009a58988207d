"""`overwrite`: the attacker embeds their own trigger-set watermark into the protected model, trained on the
attacker's split, hoping to drown the owner's mark. It composes a protection, so it lives in the bench, and
registers in the one attack registry (`modelseal.attacks.get("overwrite")`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..attacks import Attack, AttackError, register
from ..schema import param, seed_param


@register("overwrite")
@dataclass
class Overwrite(Attack):
    """Embed the attacker's own trigger-set mark (`n` triggers) into `model` with the attacker's data."""

    n: int = param(50, "trigger images of the attacker's own watermark", lo=1, hi=10000)
    extra_epochs: int = param(1, "epochs trained on after the attacker's triggers are learned", lo=0, hi=1000)
    seed: int = seed_param()

    def _apply(self, model: nn.Module, data: Any = None) -> nn.Module:
        from .. import methods

        if data is None:
            raise AttackError("overwrite needs the attacker's data")
        self.used(examples=len(data))
        # The attacker's seed must differ from any owner seed: offset it far away.
        # the default watermark (the paper's attacker embeds a trigger set); its own schema declares these parameters
        watermark: Any = methods.get(methods.default("watermark"))
        marker = watermark(n=int(self.n), extra_epochs=int(self.extra_epochs), seed=self.seed + 7919)
        marked, _ = marker.embed(model, data, progress=self.progress)
        return marked
