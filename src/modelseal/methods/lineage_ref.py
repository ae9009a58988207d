"""The keyless lineage test (`modelseal.lineage`) as a fingerprint method, so that the bench and the arena
score it over the same populations as the protections, with no consumer change.

Paper: Zhu, Kuditipudi, Fang, Hashimoto, Liang, "Independence Tests for Language Models", ICML 2025 (arXiv
2502.12292); the test itself, its null and its deviations are documented in `modelseal.lineage`.

What this wrapper adds, and why: a fingerprint's `extract` makes a Key, and the lineage test needs no secret —
its evidence is the owner's weights. So the "key" is a snapshot of the owner model (its modelseal model-file
bytes, `models.io.model_to_bytes`, as one uint8 tensor; only models the zoo can rebuild), made before any
theft like every key; `verify` rebuilds the owner from it and runs `modelseal.lineage.lineage` with the
verifier's rule. Nothing in the key decides the test: alpha, the permutation count, the aligned test's null
rate, the black-box queries and the reference models are the verifier's (`verify_params`). It is registered
as a comparison (`peer_baseline`): scored in the bench and the arena, not one of the protections `modelseal
demo` shows. It is registered with white-box access, as DeepMarks is: the bench judges the weights and skips
the attacks that only change what an API returns; the black-box part (labels against the verifier's reference
models) runs when the verifier gives references, and `modelseal lineage` judges black-box suspects too. The
command line for the test itself is `modelseal lineage OWNER SUSPECT` (no key needed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..data import as_input_spec
from ..errors import KeyFormatError, ModelError
from ..keys import Key
from ..schema import seed_param, verifier, vparam
from ..suspect import Suspect
from ..verdict import Verdict
from . import register
from .base import Fingerprint
from .peer import REFERENCES_MEANING, model_signature

MAX_OWNER_BYTES = 256 << 20  # an owner snapshot larger than this is refused (keys are read into memory)


@register("lineage", family="fingerprint", access="white-box")
@dataclass
class LineageReference(Fingerprint):
    """A snapshot of the owner's weights; verify = the keyless lineage test (modelseal.lineage) against it."""

    seed: int = seed_param("taken like every method's; a snapshot has no randomness (the test's Monte Carlo "
                           "draws are the verifier's, seeded by the verifier)")

    peer_baseline: ClassVar[bool] = True
    shared_init_is_derived: ClassVar[bool] = True
    key_tensors = ("owner",)
    verify_params = verifier(
        references=vparam(None, REFERENCES_MEANING + " (black-box part)", "list | str | None", kind="models"),
        permutations=vparam(1_000_000, "Monte Carlo permutations of the exact weight test (p floor 1/(T+1))", "int",
                            lo=1, hi=10_000_000),
        aligned_null_rate=vparam(0.5, "agreement rate of an independent model's two unit matchings under H0 "
                                 "(aligned test; calibrated empirically)", "float", lo=0, hi=1, lo_open=True,
                                 hi_open=True),
        queries=vparam(1000, "random inputs of the black-box part", "int", lo=1, hi=100_000),
    )
    evidence_not_proved = ("no evidence file: the lineage test's evidence is the two models' weights",)

    def extract(self, model: nn.Module, input_spec: Any, progress: Any = None) -> Key:
        """A snapshot of `model` (a zoo model: its model-file bytes) with the model's signature."""
        from ..models.io import model_to_bytes

        spec = as_input_spec(input_spec)
        sig = model_signature(model, "lineage", spec.shape)
        try:
            blob = model_to_bytes(model)
        except Exception as e:  # a user's own module that the zoo cannot describe
            raise ModelError(f"lineage keeps a snapshot of the owner, which needs a model the zoo can rebuild "
                             f"({e}); use `modelseal lineage OWNER SUSPECT` with the owner's file instead") from None
        if len(blob) > MAX_OWNER_BYTES:
            raise ModelError(f"the owner's snapshot is {len(blob)} bytes, above {MAX_OWNER_BYTES}")
        owner = torch.from_numpy(np.frombuffer(blob, dtype=np.uint8).copy())
        return Key("lineage", params={"owner_bytes": len(blob)}, tensors={"owner": owner}, signature=sig)

    def decide(self, suspect: Suspect, key: Key, rule: dict[str, Any]) -> Verdict:
        """The keyless lineage verdict of the suspect against the key's owner snapshot."""
        from ..lineage import lineage
        from ..models.io import model_from_bytes

        t = key.tensors.get("owner")
        if t is None or t.dtype != torch.uint8 or t.dim() != 1 or not 0 < t.numel() <= MAX_OWNER_BYTES:
            raise KeyFormatError("the lineage key holds no valid owner snapshot (a 1-D uint8 tensor)")
        owner = model_from_bytes(bytes(t.numpy().tobytes()), source="the lineage key's owner snapshot")
        if suspect.module is not None:
            owner.to(next(iter(suspect.module.parameters()), torch.empty(0)).device)
        return lineage(owner, suspect, rule.get("references"), alpha=rule["alpha"],
                       permutations=rule["permutations"],
                       aligned_null_rate=rule["aligned_null_rate"], queries=rule["queries"])
