"""Model modification beyond the basic fine-tuning and pruning attacks: structured pruning with a maintained
library, function-preserving neuron permutation, regularised fine-tuning, and REFIT.

Papers: structured (channel/neuron) pruning with dependency graphs (Fang et al., "DepGraph", CVPR 2023; the
torch-pruning library, magnitude or first-order Taylor importance); neuron permutation and positive rescaling
as attacks on white-box marks (Lukas et al., S&P 2022; Yan et al., "Rethinking White-Box Watermarks on Deep
Learning Models under Neural Structural Obfuscation", USENIX Security 2023); fine-tuning with label smoothing
and weight decay (WRT's "regularisation" attacks); REFIT (Chen et al., "REFIT: A Unified Watermark Removal
Framework For Deep Learning Systems With Limited Data", AsiaCCS 2021: a large-learning-rate schedule, elastic
weight consolidation (Kirkpatrick et al., PNAS 2017) and augmentation with unlabeled data).

Deviations: structured pruning removes the `amount` fraction of the output channels/neurons of every Conv
and Linear layer except the classifier head (torch-pruning's MetaPruner, one step), so the result is a
smaller model of another architecture; it then fine-tunes for `epochs`. Permutation handles networks whose
Conv/Linear layers form one chain (the zoo's mlp and cnn; BatchNorm between them is permuted too), and the
inner units of the zoo's residual and transformer blocks (ResNet-18, WRN, transformer: the residual stream is
left as it is), and checks that the outputs are unchanged (within float rounding) before returning; other networks are
refused. REFIT's schedule here is SGD (momentum 0.9) with the learning rate halved each epoch from `lr`;
its EWC Fisher is the empirical diagonal from the model's own predicted labels on the attacker's data, and
its unlabeled data are the attacker's inputs beyond the labelled `fraction`, labelled by the model itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from .. import models, validate
from ..data import TensorData, as_tensors, meta_of
from ..runtime import model_device
from ..schema import param, seed_param
from ..train import fit, predict
from . import Attack, AttackError, register
from .pruning import Layer, prunable
from .training import TrainingAttack, captured, require_data

IMPORTANCE = ("magnitude", "taylor")


def _example_input(model: nn.Module, data: Dataset | None) -> torch.Tensor:
    spec = models.spec_of(model)
    if spec is not None:
        shape = tuple(spec["input_shape"])
    elif data is not None:
        shape = tuple(as_tensors(data)[0].shape[1:])
    else:
        raise AttackError("structured pruning needs the input shape: a zoo model or the attacker's data")
    return torch.zeros(2, *shape, device=model_device(model))


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@register("structured-prune")
@dataclass
class StructuredPrune(TrainingAttack):
    """Remove the `amount` fraction of channels/neurons of every hidden Conv/Linear layer (torch-pruning,
    `importance` magnitude or taylor), then fine-tune all layers for `epochs` on the attacker's data."""

    amount: float = param(0.5, "fraction of channels/neurons removed from every hidden layer", lo=0, hi=1, hi_open=True)
    importance: str = param('magnitude', "magnitude or taylor), then fine-tune all layers for `epochs` on the "
                            "attacker's data", choices=IMPORTANCE)
    epochs: int = param(3, "training epochs", lo=0, hi=validate.MAX_EPOCHS)

    def _apply(self, model: nn.Module, data: Dataset | None = None) -> nn.Module:
        try:
            import torch_pruning as tp
        except ImportError:  # pragma: no cover - a declared dependency
            raise AttackError("structured-prune needs torch-pruning (pip install torch-pruning)") from None
        if self.epochs > 0 or self.importance == "taylor":
            data = require_data(data, self.name)
        out = self.copy_model(model)
        out.eval()
        _, head = models.last_linear(out)
        example = _example_input(out, data)
        imp = tp.importance.TaylorImportance() if self.importance == "taylor" else \
            tp.importance.MagnitudeImportance(p=2)
        try:
            pruner = tp.pruner.MetaPruner(out, example, importance=imp, pruning_ratio=float(self.amount),
                                          ignored_layers=[head])
        except Exception as e:  # torch-pruning traces the model; an untraceable one ends here
            raise AttackError(f"torch-pruning cannot trace this model: {e}") from None
        if self.importance == "taylor" and data is not None:
            x, y = as_tensors(data)
            k = min(len(x), 256)
            self.used(examples=k)
            out.zero_grad()
            F.cross_entropy(out(x[:k].to(example.device)).float(), y[:k].to(example.device)).backward()
        pruner.step()
        out.zero_grad(set_to_none=True)
        if self.epochs > 0 and data is not None:
            self.used(examples=len(data))  # type: ignore[arg-type]
            fit(out, data, **self.fit_kwargs("attack structured-prune"))
        return out.eval()


def _chain(model: nn.Module) -> list[Layer]:
    layers = [m for _, m in prunable(model)]
    if len(layers) < 2:
        raise AttackError("permute needs at least two Conv/Linear layers")
    return layers


def _norms_between(model: nn.Module, a: nn.Module, b: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    mods = list(model.modules())
    i, j = mods.index(a), mods.index(b)
    return [m for m in mods[i + 1:j] if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _permute_blocks(model: nn.Module, gen: torch.Generator) -> bool:
    """Permute the inner units of the zoo's residual and transformer blocks (a BasicBlock's conv1 channels with
    bn1 and conv2's inputs; a WideBlock's conv1 channels with bn2 and conv2's inputs; a transformer MLP's hidden
    units: fc1's rows and bias, fc2's columns). False when the model has no such block."""
    from ..models.zoo import BasicBlock, TransformerBlock, WideBlock

    found = False
    a: nn.Module
    b: nn.Module
    bn: nn.Module | None
    for m in model.modules():
        if isinstance(m, (BasicBlock, WideBlock)):
            a, bn, b = m.conv1, (m.bn1 if isinstance(m, BasicBlock) else m.bn2), m.conv2
        elif isinstance(m, TransformerBlock):
            a, bn, b = m.fc1, None, m.fc2
        else:
            continue
        found = True
        perm = torch.randperm(int(a.weight.shape[0]), generator=gen).to(a.weight.device)
        for t in (a.weight, a.bias, *((bn.weight, bn.bias, bn.running_mean, bn.running_var) if bn else ())):
            if t is not None:
                t.copy_(t[perm])
        b.weight.copy_(b.weight[:, perm])
    return found


@register("permute")
@dataclass
class Permute(Attack):
    """Function-preserving obfuscation: randomly permute the hidden units of every layer (and the next
    layer's inputs to match); with `rescale`, also scale each unit by a random positive factor in
    [1/`max_scale`, `max_scale`] and divide the next layer's weights by it (ReLU networks without BatchNorm)."""

    rescale: bool = param(False, "also scale each unit by a random positive factor (ReLU networks without BatchNorm)")
    max_scale: float = param(4.0, "largest rescaling factor", lo=1, hi=1000.0)
    seed: int = seed_param()

    @torch.no_grad()
    def _apply(self, model: nn.Module, data: Dataset | None = None) -> nn.Module:
        out = self.copy_model(model)
        if _permute_blocks(out, torch.Generator().manual_seed(int(self.seed))):
            self._check_same(model, out, data)
            return out
        layers = _chain(out)
        gen = torch.Generator().manual_seed(int(self.seed))
        for a, b in zip(layers, layers[1:], strict=False):
            n = int(a.weight.shape[0])
            perm = torch.randperm(n, generator=gen).to(a.weight.device)
            norms = _norms_between(out, a, b)
            scale = None
            if self.rescale and not norms:
                lg = torch.log(torch.tensor(float(self.max_scale)))
                scale = torch.exp((torch.rand(n, generator=gen) * 2 - 1) * lg).to(a.weight.device, a.weight.dtype)
            a.weight.copy_(a.weight[perm])
            if a.bias is not None:
                a.bias.copy_(a.bias[perm])
            if scale is not None:
                a.weight.mul_(scale.view(-1, *([1] * (a.weight.dim() - 1))))
                if a.bias is not None:
                    a.bias.mul_(scale)
            for bn in norms:
                if bn.num_features != n:
                    raise AttackError("permute supports chains of Conv/Linear layers; this network's "
                                      "normalisation does not follow its layers")
                for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
                    if t is not None:
                        t.copy_(t[perm])
            w = b.weight
            fan_in = int(w.shape[1])
            if fan_in % n != 0:
                raise AttackError("permute supports chains of Conv/Linear layers (mlp, cnn); this network's "
                                  f"layers do not connect one after another ({n} outputs feed {fan_in} inputs)")
            group = fan_in // n  # a Linear after a flattened conv sees each channel `group` times
            shaped = w.reshape(w.shape[0], n, group, *w.shape[2:])
            shaped = shaped[:, perm]
            if scale is not None:
                shaped = shaped / scale.view(1, n, *([1] * (shaped.dim() - 2)))
            w.copy_(shaped.reshape(w.shape))
        self._check_same(model, out, data)
        return out

    def _check_same(self, before: nn.Module, after: nn.Module, data: Dataset | None) -> None:
        spec = models.spec_of(before)
        if data is not None:
            x = as_tensors(data)[0][:64]
        elif spec is not None:
            x = torch.rand(64, *spec["input_shape"], generator=torch.Generator().manual_seed(0))
        else:
            return
        a, b = predict(before, x), predict(after, x)
        if not torch.allclose(a, b, rtol=1e-3, atol=1e-4 * (1 + float(a.abs().max()))):
            raise AttackError("permute changed this network's outputs: it supports chains of Conv/Linear layers "
                              "(mlp, cnn), not residual or branching networks")


@register("finetune-reg")
@dataclass
class FineTuneRegularised(TrainingAttack):
    """Fine-tune all layers on a `fraction` of the attacker's data with label smoothing `smoothing`,
    weight decay `weight_decay` and SGD at a large learning rate `lr`, halved each epoch."""

    lr: float = param(0.05, "learning rate", lo=0, hi=10, lo_open=True)
    smoothing: float = param(0.1, "label smoothing epsilon", lo=0, hi=1, hi_open=True)
    weight_decay: float = param(0.0005, "L2 weight decay", lo=0, hi=10)
    fraction: float = param(1.0, "fraction of the attacker's labelled data used", lo=0, hi=1, lo_open=True)

    def _apply(self, model: nn.Module, data: Dataset | None = None) -> nn.Module:
        data = self.attacker_data(data, self.fraction)
        out = self.copy_model(model)
        eps = float(self.smoothing)
        with captured(out) as soft:
            def extra(_m: nn.Module, _xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
                # label smoothing: (1 - eps) CE + eps * CE(uniform); fit already adds CE, so add eps*(uniform - CE)
                logp = F.log_softmax(soft.out(), 1)
                ce = F.nll_loss(logp, yb)
                return eps * (-logp.mean(1).mean() - ce)

            sgd_schedule(out, data, self, extra, weight_decay=float(self.weight_decay))
        return out


def sgd_schedule(model: nn.Module, data: Dataset, atk: TrainingAttack, extra: Any,
                 weight_decay: float = 0.0) -> None:
    """SGD with momentum, learning rate `atk.lr` halved after every epoch (one fit call per epoch)."""
    for e in range(int(atk.epochs)):
        fit(model, data, **atk.fit_kwargs(f"attack {atk.name} epoch {e + 1}", epochs=1,
                                          lr=float(atk.lr) * 0.5 ** e, optimizer="sgd", weight_decay=weight_decay,
                                          seed=int(atk.seed) + e, extra_loss=extra))


def fisher_diagonal(model: nn.Module, x: torch.Tensor, batch_size: int = 64) -> list[torch.Tensor]:
    """Empirical Fisher diagonal of `model` on inputs `x`, labelled by the model itself."""
    dev = model_device(model)
    params = [p for p in model.parameters() if p.requires_grad]
    fisher = [torch.zeros_like(p) for p in params]
    was = model.training
    model.eval()
    n = 0
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(dev)
        out = model(xb).float()
        loss = F.cross_entropy(out, out.argmax(1))
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for f, g in zip(fisher, grads, strict=True):
            if g is not None:
                f += g.detach() ** 2 * len(xb)
        n += len(xb)
    model.train(was)
    return [f / max(n, 1) for f in fisher]


@register("refit")
@dataclass
class Refit(TrainingAttack):
    """REFIT: fine-tune on a `fraction` of the attacker's labelled data plus the rest of its inputs labelled
    by the model (when `unlabeled`), with SGD from a large `lr` halved each epoch and an EWC penalty of
    weight `ewc` that keeps the parameters that matter for the task."""

    lr: float = param(0.05, "learning rate", lo=0, hi=10, lo_open=True)
    ewc: float = param(10.0, "weight of the elastic weight consolidation penalty", lo=0, hi=1000000000.0)
    fraction: float = param(0.2, "fraction of the attacker's labelled data used", lo=0, hi=1, lo_open=True)
    unlabeled: bool = param(True, "add the attacker's other inputs, labelled by the model itself")

    def _apply(self, model: nn.Module, data: Dataset | None = None) -> nn.Module:
        data = require_data(data, self.name)
        x_all, y_all = as_tensors(data)
        n = len(x_all)
        k = max(1, min(n, int(round(float(self.fraction) * n))))
        order = torch.randperm(n, generator=torch.Generator().manual_seed(int(self.seed)))
        x, y = x_all[order[:k]], y_all[order[:k]]
        self.used(examples=k)
        out = self.copy_model(model)
        if self.unlabeled and k < n:
            # the attacker's other inputs, labelled by the model itself (REFIT's unlabeled augmentation)
            xu = x_all[order[k:]]
            yu = predict(out, xu).argmax(1)
            x, y = torch.cat([x, xu]), torch.cat([y.to(yu.dtype), yu])
        train = TensorData(x, y, meta_of(data))
        anchor = [p.detach().clone() for p in out.parameters() if p.requires_grad]
        fisher = fisher_diagonal(out, x[: min(len(x), 512)]) if self.ewc > 0 else None
        params = [p for p in out.parameters() if p.requires_grad]
        lam = float(self.ewc)

        def extra(_m: nn.Module, _xb: torch.Tensor, _yb: torch.Tensor) -> torch.Tensor:
            total = torch.zeros((), device=_xb.device)
            if fisher is None:
                return total
            for f, p, a in zip(fisher, params, anchor, strict=True):
                total = total + (f * (p - a) ** 2).sum()
            return lam * total

        sgd_schedule(out, train, self, extra)
        return out
