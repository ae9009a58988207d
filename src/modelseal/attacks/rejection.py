"""Query rejection: the suspect's owner fits an out-of-distribution detector on its own data and answers the
queries it flags falsely, the evasion every trigger-set watermark faces.

Papers: the maximum-softmax-probability detector (Hendrycks & Gimpel, ICLR 2017) and the Mahalanobis score
on penultimate features (Lee et al., NeurIPS 2018); as watermark evasion: Hitaj et al., "Evasion Attacks
Against Watermarking Techniques found in MLaaS Systems" (SNAMS 2019) and Namba & Sakuma ("ensemble" /
"detector" evasion, AsiaCCS 2019).

Deviations: `apply(model, data)` fits the detector on the attacker's data (its inputs only) and returns the
model unchanged; the threshold rejects the `reject_rate` fraction of the attacker's own inputs (the
false-rejection rate the attacker accepts; the bench records the realised rate on test data in the row's
cost as `test_rejection_rate`). A flagged query is answered with its logits re-ordered so that another
class is on top: the second-best class (`answer` = 'second') or a random other class ('random'); the rest
of the answer vector is kept. The Mahalanobis detector uses class means (by the model's predicted labels)
and one shared covariance of the input to the model's last Linear layer, read from the attacker's own copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .. import models
from ..data import as_tensors
from ..runtime import model_device
from ..schema import param, seed_param
from ..suspect import Suspect
from ..train import predict
from . import Attack, AttackError, register
from .inputs import wrapped_suspect
from .training import require_data

ANSWERS = ("second", "random")


@dataclass
class _Rejection(Attack):
    """Base of the query-rejection attacks: a detector fitted in `apply`, scores (higher = more out of
    distribution) and a threshold that flags `reject_rate` of the attacker's own inputs."""

    reject_rate: float = param(0.05, "fraction of the attacker's own inputs flagged (false rejections it accepts)",
                               lo=0, hi=1, hi_open=True)
    answer: str = param("second", "answer to a flagged query: second (best class) | random (other class)",
                        choices=ANSWERS)
    seed: int = seed_param()
    acts_on = "queries"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._model: nn.Module | None = None  # set by apply: the model whose answers are falsified
        self._threshold = float("inf")

    def scores(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Higher = more out-of-distribution."""
        raise NotImplementedError  # pragma: no cover - interface

    def fit_detector(self, model: nn.Module, x: torch.Tensor) -> None:
        raise NotImplementedError  # pragma: no cover - interface

    def _apply(self, model: nn.Module, data: Dataset | None = None) -> nn.Module:
        """Fit the detector on the attacker's inputs; the model itself is returned unchanged."""
        x, _ = as_tensors(require_data(data, self.name))
        self.used(examples=len(x))
        self._model = model
        self.fit_detector(model, x)
        s = self.scores(x, predict(model, x))
        self._threshold = float(torch.quantile(s.double(), 1.0 - float(self.reject_rate))) \
            if self.reject_rate > 0 else float("inf")
        return model

    def _falsify(self, logits: torch.Tensor, flagged: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        out = logits.clone()
        if not bool(flagged.any()):
            return out
        rows = torch.nonzero(flagged).reshape(-1)
        order = logits[rows].argsort(1, descending=True)
        top = order[:, 0]
        if self.answer == "second":
            other = order[:, 1]
        else:
            c = logits.shape[1]
            other = (top + 1 + torch.randint(0, c - 1, (len(rows),), generator=gen)) % c
        a, b = out[rows, top].clone(), out[rows, other].clone()
        out[rows, top], out[rows, other] = b, a
        return out

    def fitted_model(self) -> nn.Module:
        """The model `apply` fitted the detector on."""
        if self._model is None:
            raise AttackError(f"{self.name} fits its detector in apply(model, data); call apply before wrap")
        return self._model

    def wrap(self, suspect: Suspect, meta: Any = None) -> Suspect:
        """The suspect that answers flagged queries with another class on top."""
        self.fitted_model()
        gen = torch.Generator().manual_seed(int(self.seed))

        def answer(x: torch.Tensor) -> torch.Tensor:
            logits = suspect.predict(x)
            if logits.dim() != 2 or logits.shape[1] < 2:
                raise AttackError(f"{self.name} answers classifiers (N x C outputs), got {tuple(logits.shape)}")
            flagged = self.scores(x, logits) > self._threshold
            self.count_query(rejected=int(flagged.sum()))
            return self._falsify(logits, flagged, gen)

        return wrapped_suspect(self, suspect, answer)


@register("reject-softmax")
@dataclass
class RejectSoftmax(_Rejection):
    """Flag queries whose maximum softmax probability is below what `reject_rate` of the attacker's own inputs
    reach, and answer them with the `answer` class ('second' best or 'random')."""


    def fit_detector(self, model: nn.Module, x: torch.Tensor) -> None:
        pass

    def scores(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return -torch.softmax(logits.float(), 1).max(1).values


@register("reject-mahalanobis")
@dataclass
class RejectMahalanobis(_Rejection):
    """Flag queries whose penultimate features are far (Mahalanobis distance to the nearest class mean) from
    the attacker's own inputs (`reject_rate` of them flagged), and answer them with the `answer` class."""


    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        model = self.fitted_model()
        _, head = models.last_linear(model)
        got: list[torch.Tensor] = []
        hook = head.register_forward_hook(lambda _m, i, _o: got.append(i[0].detach().float().cpu()))
        was = model.training
        model.eval()
        try:
            dev = model_device(model)
            for i in range(0, len(x), 512):
                model(x[i:i + 512].to(dev))
        finally:
            hook.remove()
            model.train(was)
        return torch.cat(got).reshape(len(x), -1)

    def fit_detector(self, model: nn.Module, x: torch.Tensor) -> None:
        self._model = model
        f = self.features(x).double()
        labels = predict(model, x).argmax(1)
        classes = sorted(int(c) for c in labels.unique())
        self._means = torch.stack([f[labels == c].mean(0) for c in classes])
        centred = torch.cat([f[labels == c] - self._means[i] for i, c in enumerate(classes)])
        cov = centred.T @ centred / max(len(centred) - 1, 1)
        cov += torch.eye(cov.shape[0], dtype=cov.dtype) * (1e-3 * float(cov.diagonal().mean()) + 1e-9)
        self._precision = torch.linalg.inv(cov)

    def scores(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        f = self.features(x).double()
        d = f[:, None, :] - self._means[None]
        m = torch.einsum("nkd,de,nke->nk", d, self._precision, d)
        return m.min(1).values.float()
