"""Extraction through the Suspect: train a new model from the suspect's answers under a query budget.

Papers: Knockoff Nets (Orekondy, Schiele, Fritz, CVPR 2019: random and adaptive query selection from the
thief's own pool, soft labels); active-learning query selection by uncertainty (ActiveThief, Pal et al.,
AAAI 2020); cross-architecture retraining and transfer learning as watermark removal (Lukas et al., "SoK:
How Robust is Image Classification Deep Neural Network Watermarking?", S&P 2022).

Deviations: the pool is the inputs of the attacker's data set (its labels are never used, except by
`transfer`, which fine-tunes a new head on them); `queries` inputs of the pool are sent through the
`Suspect` (a module, a model file, an ONNX file or an http(s) URL), so the budget is charged exactly what the
model saw. `adaptive` spends a seed share at random and the rest in `rounds`, each time sending the pool
inputs on which the current student is least certain (highest entropy). Soft labels: the answers when they
are probabilities (non-negative rows summing to 1), else softmax(answers / `temperature`); label-only
suspects give hard labels. Students come from the model zoo ('same' = the suspect's own architecture when
its spec is known, 'other' = another zoo architecture than that). `transfer` needs the weights: it keeps
the model's feature layers, replaces the head by a fresh two-layer head and trains it (then, with
`finetune_all`, every layer) on the attacker's labelled data.
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
from ..errors import SuspectError
from ..schema import param
from ..suspect import Suspect
from ..train import fit, predict
from . import AttackError, register
from .training import TrainingAttack, bounds_of, captured, require_data, train_last_layer

STUDENTS = ("same", "other")


def as_suspect(source: Any) -> Suspect:
    """A Suspect for a module, a Suspect, a model/ONNX file or a URL."""
    if isinstance(source, Suspect):
        return source
    try:
        return Suspect.load(source)
    except SuspectError as e:
        raise AttackError(str(e)) from None


def soft_targets(answers: torch.Tensor, temperature: float, label_only: bool) -> torch.Tensor:
    """Class probabilities from a suspect's answers (one-hot for labels)."""
    if label_only or answers.dim() == 1:
        lab = answers.long().reshape(-1)
        return F.one_hot(lab, int(lab.max()) + 1 if len(lab) else 1).float()
    a = answers.reshape(len(answers), -1).float()
    if bool((a >= 0).all()) and torch.allclose(a.sum(1), torch.ones(len(a)), atol=1e-3):
        return a
    return torch.softmax(a / temperature, 1)


class _Lookup:
    """Soft targets of training inputs found again from the inputs themselves (fit hands `extra_loss` only
    the batch): a fixed random projection of each input, looked up in the sorted projections."""

    def __init__(self, x: torch.Tensor, targets: torch.Tensor, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.r = torch.randn(x[0].numel(), generator=g, dtype=torch.float64)
        keys = x.reshape(len(x), -1).double() @ self.r
        self.keys, order = keys.sort()
        self.targets = targets[order]

    def __call__(self, xb: torch.Tensor) -> torch.Tensor:
        k = xb.detach().reshape(len(xb), -1).double().cpu() @ self.r
        i = torch.searchsorted(self.keys, k).clamp(0, len(self.keys) - 1)
        j = (i - 1).clamp(0, len(self.keys) - 1)
        pick = torch.where((self.keys[j] - k).abs() < (self.keys[i] - k).abs(), j, i)
        return self.targets[pick].to(xb.device)


@dataclass
class _Extraction(TrainingAttack):
    queries: int = param(1000, "query budget: inputs sent to the suspect", lo=1, hi=validate.MAX_COUNT)
    student: str = param('same', "student architecture: same | other | a zoo name")
    epochs: int = param(10, "training epochs", lo=0, hi=validate.MAX_EPOCHS)
    temperature: float = param(1.0, "softmax temperature", lo=0, hi=1000000.0, lo_open=True)
    takes_suspect = True

    def check(self) -> None:
        if self.student not in STUDENTS and self.student not in models.names():
            raise AttackError(f"unknown student architecture '{self.student}'; use same, other or one of "
                              f"{', '.join(models.names())}")

    def build_student(self, suspect: Suspect, input_shape: tuple[int, ...], classes: int, meta: Any) -> nn.Module:
        spec = models.spec_of(suspect.module) if suspect.module is not None else None
        bounds = tuple(spec["bounds"]) if spec and "bounds" in spec else bounds_of(meta)
        own = spec["name"] if spec else None
        image = len(input_shape) >= 2
        if self.student == "same":
            name = own or ("cnn" if image else "mlp")
            kwargs = dict(spec.get("kwargs") or {}) if spec else {}
        elif self.student == "other":
            name = "mlp" if (own or ("cnn" if image else "mlp")) != "mlp" else ("cnn" if image else "mlp")
            kwargs = {}
            if name == own:  # flat inputs: the only other choice is a differently sized MLP
                kwargs = {"hidden": (128,)}
        else:
            name, kwargs = self.student, {}
        try:
            return models.build(name, input_shape=input_shape, num_classes=classes, seed=self.seed, bounds=bounds,
                                **kwargs)
        except Exception as e:  # a zoo constructor may reject an input shape with a plain ValueError
            raise AttackError(f"cannot build a '{name}' student for inputs of shape {list(input_shape)} and "
                              f"{classes} outputs ({e}); choose another student architecture") from None

    def select(self, suspect: Suspect, pool: torch.Tensor, meta: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The queried inputs and the suspect's answers (random selection)."""
        k = min(int(self.queries), len(pool))
        idx = torch.randperm(len(pool), generator=torch.Generator().manual_seed(int(self.seed)))[:k]
        x = pool[idx]
        return x, self.ask(suspect, x)

    def ask(self, suspect: Suspect, x: torch.Tensor) -> torch.Tensor:
        before = suspect.queries
        try:
            out = suspect.predict(x)
        finally:
            self.used(queries=suspect.queries - before)
        return soft_targets(out, float(self.temperature), suspect.label_only)

    def train_student(self, student: nn.Module, x: torch.Tensor, soft: torch.Tensor, description: str) -> None:
        lookup = _Lookup(x, soft, int(self.seed))
        with captured(student) as out:
            def extra(_m: nn.Module, xb: torch.Tensor, _yb: torch.Tensor) -> torch.Tensor:
                target = lookup(xb)
                log_p = F.log_softmax(out.out(), 1)
                return -(target * log_p).sum(1).mean()  # cross-entropy on the soft answers (Knockoff Nets)

            fit(student, TensorData(x, soft.argmax(1)), **self.fit_kwargs(description, extra_loss=extra))

    def _apply(self, model: Any, data: Dataset | None = None) -> nn.Module:
        data = require_data(data, self.name)
        suspect = as_suspect(model)
        pool, _ = as_tensors(data)
        meta = meta_of(data)
        if suspect.input_shape is not None and tuple(pool.shape[1:]) != tuple(suspect.input_shape) \
                and not suspect.reshape:
            raise AttackError(f"the attacker's inputs have shape {tuple(pool.shape[1:])}, the suspect takes "
                              f"{tuple(suspect.input_shape)}")
        x, soft = self.select(suspect, pool, meta)
        self.used(examples=len(x))
        classes = int(suspect.output_size() or 0) or int(getattr(meta, "num_classes", 0) or soft.shape[1])
        if soft.shape[1] < classes:
            soft = F.pad(soft, (0, classes - soft.shape[1]))
        return self.fit_student(suspect, x, soft, classes, meta)

    def fit_student(self, suspect: Suspect, x: torch.Tensor, soft: torch.Tensor, classes: int,
                    meta: Any) -> nn.Module:
        """A fresh student for `classes` outputs, on the suspect's device unless `device` says otherwise,
        trained on the answers `soft` to `x`."""
        student = self.build_student(suspect, tuple(x.shape[1:]), classes, meta)
        if self.device is None and suspect.module is not None:
            student.to(next(suspect.module.parameters()).device)
        self.train_student(student, x, soft, f"attack {self.name}")
        return student


@register("knockoff")
@dataclass
class Knockoff(_Extraction):
    """Knockoff Nets with random selection: send `queries` random pool inputs to the suspect, train a
    `student` ('same', 'other' or a zoo name) on its soft answers for `epochs`."""


@register("knockoff-adaptive")
@dataclass
class KnockoffAdaptive(_Extraction):
    """Knockoff with adaptive selection: `queries` spent in `rounds`, each on the pool inputs where the
    student trained so far is least certain (the first round at random)."""

    rounds: int = param(4, "rounds of adaptive selection (the first at random)", lo=1, hi=100)

    def select(self, suspect: Suspect, pool: torch.Tensor, meta: Any) -> tuple[torch.Tensor, torch.Tensor]:
        total = min(int(self.queries), len(pool))
        rounds = min(int(self.rounds), total)
        per = [total // rounds + (1 if i < total % rounds else 0) for i in range(rounds)]
        gen = torch.Generator().manual_seed(int(self.seed))
        left = torch.randperm(len(pool), generator=gen)
        chosen_x: list[torch.Tensor] = []
        chosen_y: list[torch.Tensor] = []
        for r, k in enumerate(per):
            if r == 0:
                take, left = left[:k], left[k:]
            else:
                x_so_far, y_so_far = torch.cat(chosen_x), torch.cat(chosen_y)
                classes = y_so_far.shape[1]
                student = self.build_student(suspect, tuple(pool.shape[1:]), classes, meta)
                self.train_student(student, x_so_far, y_so_far, f"attack {self.name} round {r}")
                p = torch.softmax(predict(student, pool[left]), 1)
                entropy = -(p * p.clamp_min(1e-12).log()).sum(1)
                order = torch.argsort(entropy, descending=True, stable=True)
                take, left = left[order[:k]], left[order[k:]]
            xb = pool[take]
            yb = self.ask(suspect, xb)
            if chosen_y and yb.shape[1] != chosen_y[0].shape[1]:  # label-only answers: widen one-hot codes
                width = max(yb.shape[1], chosen_y[0].shape[1])
                chosen_y = [F.pad(t, (0, width - t.shape[1])) for t in chosen_y]
                yb = F.pad(yb, (0, width - yb.shape[1]))
            chosen_x.append(xb)
            chosen_y.append(yb)
        return torch.cat(chosen_x), torch.cat(chosen_y)


@register("retrain-xarch")
@dataclass
class RetrainCrossArch(_Extraction):
    """Cross-architecture retraining: a `student` of another architecture ('other', or a zoo name) trained
    on the suspect's soft answers to `queries` random pool inputs."""

    student: str = param('other', "student architecture: same | other | a zoo name")


@register("transfer")
@dataclass
class Transfer(TrainingAttack):
    """Transfer learning to a new head: keep the model's feature layers, replace its last Linear layer by a
    fresh Linear-ReLU-Linear head of `hidden` units, train the head for `epochs` on a `fraction` of the
    attacker's labelled data, then every layer for `finetune_epochs` more."""

    hidden: int = param(64, "units of the new head's hidden layer", lo=1, hi=100000)
    finetune_epochs: int = param(1, "epochs of fine-tuning every layer after the head", lo=0, hi=validate.MAX_EPOCHS)
    fraction: float = param(1.0, "fraction of the attacker's labelled data used", lo=0, hi=1, lo_open=True)

    def _apply(self, model: nn.Module, data: Dataset | None = None) -> nn.Module:
        data = self.attacker_data(data, self.fraction)
        out = self.copy_model(model)
        name, head = models.last_linear(out)
        if not isinstance(head, nn.Linear):  # last_linear finds nn.Linear layers; this tells the type checker
            raise AttackError("transfer replaces the model's last nn.Linear layer; this model has none")
        parent_name, _, attr = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.seed))
            new = nn.Sequential(nn.Linear(head.in_features, int(self.hidden)), nn.ReLU(),
                                nn.Linear(int(self.hidden), head.out_features))
        new.to(head.weight.device)
        setattr(parent, attr, new)
        train_last_layer(out, new, data, **self.fit_kwargs("attack transfer (head)"))
        if self.finetune_epochs > 0:
            fit(out, data, **self.fit_kwargs("attack transfer (all)", epochs=self.finetune_epochs))
        return out
