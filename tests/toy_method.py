"""A toy watermark, one file with its schema: adds `shift` to the logit of class `target`; judges by how often
the suspect answers `target` on random inputs, against the binomial null of rate `null` (the verifier's).

Importing this module registers it (tests/test_house.py and tests/test_protocol.py use it); nothing else in
modelseal knows it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

import modelseal as ms
from modelseal import methods, stats
from modelseal.methods.base import Watermark
from modelseal.schema import param, seed_param, verifier, vparam
from modelseal.verdict import Verdict

NAME = "test-output-bias"


@methods.register(NAME, family="watermark", access="labels")
@dataclass
class OutputBias(Watermark):
    """Toy watermark: a biased logit."""

    target: int = param(3, "class whose logit is raised", lo=0, hi=1000)
    shift: float = param(20.0, "added to the target logit", lo=0, hi=1000)
    n: int = param(40, "random inputs in the key", lo=1, hi=10_000)
    seed: int = seed_param("random seed of the key's inputs")

    verify_params = verifier(null=vparam(0.5, "null match rate", "float", lo=0, hi=1, lo_open=True, hi_open=True))

    def embed(self, model, data, progress=None):
        from modelseal.models import last_linear, signature_of

        out = copy.deepcopy(model)
        _, head = last_linear(out)
        with torch.no_grad():
            head.bias[self.target] += self.shift
        gen = torch.Generator().manual_seed(self.seed)
        shape = tuple(signature_of(model)["input_shape"])
        key = ms.Key(NAME, params={"target": self.target, "seed": self.seed},
                     tensors={"x": torch.rand((self.n, *shape), generator=gen)}, signature=signature_of(model))
        return out, key

    def decide(self, suspect, key, rule):
        x = key.tensors["x"]
        hits = int((suspect.labels(x) == int(key.params["target"])).sum())
        p = stats.binomial_tail(hits, len(x), rule["null"])
        return Verdict(NAME, owned=p <= rule["alpha"], score=hits / len(x), threshold=rule["null"], p_value=p,
                       alpha=rule["alpha"], queries=len(x))
