"""Output transforms: what a serving API returns instead of the model's raw outputs (query-side).

Papers: returning probabilities, top-k scores, rounded scores or labels only (Tramèr et al., "Stealing
Machine Learning Models via Prediction APIs", USENIX Security 2016); noise on the outputs (Orekondy et al.,
"Prediction Poisoning", ICLR 2020, noise baseline); the reverse-sigmoid perturbation (Lee et al.,
"Defending Against NN Model Stealing Attacks Using Deceptive Perturbations", S&P Workshops 2019). The same
transforms are ART's postprocessors (ClassLabels, Rounded, HighConfidence, GaussianNoise, ReverseSigmoid).

Deviations: every transform takes the model's raw outputs (logits) of a classifier (N x C); probabilities
are softmax(logits). `keeps_argmax` says whether a transform promises the top class of every answer: the
rounding transform keeps that promise by lifting the top class by one unit of the last decimal when rounding
would tie or reorder it (an API that returns rounded scores would otherwise change labels). Noise comes
from one generator seeded by `seed`. The reverse sigmoid follows ART's formula (beta, gamma; renormalised).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..schema import param, seed_param
from ..suspect import Suspect
from . import Attack, AttackError, register
from .inputs import wrapped_suspect


def _logits(out: torch.Tensor, name: str) -> torch.Tensor:
    if out.dim() != 2 or out.shape[1] < 2 or not torch.is_floating_point(out):
        raise AttackError(f"{name} transforms the class scores of a classifier (N x C outputs), got outputs of "
                          f"shape {tuple(out.shape)}")
    return out.float()


class OutputTransform(Attack):
    """Base of the output transforms: `transform(logits, gen)` is what the API answers."""

    acts_on = "queries"
    keeps_argmax = True

    def transform(self, out: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - interface

    def _apply(self, model: nn.Module, data: Any = None) -> nn.Module:
        """The model is not changed (its answers are): returns it as it is."""
        return model

    def wrap(self, suspect: Suspect, meta: Any = None) -> Suspect:
        """The suspect whose answers are `transform` of `suspect`'s raw outputs."""
        gen = torch.Generator().manual_seed(int(self.seed))
        return wrapped_suspect(self, suspect, lambda x: self.transform(_logits(suspect.predict(x), self.name), gen))


@register("softmax")
@dataclass
class Softmax(OutputTransform):
    """Answer probabilities softmax(logits) instead of logits."""

    seed: int = seed_param()

    def transform(self, out: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return torch.softmax(out, 1)


@register("temperature")
@dataclass
class Temperature(OutputTransform):
    """Answer softmax(logits / `temperature`): flatter (> 1) or sharper (< 1) probabilities."""

    temperature: float = param(5.0, "softmax temperature", lo=0, hi=1000000.0, lo_open=True)
    seed: int = seed_param()

    def transform(self, out: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return torch.softmax(out / float(self.temperature), 1)


@register("top-k")
@dataclass
class TopK(OutputTransform):
    """Answer the `k` highest probabilities, every other class 0 (renormalised to sum 1 when `renormalize`)."""

    k: int = param(1, "number of top classes answered", lo=1, hi=100000)
    renormalize: bool = param(False, "rescale the kept probabilities to sum 1")
    seed: int = seed_param()

    def transform(self, out: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        p = torch.softmax(out, 1)
        k = min(int(self.k), p.shape[1])
        idx = p.topk(k, dim=1).indices
        res = torch.zeros_like(p).scatter(1, idx, p.gather(1, idx))
        return res / res.sum(1, keepdim=True) if self.renormalize else res


@register("round")
@dataclass
class Round(OutputTransform):
    """Answer probabilities rounded to `decimals` decimals (the top class kept on top)."""

    decimals: int = param(2, "decimals the probabilities are rounded to", lo=0, hi=8)
    seed: int = seed_param()

    def transform(self, out: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        p = torch.softmax(out.double(), 1)
        scale = 10.0 ** int(self.decimals)
        r = torch.round(p * scale)
        top = p.argmax(1)
        rows = torch.arange(len(p))
        others = r.clone()
        others[rows, top] = -1
        # lift the top class by one unit where rounding made it tie with (or fall below) another class
        clash = others.max(1).values >= r[rows, top]
        r[rows[clash], top[clash]] = others.max(1).values[clash] + 1
        return (r / scale).float()


@register("label-only")
@dataclass
class LabelOnly(OutputTransform):
    """Answer the top class only, as a one-hot vector."""

    seed: int = seed_param()

    def transform(self, out: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return torch.zeros_like(out).scatter(1, out.argmax(1, keepdim=True), 1.0)


@register("logit-noise")
@dataclass
class LogitNoise(OutputTransform):
    """Add Gaussian noise of standard deviation `std` to the logits (times each answer's logit standard
    deviation when `relative`)."""

    std: float = param(0.2, "standard deviation of the noise", lo=0, hi=1000000.0)
    relative: bool = param(False, "scale the noise by each answer's logit standard deviation")
    seed: int = seed_param()
    keeps_argmax = False

    def transform(self, out: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        scale = out.std(1, keepdim=True) if self.relative else 1.0
        return out + torch.randn(out.shape, generator=gen) * float(self.std) * scale


@register("prob-noise")
@dataclass
class ProbNoise(OutputTransform):
    """Add Gaussian noise of standard deviation `std` to the probabilities, clip at 0 and renormalise."""

    std: float = param(0.05, "standard deviation of the noise", lo=0, hi=10)
    seed: int = seed_param()
    keeps_argmax = False

    def transform(self, out: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        p = torch.softmax(out, 1) + torch.randn(out.shape, generator=gen) * float(self.std)
        p = p.clamp_min(0) + 1e-12
        return p / p.sum(1, keepdim=True)


@register("reverse-sigmoid")
@dataclass
class ReverseSigmoid(OutputTransform):
    """The reverse-sigmoid perturbation of the probabilities (Lee et al.): `beta` its size, `gamma` its
    slope; the top class may change."""

    beta: float = param(1.0, "size of the reverse-sigmoid perturbation", lo=0, hi=1000.0)
    gamma: float = param(0.1, "slope of the reverse sigmoid", lo=0, hi=1000.0, lo_open=True)
    seed: int = seed_param()
    keeps_argmax = False

    def transform(self, out: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        eps = 1e-9
        p = torch.softmax(out.double(), 1).clamp(eps, 1 - eps)
        r = float(self.beta) * (torch.sigmoid(-float(self.gamma) * torch.log((1 - p) / p)) - 0.5)
        q = (p - r).clamp(0, 1)
        total = q.sum(1, keepdim=True)
        q = torch.where(total > 0, q / total.clamp_min(1e-300), torch.full_like(q, 1.0 / q.shape[1]))
        return q.float()
