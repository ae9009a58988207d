"""Magnitude pruning (Han et al., NeurIPS 2015) and Fine-Pruning (Liu et al., RAID 2018).

Deviations: pruning is applied directly to the weights (no `torch.nn.utils.prune` re-parametrisation),
so the result is a plain model that saves normally; the sparsity is exact (ties broken by position).
Fine-Pruning prunes the least active channels (neurons) of the last conv layer (else of the penultimate
Linear layer), measured after the first ReLU that follows it, then fine-tunes all layers with the
gradients of the pruned weights masked to zero (with Adam and no weight decay they stay exactly zero;
the mask is re-applied after training as well). The paper prunes until accuracy drops by a set amount;
here the pruned fraction `amount` is given. In residual networks the pruned channels still carry the
skip connection and the following BatchNorm's shift, as they do in any weight-level pruning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .. import validate
from ..data import as_tensors
from ..errors import ModelError
from ..runtime import model_device
from ..schema import param, seed_param
from ..train import fit
from . import Attack, AttackError, register
from .training import TrainingAttack

SCOPES = ("global", "layer")
Layer = nn.modules.conv._ConvNd | nn.Linear  # what pruning acts on


def prunable(model: nn.Module) -> list[tuple[str, Layer]]:
    """The Conv and Linear layers of `model`, whose weights (not biases) magnitude pruning acts on."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and isinstance(m.weight, torch.Tensor)]


@torch.no_grad()
def _zero_smallest(tensors: list[torch.Tensor], amount: float) -> None:
    """Zero exactly round(amount * N) entries of smallest magnitude over `tensors` together, in place.

    Entries already zero are the smallest, so the result has max(that count, zeros before) zeros.
    """
    flat = torch.cat([t.detach().reshape(-1).abs().float().cpu() for t in tensors])
    k = int(round(amount * flat.numel()))
    if k == 0:
        return
    order = torch.argsort(flat, stable=True)
    mask = torch.ones(flat.numel(), dtype=torch.bool)
    mask[order[:k]] = False
    start = 0
    for t in tensors:
        n = t.numel()
        t.mul_(mask[start:start + n].reshape(t.shape).to(t.device, t.dtype))
        start += n


@register("prune")
@dataclass
class Prune(Attack):
    """Set the `amount` fraction of smallest-magnitude Conv/Linear weights to zero, over all such layers
    together (scope='global') or in each layer (scope='layer')."""

    amount: float = param(0.5, "The paper prunes until accuracy drops by a set amount; here the pruned fraction "
                          "`amount` is given", lo=0, hi=1, hi_open=True)
    scope: str = param('global', "global: one magnitude threshold over all layers; layer: the same share in every "
                       "layer", choices=SCOPES)
    seed: int = seed_param()

    def _apply(self, model: nn.Module, data: Dataset | None = None) -> nn.Module:
        out = self.copy_model(model)
        weights = [m.weight for _, m in prunable(out)]
        if not weights:
            raise AttackError("the model has no Conv or Linear layer to prune")
        if self.scope == "global":
            _zero_smallest(weights, self.amount)
        else:
            for w in weights:
                _zero_smallest([w], self.amount)
        return out


def _target_layer(model: nn.Module) -> tuple[str, Layer]:
    """The last conv layer, or the penultimate Linear layer when the model has no convolution."""
    layers = prunable(model)
    convs = [(n, m) for n, m in layers if isinstance(m, nn.modules.conv._ConvNd)]
    if convs:
        return convs[-1]
    linears = [(n, m) for n, m in layers if isinstance(m, nn.Linear)]
    if len(linears) < 2:
        raise AttackError("fine-pruning needs a conv layer or at least two Linear layers")
    return linears[-2]


def _channels_of(layer: Layer) -> int:
    return int(layer.out_channels if isinstance(layer, nn.modules.conv._ConvNd) else layer.out_features)


@torch.no_grad()
def mean_activation(model: nn.Module, layer_name: str, x: torch.Tensor,
                    batch_size: int = 256) -> torch.Tensor:
    """Mean activation per channel of `layer_name`, read at the first ReLU after it (else relu of its
    output), over `x` (and over spatial positions)."""
    names = [n for n, _ in model.named_modules()]
    modules = dict(model.named_modules())
    layer = modules[layer_name]
    channels = _channels_of(layer)
    after = names[names.index(layer_name) + 1:]
    relu = next((modules[n] for n in after if isinstance(modules[n], nn.ReLU)), None)
    sums: list[torch.Tensor] = []

    def record(_m: nn.Module, _inp: Any, out: torch.Tensor, apply_relu: bool) -> None:
        if out.dim() < 2 or out.shape[1] != channels:
            return
        a = out.float().clamp_min(0) if apply_relu else out.float()
        sums.append(a.transpose(0, 1).reshape(channels, -1).mean(1) * len(out))

    # Reading at the ReLU needs its output to have the layer's channels; otherwise read the layer itself.
    hooks = [layer.register_forward_hook(lambda m, i, o: record(m, i, o, True))]
    if relu is not None:
        hooks.append(relu.register_forward_hook(lambda m, i, o: record(m, i, o, False)))
    dev = model_device(model)
    was = model.training
    model.eval()
    total = torch.zeros(channels)
    try:
        for i in range(0, len(x), batch_size):
            sums.clear()
            model(x[i:i + batch_size].to(dev))
            if sums:  # the last record is the ReLU's when it matched, else the layer's own
                total += sums[-1].cpu()
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return total / max(len(x), 1)


@register("fine-prune")
@dataclass
class FinePrune(TrainingAttack):
    """Prune the `amount` fraction of least active channels of the last conv (or penultimate Linear)
    layer on the attacker's clean data, then fine-tune all layers keeping them pruned."""

    amount: float = param(0.5, "The paper prunes until accuracy drops by a set amount; here the pruned fraction "
                          "`amount` is given", lo=0, hi=1, hi_open=True)
    epochs: int = param(2, "fine-tuning epochs after pruning", lo=0, hi=validate.MAX_EPOCHS)
    lr: float = param(0.001, "learning rate of that fine-tuning", lo=0, hi=10, lo_open=True)

    def pruned_channels(self, model: nn.Module, data: Dataset) -> tuple[str, list[int]]:
        """Name of the layer fine-pruning acts on and the channels it prunes (least active first)."""
        name, layer = _target_layer(model)
        x, _ = as_tensors(data)
        act = mean_activation(model, name, x)
        k = int(round(self.amount * _channels_of(layer)))
        order = torch.argsort(act, stable=True)
        return name, sorted(int(c) for c in order[:k])

    def _apply(self, model: nn.Module, data: Dataset | None = None) -> nn.Module:
        data = self.attacker_data(data)
        out = self.copy_model(model)
        try:
            name, channels = self.pruned_channels(out, data)
        except ModelError as e:
            raise AttackError(str(e)) from None
        layer = dict(out.named_modules())[name]
        masks: list[tuple[nn.Parameter, torch.Tensor]] = []
        for p in (layer.weight, getattr(layer, "bias", None)):
            if isinstance(p, nn.Parameter):
                m = torch.ones_like(p)
                m[channels] = 0
                masks.append((p, m))
        with torch.no_grad():
            for p, m in masks:
                p.mul_(m)
        hooks = [p.register_hook(lambda g, m=m: g * m.to(g.device, g.dtype)) for p, m in masks]
        try:
            if self.epochs > 0:
                fit(out, data, **self.fit_kwargs("attack fine-prune"))
        finally:
            for h in hooks:
                h.remove()
        with torch.no_grad():
            for p, m in masks:
                p.mul_(m.to(p.device, p.dtype))
        return out
