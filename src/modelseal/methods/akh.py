"""AKH: "the suspect repeats the victim's own mistakes" — a peer baseline fingerprint.

Paper: Godinot et al., "Queries, Representation & Detection: The Next 100 Model Fingerprinting Schemes",
AAAI 2025 (QuRD). Queries: test inputs the owner misclassifies; representation: the labels; detection: the
agreement rate between the suspect's labels and the owner's (wrong) labels on those inputs.

The helpers the four peer baselines share (akh, ipguard, modeldiff, sac) are in `methods/peer.py`.

Where modelseal deviates, and why:

- Data. The fingerprint protocol's `extract(model, input_spec)` is given no data, so the owner's test inputs
  come through the declared parameter `data` (a `modelseal.data` name: `digits`, `mnist5k`, `npz:PATH`...)
  and its `split` of `data.load(data, seed=data_seed)`; when `data` is none and the input specification is a
  data set's `Meta` (what the bench passes), the Meta's name is loaded; else the data set the model file's
  header names (`modelseal train` records it, so `modelseal fingerprint extract --method akh` needs no
  `--set`). Otherwise one line asks for `--set data=NAME`. The bench's data seed is not in the Meta, so the
  bench extracts from the `test` split of seed 0, which can overlap the owner's training split when the
  bench's data seed differs (the owner then misclassifies fewer of those inputs; nothing else changes).
- p-value. The paper has none, and an independent model of the same task repeats many of the owner's
  mistakes (confusable digits), at a rate that differs from one model to the next, so no null is valid
  without independent models. Without the verifier's `references` the method is **score only**: its
  Verdict has owned=False, p_value=1.0, details["score_only"]=True and the reason; it enters ROC scoring and
  never accuses. With references the agreement count is judged as c-examples judges match counts (a
  beta-binomial fitted conservatively to the references' counts, never below the rank p-value
  (1 + #{references agreeing at least as often}) / (R + 1)), so reaching alpha needs R >= 1/alpha - 1.
  The score baselines (modeldiff, sac) take the larger of the rank p-value and a conservative normal null's
  tail (`stats.normal_reference_pvalue`). Every baseline checks that a reference pool covers the suspect
  (`references.coverage`: refused when the suspect's accuracy is outside the pool's, flagged otherwise) and
  records the pool's manifest digest and coverage in the verdict's details and the evidence transcript.
- The key keeps at most `n` misclassified inputs (a seeded random choice among all of them).
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
from ..schema import param, secret_seed_param
from ..suspect import Suspect
from ..verdict import Verdict
from . import register
from .peer import (
    DataBaseline,
    data_name,
    decide_baseline,
    evidence_hooks,
    label_matches,
    misclassified,
    model_signature,
    owner_data,
    seeded_subset,
)


# ---------------------------------------------------------------------- AKH
@register("akh", family="fingerprint", access="labels")
@dataclass
class AKH(DataBaseline):
    """The owner's misclassified test inputs and its wrong labels; score = the suspect's agreement rate."""

    n: int = param(100, "most misclassified inputs kept in the key", lo=1, hi=validate.MAX_COUNT)
    seed: int = secret_seed_param("random seed of the choice among misclassified inputs")

    key_tensors = ("inputs", "labels")
    recheck, reanswer = evidence_hooks("akh", label_matches, labels=True)

    def extract(self, model: nn.Module, input_spec: Any, progress: Any = None) -> Key:
        """The owner's misclassified inputs of the data set's split and the owner's (wrong) labels on them."""
        spec = as_input_spec(input_spec)
        sig = model_signature(model, "akh", spec.shape)
        x, y = owner_data("akh", self.data, self.data_seed, self.split, input_spec, model)
        pred, wrong = misclassified(model, x, y)
        if len(wrong) == 0:
            raise ModelError(f"the owner misclassifies none of the {len(x)} inputs of the '{self.split}' split; "
                             "use a larger split or another data set (data=NAME)")
        pick = seeded_subset(wrong, int(self.n), torch.Generator().manual_seed(int(self.seed)))
        params = {"n": len(pick), "n_requested": int(self.n), "data": data_name(self.data, input_spec, model),
                  "split": self.split,
                  "data_seed": int(self.data_seed), "seed": int(self.seed), "inputs_seen": len(x),
                  "owner_error_rate": len(wrong) / len(x)}
        return Key("akh", params=params, tensors={"inputs": x[pick].float(), "labels": pred[pick].long(),
                                                  "true_labels": y[pick].long()}, signature=sig)

    def decide(self, suspect: Suspect, key: Key, rule: dict[str, Any]) -> Verdict:
        """Agreement of the suspect's labels with the owner's wrong labels."""
        return decide_baseline("akh", label_matches, True, suspect, key, rule, self.key_tensors)
