"""What the four peer baselines (akh, ipguard, modeldiff, sac) share: where their data come from
(`owner_data`), how a suspect's outputs are read (`ask`, `probabilities`), their reference models
(`references_of`, with the pool's coverage of the suspect) and their verdict (`baseline_verdict`: score only
without references, else a reference null), the evidence hooks, and the base classes `PeerBaseline` and
`DataBaseline`. Each baseline's own module cites its paper and lists its deviations.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from .. import stats, validate
from ..data import Meta, as_input_spec, as_tensors
from ..errors import KeyFormatError, ModelError, ModelSealError, SuspectError
from ..keys import Key
from ..models import signature_of
from ..schema import param, verifier, vparam
from ..suspect import Suspect, as_reference
from ..train import predict
from ..verdict import Verdict
from .base import Fingerprint

MAX_REFERENCES = 1000
SPLITS = ("test", "attacker", "owner")


# ---------------------------------------------------------------------- helpers shared by the baselines
def data_name(data: str | None, input_spec: Any, model: Any) -> str | None:
    """Where the owner's inputs come from: `data`, else the input specification's data set (a Meta), else the
    data set the model file's header names (`modelseal train` records it)."""
    if data is not None:
        return data
    if isinstance(input_spec, Meta):
        return input_spec.name
    recorded = (getattr(model, "modelseal_extra", None) or {}).get("data")
    return recorded if isinstance(recorded, str) and recorded else None


def owner_data(method: str, data: str | None, data_seed: int, split: str, input_spec: Any, model: Any = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The owner's (x, y) from `data` (a modelseal.data name), else from the data set behind the input
    specification or the model file (`data_name`)."""
    from .. import data as data_mod

    name = data_name(data, input_spec, model)
    if name is None:
        raise ModelSealError(f"{method} needs the owner's test data: give a data set name with data=NAME "
                             f"(CLI: --set data=digits)")
    splits = data_mod.load(name, seed=int(data_seed))
    x, y = as_tensors(getattr(splits, split))
    spec = as_input_spec(input_spec)
    if tuple(x.shape[1:]) != tuple(spec.shape):
        raise ModelSealError(f"data set '{name}' has inputs of shape {tuple(x.shape[1:])} but the model takes "
                             f"{tuple(spec.shape)}; give the owner's own data set with data=NAME")
    return x.float(), y.long()


def misclassified(model: Any, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The owner's labels on `x` and the indices of the inputs it gets wrong."""
    pred = predict(model, x).reshape(len(x), -1).argmax(1)
    return pred, (pred != y).nonzero().flatten()


def seeded_subset(idx: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """At most n of `idx`, drawn with `gen`, in ascending order."""
    return idx[torch.randperm(len(idx), generator=gen)][:n].sort().values


def model_signature(model: Any, method: str, shape: tuple[int, ...]) -> dict[str, Any]:
    """{input_shape, output_size} of the owner; a classifier with at least 2 outputs is required."""
    if not isinstance(model, nn.Module):
        raise ModelError(f"{method} fingerprints an nn.Module, got {type(model).__name__}")
    try:
        sig = signature_of(model, shape)
    except RuntimeError as e:
        raise ModelError(f"the model does not accept inputs of shape {shape} ({str(e).splitlines()[0][:120]}); "
                         "pass the model's own input spec") from None
    if int(sig["output_size"]) < 2:
        raise ModelError(f"{method} needs a classifier with at least 2 outputs, the model has {sig['output_size']}")
    return {"input_shape": list(shape), "output_size": int(sig["output_size"])}


def probabilities(out: torch.Tensor) -> torch.Tensor:
    """Rows as probabilities: kept when they already are (>= 0, summing to 1), else softmax of the logits."""
    x = out.reshape(len(out), -1).double()
    if float(x.min()) >= -1e-6 and bool(((x.sum(1) - 1).abs() <= 1e-3).all()):
        return x.clamp_min(0)
    return x.softmax(1)


def references_of(rule: dict[str, Any], key: Key, suspect: Suspect | None = None
                  ) -> tuple[list[Suspect], dict[str, Any] | None]:
    """The verifier's reference models as Suspects, each checked against the key's signature, and (with a
    `suspect`) whether they cover it (`references.coverage`: refused with ReferencePoolError, or the details
    a verdict records under "reference_pool"); no references: ([], None)."""
    from ..references import as_references, coverage

    refs_given = rule.get("references")
    if refs_given is not None and not isinstance(refs_given, (list, tuple, str, os.PathLike)):
        raise ModelSealError(f"references must be a list of reference models (or their files) or a pool folder, "
                             f"got {type(refs_given).__name__}")
    raw = as_references(refs_given)
    refs = [as_reference(r) for r in raw]
    if len(refs) > MAX_REFERENCES:
        raise ModelSealError(f"at most {MAX_REFERENCES} reference models, got {len(refs)}")
    for r in refs:
        key.check_signature(r.input_shape, r.output_size(probe_shape=tuple(key.signature["input_shape"])))
    pool = coverage(raw, suspect) if refs and suspect is not None else None
    return refs, pool


def budget(s: Suspect, need: int, rule: dict[str, Any], method: str) -> None:
    """SuspectError unless the suspect may be asked `need` inputs under the verifier's and its own budget."""
    allowed = [b for b in (rule.get("max_queries"), s.remaining()) if b is not None]
    if allowed and min(allowed) < need:
        raise SuspectError(f"{method} asks the suspect {need} inputs but only {min(allowed)} queries are allowed; "
                           "raise the budget (--max-queries)")


def baseline_verdict(method: str, score: float, alpha: float, queries: int, details: dict[str, Any],
                     ref_scores: list[float], counts: tuple[int, int, list[int]] | None = None) -> Verdict:
    """The verdict of a peer baseline: score only without references; with them, a reference null.

    `counts` = (matches, n, reference counts) judges a count statistic with the beta-binomial reference null
    of c-examples; otherwise the rank p-value (1 + #{reference scores >= score}) / (R + 1), valid by
    exchangeability of the suspect with R independent references."""
    details = {**details, "references": len(ref_scores)}
    if not ref_scores:
        details.update(score_only=True, reason=(
            f"score only: {method} has no null without independent reference models (independent models of one "
            "task share part of its statistic), so it never accuses; give references (CLI: verify --reference "
            "MODEL) for a p-value"))
        return Verdict(method, owned=False, score=score, threshold=math.inf, p_value=1.0, alpha=alpha,
                       queries=queries, details=details)
    details["reference_scores"] = [float(r) for r in ref_scores]
    if counts is not None:
        from .characteristic import judge_counts

        matches, n, ref_counts = counts
        res = judge_counts(matches, n, ref_counts, alpha)
        details.update({k: v for k, v in res["null"].items() if k != "reference_rates"})
        p, threshold = float(res["p_value"]), float(res["threshold"])
    else:
        p = stats.normal_reference_pvalue(score, ref_scores)
        k = int(math.floor(alpha * (len(ref_scores) + 1) + 1e-12)) - 1  # most references allowed at or above
        desc = sorted(ref_scores, reverse=True)
        threshold = math.inf if k < 0 else (float(np.nextafter(desc[k], math.inf)) if k < len(desc) else -math.inf)
        threshold = max(threshold, stats.normal_reference_threshold(ref_scores, alpha))
        if len(ref_scores) >= 3:
            details.update(null_kind="normal (conservative) and rank", **stats.normal_reference_null(ref_scores))
        else:
            details["null_kind"] = "rank"
    details["p_floor"] = 1.0 / (len(ref_scores) + 1)
    return Verdict(method, owned=bool(p <= alpha), score=score, threshold=threshold, p_value=p, alpha=alpha,
                   queries=queries, details=details)


def unpack(key: Key, method: str, tensors: tuple[str, ...]) -> list[torch.Tensor]:
    """The key's tensors, checked to be present, non-empty and of one length."""
    if key.method != method:
        raise KeyFormatError(f"this is a '{key.method}' key; {method} verification needs a {method} key")
    out = [key.tensors.get(t) for t in tensors]
    got = [t for t in out if t is not None and t.dim() >= 1 and len(t) > 0]
    if len(got) != len(out) or len({len(t) for t in got}) != 1:
        raise KeyFormatError(f"{method} key is malformed (needs {', '.join(tensors)} of one length); extract it again")
    return got


Statistic = Callable[[dict[str, torch.Tensor], Any], tuple[float, int | None, int]]


def ask(suspect: Suspect, inputs: torch.Tensor, labels: bool, outputs: int) -> Any:
    """The suspect's answers as a transcript records them: a list of labels, or a float32 tensor (n, outputs)."""
    if labels:
        return [int(a) for a in suspect.labels(inputs.float()).reshape(-1).tolist()]
    out = suspect.predict(inputs.float())
    if out.dim() < 2 or out.reshape(len(inputs), -1).shape[1] != outputs:
        raise SuspectError("this method needs the suspect's output scores (one per class), got another shape; use a "
                           "suspect that returns logits or probabilities")
    return out.reshape(len(inputs), -1).float()


def judge_answers(method: str, statistic: Statistic, opened: dict[str, torch.Tensor], answers: Any,
                  ref_answers: list[Any], alpha: float, queries: int, details: dict[str, Any]) -> Verdict:
    """The verdict from the suspect's and the references' answers (one function for verify and recheck)."""
    score, matches, n = statistic(opened, answers)
    refs = [statistic(opened, a) for a in ref_answers]
    counts = (int(matches), n, [int(r[1] or 0) for r in refs]) if matches is not None else None
    return baseline_verdict(method, score, alpha, queries, {**details, "n": n}, [r[0] for r in refs], counts)


def evidence_hooks(method: str, statistic: Statistic, labels: bool) -> tuple[Any, Any]:
    """`recheck` and `reanswer` of a baseline whose transcript holds the suspect's and the references' answers.

    The references' answers are the verifier's (taken from the file as recorded, at most MAX_REFERENCES): a
    checker who doubts them judges the suspect again with its own references."""

    def recheck(opened: dict[str, torch.Tensor], transcript: dict[str, Any], public: dict[str, Any],
                rule: dict[str, Any] | None = None) -> dict[str, Any]:
        from ..references import check_recorded_pool
        from . import get

        cls = get(method)
        v = transcript["verifier"]
        if rule is None:  # the recorded values, validated as verify validates them
            r = cls.rule({"alpha": v["alpha"]} if "alpha" in v else {}, error=ValueError)
        else:
            r = cls.rule(rule)
        refs = v.get("reference_answers", [])
        if not isinstance(refs, list) or len(refs) > MAX_REFERENCES:
            raise ValueError(f"the reference answers must be a list of at most {MAX_REFERENCES} (verify's bound)")
        check_recorded_pool(v.get("reference_pool"), len(refs))

        def as_answers(a: Any) -> Any:
            return [int(x) for x in a] if labels else torch.as_tensor(a, dtype=torch.float32)

        verdict = judge_answers(method, statistic, opened, as_answers(transcript["answers"]),
                                [as_answers(a) for a in refs], r["alpha"], 0, {})
        return {"score": verdict.score, "p_value": verdict.p_value, "owned": verdict.owned}

    def reanswer(suspect: Suspect, opened: dict[str, torch.Tensor], transcript: dict[str, Any],
                 public: dict[str, Any]) -> Any:
        outputs = int(opened["outputs"].shape[1]) if "outputs" in opened else 0
        return ask(suspect, opened["inputs"], labels, outputs)

    return staticmethod(recheck), staticmethod(reanswer)


def decide_baseline(method: str, statistic: Statistic, labels: bool, suspect: Suspect, key: Key,
                    rule: dict[str, Any], tensors: tuple[str, ...]) -> Verdict:
    """Ask the suspect (and the verifier's references) the key's inputs and judge the answers."""
    unpack(key, method, tensors)
    inputs = key.tensors["inputs"]
    outputs = int(key.tensors["outputs"].shape[1]) if "outputs" in key.tensors else 0
    refs, pool = references_of(rule, key, suspect)
    budget(suspect, len(inputs), rule, method)
    before = suspect.queries
    answers = ask(suspect, inputs, labels, outputs)
    queries = suspect.queries - before
    ref_answers = [ask(r, inputs, labels, outputs) for r in refs]
    v = judge_answers(method, statistic, dict(key.tensors), answers, ref_answers, rule["alpha"], queries,
                      {} if pool is None else {"reference_pool": pool})

    def enc(a: Any) -> Any:
        return a if labels else a.tolist()

    verifier_part: dict[str, Any] = {"alpha": rule["alpha"], "reference_answers": [enc(a) for a in ref_answers]}
    if pool is not None:  # what the references were (the manifest's digest and coverage): `check` reports it
        verifier_part["reference_pool"] = pool
    v.transcript = {"verifier": verifier_part, "answers": answers}
    return v


def label_matches(opened: dict[str, torch.Tensor], answers: Any) -> tuple[float, int | None, int]:
    """Match rate of label answers with the key's labels (AKH, IPGuard)."""
    lab = opened["labels"].long().reshape(-1)
    got = torch.as_tensor(answers, dtype=torch.int64).reshape(-1)
    if len(got) != len(lab):
        raise ValueError(f"{len(got)} answers for {len(lab)} inputs")
    m = int((got == lab).sum())
    return m / len(lab), m, len(lab)


REFERENCES_MEANING = "independent models, or a reference-pool folder, for a reference null (none: score only)"


class PeerBaseline(Fingerprint):
    """What the peer baselines share: the verifier's rule (reference models make the null; none: score only),
    the capability that keeps them out of the demo, and what a check of their evidence cannot show."""

    peer_baseline: ClassVar[bool] = True
    verify_params = verifier(
        references=vparam(None, REFERENCES_MEANING, "list | str | None", kind="models"),
        max_queries=vparam(None, "most inputs the suspect may be asked (the test needs all of the key's)",
                           "int | None", lo=1, hi=validate.MAX_COUNT, kind="budget"),
    )
    evidence_not_proved = ("the reference models' answers: they are the verifier's, taken from the file as "
                           "recorded (verifier.reference_pool names the pool's manifest by SHA-256 and its coverage "
                           "of the suspect); judge the suspect again with your own references to check the null",)


@dataclass
class DataBaseline(PeerBaseline):
    """A peer baseline whose key is made from the owner's own inputs (a named data set's split)."""

    data: str | None = param(None, "data set of the owner's inputs (a modelseal.data name; none: the input "
                             "specification's data set)")
    split: str = param("test", "split of the data set the inputs come from", choices=SPLITS)
    data_seed: int = param(0, "seed of the data set's owner/attacker/test split", lo=0, hi=2**31 - 1)
