"""Data-free weight attacks: k-bit quantization, Gaussian weight noise, collusion by averaging, and the
key-free recovery "reset outliers" against parameter locking.

Papers: uniform affine quantization (Jacob et al., CVPR 2018); averaging colluders' copies (Chen et al.,
DeepMarks, ICMR 2019); weight noise and outlier resetting are the generic attacks of the watermark-
robustness literature (e.g. Uchida et al., ICMR 2017) and of AdvParams' threat model (Xue et al., 2021).

Deviations: quantization is simulated (weights stay float, each tensor takes at most 2**bits values
between its own min and max); noise and outlier resetting act on every floating parameter tensor with
more than one entry, BatchNorm's included; averaging also averages floating buffers (BatchNorm running
statistics) and keeps the input's integer buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from ..schema import param, seed_param
from . import Attack, AttackError, register, require_finite
from .finetune import check_number
from .pruning import prunable


@register("quantize")
@dataclass
class Quantize(Attack):
    """Round each Conv/Linear weight and bias tensor to `bits`-bit uniform levels between its min and max."""

    bits: int = param(8, "bits per weight after quantization", lo=1, hi=32)
    seed: int = seed_param()

    def _apply(self, model: nn.Module, data: Dataset | None = None) -> nn.Module:
        out = self.copy_model(model)
        levels = 2 ** int(self.bits) - 1
        with torch.no_grad():
            for _, m in prunable(out):
                for p in (m.weight, getattr(m, "bias", None)):
                    if isinstance(p, torch.Tensor) and torch.is_floating_point(p) and p.numel() > 0:
                        p.copy_(quantize_tensor(p, levels))
        return out


def quantize_tensor(t: torch.Tensor, levels: int) -> torch.Tensor:
    """`t` rounded to `levels + 1` evenly spaced values from its min to its max (computed in float64)."""
    w = t.detach().double()
    lo, hi = w.min(), w.max()
    if not bool(hi > lo):
        return t.detach().clone()
    scale = (hi - lo) / levels
    return (torch.round((w - lo) / scale) * scale + lo).clamp(lo, hi).to(t.dtype)


@register("noise")
@dataclass
class Noise(Attack):
    """Add Gaussian noise to every floating parameter tensor: std `std`, times the tensor's own std when
    `relative`."""

    std: float = param(0.01, "Gaussian noise std (times the layer's weight std when relative)", lo=0, hi=1e6)
    relative: bool = param(True, "std relative to each layer's weight std (else absolute)")
    seed: int = seed_param()

    def _apply(self, model: nn.Module, data: Dataset | None = None) -> nn.Module:
        out = self.copy_model(model)
        gen = torch.Generator().manual_seed(int(self.seed))
        with torch.no_grad():
            for _, p in out.named_parameters():
                if not torch.is_floating_point(p) or p.numel() < 2:
                    continue
                sigma = float(self.std) * (float(p.detach().float().std()) if self.relative else 1.0)
                noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * sigma
                p.add_(noise.to(p.device, p.dtype))
        return out


@register("average")
@dataclass
class Average(Attack):
    """Collusion: the (weighted) elementwise mean of the model's parameters and floating buffers with those
    of `others`, all of one architecture."""

    others: list = param([], "the other models to average with")
    weights: list | None = param(None, "averaging weights (None: equal)")
    seed: int = seed_param()

    def check(self) -> None:
        if isinstance(self.others, nn.Module):
            self.others = [self.others]
        if not self.others or not all(isinstance(m, nn.Module) for m in self.others):
            raise AttackError("average needs others=[model, ...]: at least one other copy to average with")
        if self.weights is not None:
            ws = list(self.weights)
            for w in ws:
                check_number("each averaging weight", w, 0)
            if len(ws) != len(self.others) + 1:
                raise AttackError(f"average got {len(ws)} weights for {len(self.others) + 1} models; "
                                  "give one weight per model, the attacked model first")
            if sum(ws) <= 0:
                raise AttackError("averaging weights must not all be zero")

    def _apply(self, model: nn.Module, data: Dataset | None = None) -> nn.Module:
        for i, other in enumerate(self.others, 1):
            require_finite(other, f"model {i} to average")
        out = self.copy_model(model)
        models = [out, *self.others]
        ws = [1.0] * len(models) if self.weights is None else [float(w) for w in self.weights]
        total = sum(ws)
        states = [m.state_dict() for m in models]
        base = states[0]
        for i, sd in enumerate(states[1:], 1):
            if set(sd) != set(base):
                diff = sorted(set(sd) ^ set(base))[:3]
                raise AttackError(f"model {i} to average has other layers than the attacked model "
                                  f"(e.g. {diff}); all copies must share one architecture")
            for k, v in sd.items():
                if v.shape != base[k].shape:
                    raise AttackError(f"model {i} to average has '{k}' of shape {tuple(v.shape)}, the "
                                      f"attacked model {tuple(base[k].shape)}; all copies must share one "
                                      "architecture")
        with torch.no_grad():
            for k, v in base.items():
                if not torch.is_floating_point(v):
                    continue
                acc = torch.zeros_like(v, dtype=torch.float64)
                for w, sd in zip(ws, states, strict=True):
                    acc += sd[k].detach().to(v.device, torch.float64) * (w / total)
                v.copy_(acc.to(v.dtype))
        return out


@register("reset-outliers")
@dataclass
class ResetOutliers(Attack):
    """Key-free recovery: in each parameter tensor, reset the values more than `z` standard deviations
    from the tensor's mean to that mean."""

    z: float = param(3.0, "reset weights more than z standard deviations from their layer's mean", lo=0, hi=1e6,
                     lo_open=True)
    seed: int = seed_param()

    def _apply(self, model: nn.Module, data: Dataset | None = None) -> nn.Module:
        out = self.copy_model(model)
        with torch.no_grad():
            for _, p in out.named_parameters():
                if not torch.is_floating_point(p) or p.numel() < 2:
                    continue
                w = p.detach().double()
                mean, std = w.mean(), w.std()
                outliers = (w - mean).abs() > self.z * std
                if bool(outliers.any()):
                    p.copy_(torch.where(outliers, mean, w).to(p.dtype))
        return out


@register("collude")
@dataclass
class Collude(Attack):
    """Collusion of `k` users: the elementwise mean of their `k` distributed copies (`average`)."""

    k: int = param(3, "number of copies averaged", lo=2, hi=1000)
    seed: int = seed_param()

    def check(self) -> None:
        self.k = int(self.k)

    @property
    def copies(self) -> int:  # type: ignore[override]
        return self.k

    def _apply(self, model: nn.Module, data: Dataset | None = None) -> nn.Module:
        raise AttackError(f"collude averages {self.k} distributed copies: call apply_many([copy, ...])")

    def _apply_many(self, models: list[nn.Module], data: Dataset | None = None) -> nn.Module:
        if len(models) != self.k:
            raise AttackError(f"collude k={self.k} needs {self.k} copies, got {len(models)}")
        return Average(others=list(models[1:])).apply(models[0])
