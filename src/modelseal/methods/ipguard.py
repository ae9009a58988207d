"""IPGuard: data points near the owner's classification boundary, judged by matching labels (peer baseline).

Paper: Cao, Jia, Gong, "IPGuard: Protecting Intellectual Property of Deep Neural Networks via
Fingerprinting the Classification Boundary", AsiaCCS 2021. For a start point x with owner label i and a
second class j, IPGuard minimises ReLU(z_i - z_j + k) + ReLU(max_{t != i, j} z_t - z_i) over x (the logits
z of the owner), so that the point lies just across the i/j boundary (label j, margin k over i, i the
runner-up); the fingerprint is the points with the owner's labels, and a suspect is scored by the fraction
of them it labels as the owner does (matching rate). The public reimplementation read for this module
(`Adv.IPGuard` in a fingerprinting benchmark by "homeway", 2022) optimises with Adam, lr 1e-2, up to 1,000
steps, and stops an input when the loss reaches 0.

Where modelseal deviates, and why:

- Start points are uniform noise in the input box (no data), j is a seeded random class other than i; all
  points are optimised in one batch with Adam and clipped to the input bounds after each step. Only points
  the owner labels j with z_j - z_i >= k/2 are kept (more starts when too few: at most `max_rounds`).
- p-value: the paper decides with a threshold on the matching rate, and boundary points transfer to
  independent models of one task at a model-dependent rate, so no null holds without independent models:
  without the verifier's `references` the method is **score only** (never accuses; see `methods.akh`); with
  references the match count is judged against their counts like c-examples and AKH.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import validate
from ..data import as_input_spec
from ..errors import ModelError
from ..keys import Key
from ..runtime import model_device, track
from ..schema import batch_param, param, secret_seed_param
from ..suspect import Suspect
from ..train import predict
from ..verdict import Verdict
from . import register
from .peer import PeerBaseline, decide_baseline, evidence_hooks, label_matches, model_signature


@register("ipguard", family="fingerprint", access="labels")
@dataclass
class IPGuard(PeerBaseline):
    """Points just across the owner's decision boundary and the owner's labels on them."""

    n: int = param(100, "boundary points in the key", lo=1, hi=validate.MAX_COUNT)
    k: float = param(0.5, "logit margin of the point's label over the runner-up class", lo=0, hi=1e6, lo_open=True)
    steps: int = param(300, "Adam steps per batch of points", lo=1, hi=validate.MAX_STEPS)
    lr: float = param(0.01, "Adam learning rate on the input", lo=0, hi=10, lo_open=True)
    max_rounds: int = param(5, "most rounds of new starts when fewer than n points qualify", lo=1, hi=1000)
    seed: int = secret_seed_param("random seed of the start points and the second classes")
    batch_size: int = batch_param(512)

    key_tensors = ("inputs", "labels")
    recheck, reanswer = evidence_hooks("ipguard", label_matches, labels=True)

    def extract(self, model: nn.Module, input_spec: Any, progress: Any = None) -> Key:
        """Boundary points of `model` found from noise (no data) and the owner's labels on them."""
        spec = as_input_spec(input_spec)
        sig = model_signature(model, "ipguard", spec.shape)
        classes = int(sig["output_size"])
        gen = torch.Generator().manual_seed(int(self.seed))
        xs: list[torch.Tensor] = []
        kept = rounds = 0
        was = model.training
        model.eval()
        req = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            with track(progress, int(self.n), "ipguard extract") as bar:
                while kept < self.n and rounds < self.max_rounds:
                    want = max(8, 2 * (int(self.n) - kept))
                    for i in range(0, want, self.batch_size):
                        x = self._points(model, spec, classes, min(self.batch_size, want - i), gen)
                        xs.append(x)
                        kept += len(x)
                    rounds += 1
                    bar.update(min(kept, self.n), info=f"round {rounds}")
        finally:
            for p, r in zip(model.parameters(), req, strict=True):
                p.requires_grad_(r)
            model.train(was)
        if kept == 0:
            raise ModelError("no IPGuard point reached the boundary; raise steps, lr or max_rounds")
        x = torch.cat(xs)[: self.n].cpu()
        labels = predict(model, x).reshape(len(x), -1).argmax(1)
        params = {"n": len(x), "n_requested": int(self.n), "k": float(self.k), "steps": int(self.steps),
                  "lr": float(self.lr), "rounds": rounds, "seed": int(self.seed), "bounds": list(spec.bounds)}
        return Key("ipguard", params=params, tensors={"inputs": x.float(), "labels": labels.long()}, signature=sig)

    def _points(self, model: nn.Module, spec: Any, classes: int, m: int, gen: torch.Generator) -> torch.Tensor:
        lo, hi = spec.bounds
        dev = model_device(model)
        x = (lo + (hi - lo) * torch.rand((m, *spec.shape), generator=gen)).to(dev)
        with torch.no_grad():
            i = model(x).reshape(m, -1).argmax(1)
        j = (i + torch.randint(1, classes, (m,), generator=gen).to(dev)) % classes
        x = x.clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=float(self.lr))
        rows = torch.arange(m, device=dev)
        for _ in range(int(self.steps)):
            z = model(x).reshape(m, -1).float()
            zi, zj = z[rows, i], z[rows, j]
            if classes > 2:
                rest = z.clone()
                rest[rows, i] = float("-inf")
                rest[rows, j] = float("-inf")
                loss = torch.relu(zi - zj + self.k) + torch.relu(rest.max(1).values - zi)
            else:
                loss = torch.relu(zi - zj + self.k)
            if float(loss.detach().max()) <= 1e-5:
                break
            opt.zero_grad()
            loss.sum().backward()
            opt.step()
            with torch.no_grad():
                x.clamp_(lo, hi)
        with torch.no_grad():
            z = model(x).reshape(m, -1).float()
            ok = (z.argmax(1) == j) & (z[rows, j] - z[rows, i] >= self.k / 2)
        return x.detach()[ok].cpu()

    def decide(self, suspect: Suspect, key: Key, rule: dict[str, Any]) -> Verdict:
        """Matching rate of the suspect's labels with the owner's on the boundary points."""
        return decide_baseline("ipguard", label_matches, True, suspect, key, rule, self.key_tensors)
