"""Unlearning after trigger recovery: Neural Cleanse and Neural Dehydration.

Papers: Wang et al., "Neural Cleanse: Identifying and Mitigating Backdoor Attacks in Neural Networks"
(S&P 2019): reverse-engineer a minimal mask and pattern that sends inputs to each class, flag classes whose
mask norm is anomalously small (median absolute deviation), and unlearn by fine-tuning on clean inputs
stamped with the recovered trigger under their true labels. Lu et al., "Neural Dehydration: Effective
Erasure of Black-box Watermarks from DNNs with Limited Data" (CCS 2024): invert the model per class to
recover watermark-like inputs, then unlearn them while keeping the task on a small clean set.

Deviations: Neural Cleanse optimises each class's trigger for `steps` Adam steps with a fixed L1 weight
`l1` (the paper adapts it), and unlearns the `classes` classes with the smallest anomaly score whatever their
index (the paper only those with index > 2), stamping `stamp_rate` of the clean inputs. Dehydration inverts
`per_class` inputs per class from noise for `steps` steps (cross-entropy towards the class plus a total-
variation prior) and unlearns by fine-tuning on a `fraction` of the attacker's labelled data while pushing
the model's answers on the inverted inputs towards uniform (weight `unlearn`); the paper's target-class
identification and split of the inverted samples are left out, so every class's inversions are unlearned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from .. import validate
from ..data import TensorData, as_tensors, meta_of
from ..runtime import model_device, track
from ..schema import param
from ..train import fit
from . import register
from .training import TrainingAttack, bounds_of


def _frozen(model: nn.Module) -> list[tuple[nn.Parameter, bool]]:
    state = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in state:
        p.requires_grad_(False)
    model.eval()
    return state


def _thaw(state: list[tuple[nn.Parameter, bool]]) -> None:
    for p, r in state:
        p.requires_grad_(r)


def _classes(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(x[:1].to(model_device(model))).shape[1])


@register("neural-cleanse")
@dataclass
class NeuralCleanse(TrainingAttack):
    """Reverse-engineer a trigger (mask and pattern) per class for `steps` steps, then fine-tune for `epochs`
    on a `fraction` of the attacker's data with `stamp_rate` of it stamped with the triggers of the
    `classes` most anomalous classes, under the true labels."""

    steps: int = param(100, "optimisation steps", lo=1, hi=validate.MAX_STEPS)
    l1: float = param(0.01, "weight of the mask's L1 norm in the trigger search", lo=0, hi=1000.0)
    classes: int = param(1, "how many of the most anomalous classes are unlearned", lo=1, hi=100000)
    stamp_rate: float = param(0.2, "fraction of the fine-tuning inputs stamped with a recovered trigger", lo=0, hi=1)
    epochs: int = param(2, "training epochs", lo=0, hi=validate.MAX_EPOCHS)
    fraction: float = param(1.0, "fraction of the attacker's labelled data used", lo=0, hi=1, lo_open=True)

    def reverse(self, model: nn.Module, x: torch.Tensor, bounds: tuple[float, float]) -> tuple[list, torch.Tensor]:
        """Per class: (mask, pattern), and the L1 norms of the masks."""
        dev = model_device(model)
        lo, hi = bounds
        n_cls = _classes(model, x)
        gen = torch.Generator().manual_seed(int(self.seed))
        state = _frozen(model)
        triggers, norms = [], []
        try:
            with track(self.progress, n_cls, "attack neural-cleanse: reverse triggers") as bar:
                for t in range(n_cls):
                    # one mask over the pixels (shared by the channels) of images; one per feature otherwise
                    m = torch.full((1, *(x.shape[2:] if x.dim() >= 4 else x.shape[1:])), -3.0, device=dev)
                    p = torch.zeros(1, *x.shape[1:], device=dev)
                    m.requires_grad_(True)
                    p.requires_grad_(True)
                    opt = torch.optim.Adam([m, p], lr=0.1)
                    target = torch.full((min(len(x), 128),), t, device=dev, dtype=torch.long)
                    for _ in range(int(self.steps)):
                        idx = torch.randint(0, len(x), (len(target),), generator=gen)
                        xb = x[idx].to(dev)
                        mask = torch.sigmoid(m)
                        pattern = lo + (hi - lo) * torch.sigmoid(p)
                        stamped = (1 - mask) * xb + mask * pattern
                        loss = F.cross_entropy(model(stamped).float(), target) + float(self.l1) * mask.sum()
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
                    mask = torch.sigmoid(m).detach()
                    triggers.append((mask, (lo + (hi - lo) * torch.sigmoid(p)).detach()))
                    norms.append(float(mask.sum()))
                    bar.advance()
        finally:
            _thaw(state)
        return triggers, torch.tensor(norms)

    def _apply(self, model: nn.Module, data: Dataset | None = None) -> nn.Module:
        data = self.attacker_data(data, self.fraction)
        x, y = as_tensors(data)
        meta = meta_of(data)
        bounds = bounds_of(meta)
        out = self.copy_model(model)
        triggers, norms = self.reverse(out, x, bounds)
        med = norms.median()
        mad = (norms - med).abs().median() * 1.4826 + 1e-12
        anomaly = (med - norms) / mad  # small masks are the suspicious ones
        chosen = torch.argsort(anomaly, descending=True)[: int(self.classes)].tolist()
        self.used(unlearned_classes={str(c): round(float(anomaly[c]), 3) for c in chosen})
        gen = torch.Generator().manual_seed(int(self.seed) + 1)
        stamp = torch.rand(len(x), generator=gen) < float(self.stamp_rate)
        which = torch.randint(0, len(chosen), (len(x),), generator=gen)
        xs = x.clone()
        for j, c in enumerate(chosen):
            sel = stamp & (which == j)
            mask, pattern = (t.cpu() for t in triggers[c])
            xs[sel] = (1 - mask) * x[sel] + mask * pattern
        if self.epochs > 0:
            fit(out, TensorData(xs, y, meta), **self.fit_kwargs("attack neural-cleanse"))
        return out


def _tv(x: torch.Tensor) -> torch.Tensor:
    if x.dim() < 4:
        return torch.zeros((), device=x.device)
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


@register("dehydrate")
@dataclass
class Dehydrate(TrainingAttack):
    """Neural Dehydration: invert `per_class` inputs per class for `steps` steps, then fine-tune for
    `epochs` on a `fraction` of the attacker's labelled data while pushing the answers on the inverted
    inputs towards uniform (weight `unlearn`)."""

    per_class: int = param(10, "inverted inputs per class", lo=1, hi=10000)
    steps: int = param(100, "optimisation steps", lo=1, hi=validate.MAX_STEPS)
    tv: float = param(0.05, "weight of the total-variation prior of the inversion", lo=0, hi=1000.0)
    unlearn: float = param(1.0, "weight of the unlearning term (answers on inverted inputs pushed to uniform)", lo=0,
                           hi=1000.0)
    epochs: int = param(3, "training epochs", lo=0, hi=validate.MAX_EPOCHS)
    fraction: float = param(0.1, "fraction of the attacker's labelled data used", lo=0, hi=1, lo_open=True)

    def invert(self, model: nn.Module, shape: tuple[int, ...], n_cls: int, bounds: tuple[float, float]) -> torch.Tensor:
        dev = model_device(model)
        lo, hi = bounds
        gen = torch.Generator().manual_seed(int(self.seed))
        k = int(self.per_class)
        z = torch.randn(n_cls * k, *shape, generator=gen).to(dev).requires_grad_(True)
        target = torch.arange(n_cls, device=dev).repeat_interleave(k)
        state = _frozen(model)
        try:
            opt = torch.optim.Adam([z], lr=0.1)
            with track(self.progress, int(self.steps), "attack dehydrate: invert") as bar:
                for _ in range(int(self.steps)):
                    xi = lo + (hi - lo) * torch.sigmoid(z)
                    loss = F.cross_entropy(model(xi).float(), target) + float(self.tv) * _tv(xi)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    bar.advance()
        finally:
            _thaw(state)
        return (lo + (hi - lo) * torch.sigmoid(z)).detach()

    def _apply(self, model: nn.Module, data: Dataset | None = None) -> nn.Module:
        data = self.attacker_data(data, self.fraction)
        x, _ = as_tensors(data)
        bounds = bounds_of(meta_of(data))
        out = self.copy_model(model)
        n_cls = _classes(out, x)
        inverted = self.invert(out, tuple(x.shape[1:]), n_cls, bounds)
        weight = float(self.unlearn)
        gen = torch.Generator().manual_seed(int(self.seed) + 1)

        def extra(m: nn.Module, xb: torch.Tensor, _yb: torch.Tensor) -> torch.Tensor:
            idx = torch.randint(0, len(inverted), (min(len(inverted), len(xb)),), generator=gen)
            logp = F.log_softmax(m(inverted[idx.to(inverted.device)]).float(), 1)
            return weight * (-logp.mean(1)).mean()  # cross-entropy towards the uniform answer

        if self.epochs > 0:
            fit(out, data, **self.fit_kwargs("attack dehydrate", extra_loss=extra))
        return out
