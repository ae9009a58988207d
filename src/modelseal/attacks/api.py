"""Extraction attacks aimed at an API watermark (`modelseal.guard`, DAWN-style keyed changed answers).

Each is a Knockoff-style extraction through a Suspect (`takes_suspect`) with one change meant to keep the
student from learning the keyed answers:

- `vote` (augmentation-consistency voting, the query deduplication DAWN discusses): every pool input is
  asked `copies_per_input` times as noisy copies (x + N(0, sigma^2), clipped to the input box; the first copy
  is the input itself when `include_original`), the answers' scores averaged and the majority (top) class
  kept; costs `copies_per_input` queries per input. A keyed change hits each copy independently, so the
  majority survives it.
- `smooth-labels`: label smoothing of the answers before training (target = (1 - eps) * answer + eps / C).
- `ensemble-distill`: two APIs (`copies = 2`: `apply_many([suspect_a, suspect_b], data)`) asked the same
  inputs, their soft answers averaged; a keyed answer of one is outvoted when the other disagrees.
- `adv-student`: the student trains on its own FGSM/PGD examples (`eps`, `steps`) of every batch as well as
  the clean ones, labelled with the answers (Madry et al. 2018 adversarial training; no extra queries).

`modelseal.guard.attack_benchmark(...)` (used by benchmarks/guard.py) runs each against a guarded owner and
judges the students with `guard.verify` (attacks know nothing of protections, so it lives there). The cost of
every run is recorded by `Attack.run` (queries, examples, wall seconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..data import TensorData, as_tensors, meta_of
from ..schema import param
from ..suspect import Suspect
from ..train import fit
from . import AttackError, register
from .extraction import _Extraction, _Lookup, as_suspect
from .training import bounds_of, captured, require_data


@register("vote")
@dataclass
class Vote(_Extraction):
    """Augmentation-consistency voting: ask `copies_per_input` noisy copies (noise `sigma`) of each of
    `queries` pool inputs, average their scores and train the student on the majority answers."""

    copies_per_input: int = param(5, "noisy copies asked per input", lo=1, hi=100)
    sigma: float = param(0.05, "standard deviation of the copies' noise (input units)", lo=0, hi=10)
    include_original: bool = param(True, "the first copy is the input itself")

    def select(self, suspect: Suspect, pool: torch.Tensor, meta: Any) -> tuple[torch.Tensor, torch.Tensor]:
        k = min(int(self.queries), len(pool))
        gen = torch.Generator().manual_seed(int(self.seed))
        x = pool[torch.randperm(len(pool), generator=gen)[:k]]
        lo, hi = bounds_of(meta)
        total: torch.Tensor | None = None
        for c in range(int(self.copies_per_input)):
            xc = x if (c == 0 and self.include_original) else \
                (x + float(self.sigma) * torch.randn(x.shape, generator=gen)).clamp(lo, hi)
            soft = self.ask(suspect, xc)
            if total is not None and soft.shape[1] != total.shape[1]:  # one-hot codes of label answers
                w = max(soft.shape[1], total.shape[1])
                soft, total = F.pad(soft, (0, w - soft.shape[1])), F.pad(total, (0, w - total.shape[1]))
            total = soft if total is None else total + soft
        assert total is not None
        votes = total / int(self.copies_per_input)
        return x, F.one_hot(votes.argmax(1), votes.shape[1]).float()


@register("smooth-labels")
@dataclass
class SmoothLabels(_Extraction):
    """Label smoothing of the answers before training: target = (1 - `smoothing`) * answer + `smoothing` / C."""

    smoothing: float = param(0.3, "label smoothing eps", lo=0, hi=1, hi_open=True)

    def select(self, suspect: Suspect, pool: torch.Tensor, meta: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x, soft = super().select(suspect, pool, meta)
        c = soft.shape[1]
        return x, (1 - float(self.smoothing)) * soft + float(self.smoothing) / c


@register("ensemble-distill")
@dataclass
class EnsembleDistill(_Extraction):
    """Ensemble distillation from two APIs: the same `queries` pool inputs sent to both suspects
    (`apply_many([a, b], data)`), the student trained on the average of their soft answers."""

    copies = 2

    def _apply(self, model: Any, data: Dataset | None = None) -> nn.Module:
        raise AttackError("ensemble-distill averages two APIs: call apply_many([suspect_a, suspect_b], data)")

    def _apply_many(self, models: list[Any], data: Any = None) -> nn.Module:
        data = require_data(data, self.name)
        a, b = as_suspect(models[0]), as_suspect(models[1])
        pool, _ = as_tensors(data)
        meta = meta_of(data)
        x, soft_a = self.select(a, pool, meta)
        soft_b = self.ask(b, x)
        w = max(soft_a.shape[1], soft_b.shape[1], int(getattr(meta, "num_classes", 0) or 0))
        soft = (F.pad(soft_a, (0, w - soft_a.shape[1])) + F.pad(soft_b, (0, w - soft_b.shape[1]))) / 2
        self.used(examples=len(x))
        return self.fit_student(a, x, soft, w, meta)


@register("adv-student")
@dataclass
class AdversarialStudent(_Extraction):
    """Adversarial training of the student: each batch also trains on the student's own PGD examples
    (`steps` of size eps / steps within an L-inf ball of `eps`; `steps=1` is FGSM), labelled with the answers."""

    eps: float = param(0.05, "L-inf radius of the student's adversarial examples", lo=0, hi=10, lo_open=True)
    steps: int = param(1, "PGD steps (1: FGSM)", lo=1, hi=100)

    def train_student(self, student: nn.Module, x: torch.Tensor, soft: torch.Tensor, description: str) -> None:
        lookup = _Lookup(x, soft, int(self.seed))
        lo, hi = self.__dict__.get("_bounds", (0.0, 1.0))
        eps, steps = float(self.eps), int(self.steps)

        def ce(m: nn.Module, xb: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return -(target * F.log_softmax(m(xb).float(), 1)).sum(1).mean()

        with captured(student) as out:
            def extra(m: nn.Module, xb: torch.Tensor, _yb: torch.Tensor) -> torch.Tensor:
                target = lookup(xb)
                clean = -(target * F.log_softmax(out.out(), 1)).sum(1).mean()
                xa = xb.detach().clone()
                for _ in range(steps):
                    xa.requires_grad_(True)
                    (grad,) = torch.autograd.grad(ce(m, xa, target), xa)
                    xa = (xa.detach() + (eps / steps) * grad.sign())
                    xa = torch.min(torch.max(xa, xb - eps), xb + eps).clamp(lo, hi).detach()
                return clean + ce(m, xa, target)

            fit(student, TensorData(x, soft.argmax(1)), **self.fit_kwargs(description, extra_loss=extra))

    def _apply(self, model: Any, data: Dataset | None = None) -> nn.Module:
        self.__dict__["_bounds"] = bounds_of(meta_of(require_data(data, self.name)))
        return super()._apply(model, data)


__all__ = ["Vote", "SmoothLabels", "EnsembleDistill", "AdversarialStudent"]
