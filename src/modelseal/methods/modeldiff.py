"""ModelDiff: decision-distance vectors on input pairs, compared by cosine similarity (peer baseline).

Paper: Li, Zhang, Li, Liu, Chen, "ModelDiff: Testing-Based DNN Similarity Comparison for Model Reuse
Detection", ISSTA 2021. For n input pairs (x_i, x'_i), a model's decision distance vector (DDV) holds the
distance between its outputs on x_i and x'_i; two models are compared by the cosine similarity of their
DDVs. The pairs are normal inputs and perturbed copies of them chosen so that the owner's outputs differ.

Where modelseal deviates, and why:

- Pairs. x_i are the owner's inputs from `data` (a modelseal.data name, its `split`; see `methods.akh` for
  where data come from) or, with `data` none and no data set behind the input specification or the model
  file, uniform noise
  in the input box. x'_i is an untargeted sign-gradient (PGD) step sequence of size `eps` (a fraction of the
  box) that moves the owner's prediction away from its label on x_i, instead of the paper's search that
  maximises the DDVs' diversity (which needs a pool of models). The output distance is the cosine distance
  of the output probabilities (softmax of logits; probabilities are kept as they are).
- Score: the paper's cosine similarity of the raw DDVs. Every DDV entry is >= 0, so independent models
  score well above 0 too (their DDVs share which pairs are far apart); only the ranking is meaningful.
- p-value: the paper has none, and independent models share part of the DDV, so no null holds without
  independent models: without the verifier's `references` the method is **score only** (never accuses; see
  `methods.akh`); with references the p-value is the larger of the rank p-value (1 + #{references >= score}) /
  (R + 1) and a conservative normal null's tail (`stats.normal_reference_pvalue`, as SAC: issue 37). Measured
  (benchmarks/references.py, 40 converged independents, the default pool of 99, alpha 0.01): the old 3-epoch
  pool 1 of 40 accused, the converged pool with the rank p-value alone 1 of 40 (a CNN, the owner's
  architecture), with the normal null 0 of 40 (smallest p 0.057).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import validate
from ..data import as_input_spec
from ..keys import Key
from ..runtime import model_device
from ..schema import param, secret_seed_param
from ..suspect import Suspect
from ..train import predict
from ..verdict import Verdict
from . import register
from .peer import (
    DataBaseline,
    data_name,
    decide_baseline,
    evidence_hooks,
    model_signature,
    owner_data,
    probabilities,
)


def ddv(outputs: torch.Tensor) -> torch.Tensor:
    """Decision distance vector from outputs on [x_1..x_n, x'_1..x'_n]: cosine distance of the probabilities."""
    p = probabilities(outputs)
    n = len(p) // 2
    return 1.0 - F.cosine_similarity(p[:n], p[n:], dim=1)


def ddv_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """The paper's score: cosine similarity of two DDVs (0 when either is all zero)."""
    a, b = a.double().flatten(), b.double().flatten()
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else 0.0


def ddv_statistic(opened: dict[str, torch.Tensor], answers: Any) -> tuple[float, int | None, int]:
    """(score, no count, pairs) of a suspect's outputs against the key's owner outputs."""
    owner = opened["outputs"]
    out = torch.as_tensor(answers, dtype=torch.float32).reshape(len(owner), -1)
    if len(owner) % 2 or out.shape != owner.shape:
        raise ValueError(f"answers of shape {tuple(out.shape)} for owner outputs of shape {tuple(owner.shape)}")
    return ddv_similarity(ddv(owner), ddv(out)), None, len(owner) // 2


@register("modeldiff", family="fingerprint", access="outputs")
@dataclass
class ModelDiff(DataBaseline):
    """Input pairs whose owner outputs differ; score = cosine similarity of owner and suspect DDVs."""

    n: int = param(100, "input pairs in the key (2n queries)", lo=2, hi=validate.MAX_COUNT)
    eps: float = param(0.1, "L-inf size of the perturbation making x' from x, as a fraction of the input box",
                       lo=0, hi=1, lo_open=True)
    steps: int = param(10, "sign-gradient steps making x' from x", lo=1, hi=validate.MAX_STEPS)
    data: str | None = param(None, "data set of the pairs' first inputs (a modelseal.data name; none: the input "
                             "specification's data set, or uniform noise without one)")
    seed: int = secret_seed_param("random seed of the choice of inputs")

    key_tensors = ("inputs", "outputs")
    recheck, reanswer = evidence_hooks("modeldiff", ddv_statistic, labels=False)

    def extract(self, model: nn.Module, input_spec: Any, progress: Any = None) -> Key:
        """n pairs (x, x') and the owner's outputs on all 2n inputs."""
        spec = as_input_spec(input_spec)
        sig = model_signature(model, "modeldiff", spec.shape)
        gen = torch.Generator().manual_seed(int(self.seed))
        lo, hi = spec.bounds
        source = "noise"
        name = data_name(self.data, input_spec, model)
        if name is not None:
            x, _ = owner_data("modeldiff", name, self.data_seed, self.split, input_spec, model)
            x = x[torch.randperm(len(x), generator=gen)[: self.n]]
            source = f"{name}:{self.split}"
        else:
            x = lo + (hi - lo) * torch.rand((int(self.n), *spec.shape), generator=gen)
        x2 = self._perturb(model, x, lo, hi)
        inputs = torch.cat([x, x2]).float()
        outputs = predict(model, inputs).reshape(len(inputs), -1).float()
        params = {"n": len(x), "n_requested": int(self.n), "eps": float(self.eps), "steps": int(self.steps),
                  "source": source, "data_seed": int(self.data_seed), "seed": int(self.seed)}
        return Key("modeldiff", params=params, tensors={"inputs": inputs, "outputs": outputs}, signature=sig)

    def _perturb(self, model: nn.Module, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        dev = model_device(model)
        was = model.training
        model.eval()
        eps = float(self.eps) * (hi - lo)
        step = eps / max(1, int(self.steps)) * 1.5
        x0 = x.to(dev)
        with torch.no_grad():
            y = model(x0).reshape(len(x0), -1).argmax(1)
        xa = x0.clone()
        try:
            for _ in range(int(self.steps)):
                xa.requires_grad_(True)
                loss = F.cross_entropy(model(xa).reshape(len(xa), -1).float(), y, reduction="sum")
                (g,) = torch.autograd.grad(loss, xa)
                with torch.no_grad():
                    xa = (x0 + (xa + step * g.sign() - x0).clamp(-eps, eps)).clamp(lo, hi)
        finally:
            model.train(was)
        return xa.detach().cpu()

    def decide(self, suspect: Suspect, key: Key, rule: dict[str, Any]) -> Verdict:
        """Score the suspect's outputs on the key's inputs against the owner's."""
        return decide_baseline("modeldiff", ddv_statistic, False, suspect, key, rule, self.key_tensors)
