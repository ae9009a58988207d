"""The arena: every protection and peer baseline judged the way the field judges fingerprints — over
populations of derived and independent models, with ROC curves, AUC and the true-positive rate at a fixed
false-positive rate (QuRD, Godinot et al., AAAI 2025: ROC over positive and negative model populations;
WAVES, ICML 2024: TPR at 0.1 % FPR).

The populations come from a bench run (`modelseal bench run` or `modelseal bench arena`), per protection:

- **positives**: the protection's protected model, unattacked and under every attack variant of the scenario
  (every family and strength), that is still *usable* — its accuracy within `REMOVAL_MARGIN` (5 points) of the
  owner's, the margin within which the bench counts an attack as a removal. A derivative the attack damaged
  more than that is left out of the ROC (a thief gains nothing from it) and counted (`damaged`).
- **negatives**: the scenario's independent models (several architectures, seeds, data splits, and students
  extracted from an *independent* model — `[negatives]` `data_seeds`, `students`).
- **relatives** (a scenario with `[negatives] siblings = N`): the owner's public base and its siblings, fine-tuned
  from that base by innocent parties. They are negatives too (a sibling took nothing from the owner), but a
  relative a method accuses shows relatedness, which fingerprints and the lineage test measure by design. So the
  row's metrics are computed twice: on the independent models alone (the columns every scenario has, unchanged
  by siblings) and with the relatives added to the negatives (`*_with_siblings`, plus how many siblings were
  accused at alpha and whether the base was owned). Neither is hidden behind the other.

A key that cannot apply to a model (a white-box key and another architecture: a negative, or a positive the
thief distilled into another architecture) gives no score: such a model is ranked below every scored model
(it can never be accused) and counted (`not_applicable`), so a derived model a method cannot judge is a miss
in its ROC, never left out.

Scores. The ROC ranks models by each verdict's own **score** (the method's similarity statistic: match rate,
correlation, -log10 p for DeepMarks; higher = more like the owner), as QuRD ranks each fingerprint by its own
score; AUC and the ROC are invariant to any increasing transform of it, so methods are comparable on the ROC
axes though their scores are not. "TPR at alpha" uses the verdict itself (owned = p-value <= the verifier's
alpha) and puts the realised false-positive rate on the negatives beside it. Score-only baselines and
c-examples without reference models (they never accuse) enter the ROC and have TPR at alpha 0 (`score_only`).

Resolution. With N negatives the smallest non-zero false-positive rate is 1/N: "TPR at 1 % FPR" with fewer
than 100 negatives is the TPR at zero false positives (the threshold above every negative); the table says
how many negatives each number rests on (`fpr_resolution`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from .outcomes import Row, alpha_of, attack_text, is_relative, mean, survival
from .store import REMOVAL_MARGIN

FPR_POINTS = (0.01, 0.001)  # TPR is reported at these false-positive rates


def _usable(c: Row) -> bool:
    if c.get("attack_name") in (None, "none") or c.get("attacked_acc") is None or c.get("owner_acc") is None:
        return True
    return float(c["attacked_acc"]) >= float(c["owner_acc"]) - REMOVAL_MARGIN


def populations(cells: list[Row], negatives: list[Row]) -> dict[str, dict[str, Any]]:
    """Per protection (locks have no verdict score and are left out): the scored positive and negative rows
    and what was left out, as the module docstring defines them."""
    out: dict[str, dict[str, Any]] = defaultdict(lambda: {"positives": [], "negatives": [], "damaged": [],
                                                          "relatives": [], "not_applicable": 0})
    for c in cells:
        if c["status"] != "ok" or c["family"] == "lock":
            continue
        pop = out[c["protection"]]
        pop["not_applicable"] += _score(c) is None
        (pop["positives"] if _usable(c) else pop["damaged"]).append(c)
    for n in negatives:
        if n["status"] != "ok" or n["protection"] not in out:
            continue
        pop = out[n["protection"]]
        if is_relative(n):
            pop["relatives"].append(n)
            continue
        pop["not_applicable"] += _score(n) is None
        pop["negatives"].append(n)
    return dict(out)


def _score(r: Row) -> float | None:
    s = r.get("score")
    return None if s is None or not math.isfinite(float(s)) else float(s)


def ranked_scores(pos: list[Row], neg: list[Row]) -> tuple[list[float], list[float]]:
    """The ROC scores of the rows: each verdict's score; a model the key cannot judge (no score) gets one
    below every scored model of the two populations."""
    finite = [s for r in pos + neg if (s := _score(r)) is not None]
    floor = (min(finite) - 1.0) if finite else 0.0

    def score(r: Row) -> float:
        s = _score(r)
        return floor if s is None else s

    return [score(r) for r in pos], [score(r) for r in neg]


def roc(pos: list[float], neg: list[float]) -> dict[str, Any]:
    """ROC curve, AUC and TPR at the `FPR_POINTS` of scores `pos` (derived) vs `neg` (independent)
    (sklearn.metrics; the TPR at FPR f is the highest TPR of a threshold whose FPR is at most f)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    if not pos or not neg:
        raise ValueError("need at least one positive and one negative score")
    y = [1] * len(pos) + [0] * len(neg)
    s = [float(v) for v in pos + neg]
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    out: dict[str, Any] = {"auc": float(roc_auc_score(y, s)), "fpr": [float(v) for v in fpr],
                           "tpr": [float(v) for v in tpr]}
    for f in FPR_POINTS:
        out[f"tpr_at_{f:g}"] = float(max(t for x, t in zip(fpr, tpr, strict=True) if x <= f + 1e-12))
    return out


def _is_baseline(method: str) -> bool:
    from .. import methods
    from ..errors import RegistryError

    try:
        return bool(getattr(methods.get(method), "peer_baseline", False))
    except RegistryError:
        return False


def arena(cells: list[Row], negatives: list[Row], artifacts: list[Row] | None = None,
          keys: dict[str, dict[str, Any]] | None = None) -> list[Row]:
    """One row per protection with positives and negatives: the arena's metrics (module docstring)."""
    protect_s: dict[str, list[float]] = defaultdict(list)
    for a in artifacts or []:
        if a["kind"] == "protection" and a.get("wall_s") is not None:
            protect_s[str(a["info"].get("protection", a["label"]))].append(float(a["wall_s"]))
    cheapest = {r["protection"]: r.get("cheapest_removal") for r in survival(cells, negatives, keys)}
    rows = []
    for prot, pop in sorted(populations(cells, negatives).items()):
        pos, neg = pop["positives"], pop["negatives"]
        if not pos and not neg:
            continue
        method = (pos or neg)[0]["method"]
        row: Row = {"protection": prot, "method": method, "peer_baseline": _is_baseline(method),
                    "positives": len(pos), "negatives": len(neg), "damaged": len(pop["damaged"]),
                    "not_applicable": pop["not_applicable"],
                    "fpr_resolution": (1.0 / len(neg)) if neg else None,
                    "tpr_at_alpha": mean([float(bool(c["owned"])) for c in pos]),
                    "realised_fpr": mean([float(bool(n["owned"])) for n in neg]),
                    "alpha": sorted({alpha_of(r) for r in pos + neg}),
                    "protect_s": mean(protect_s.get(prot, [])),
                    "verify_queries": mean([r["queries"] for r in pos + neg if r.get("queries") is not None]),
                    "cheapest_removal": cheapest.get(prot),
                    # never accuses: a score-only verdict, or a method that judged none of these models
                    "score_only": (any(bool((r.get("detail") or {}).get("score_only")) for r in pos + neg)
                                   or all(bool((r.get("detail") or {}).get("not_judged")) for r in pos + neg)),
                    "auc": None, "fpr": [], "tpr": [], **{f"tpr_at_{f:g}": None for f in FPR_POINTS}}
        if pos and neg:
            row.update(roc(*ranked_scores(pos, neg)))
        row.update(_with_relatives(pos, neg, pop["relatives"]))
        row["missed"] = sorted({attack_text(c) for c in pos if not c["owned"]})
        rows.append(row)
    return rows


def _with_relatives(pos: list[Row], neg: list[Row], rel: list[Row]) -> Row:
    """The row's numbers with the owner's relatives added to the negatives (module docstring); None without
    relatives."""
    sibs = [n for n in rel if n.get("kind") == "sibling"]
    base = [n for n in rel if n.get("kind") == "base"]
    out: Row = {"siblings": len(sibs), "siblings_accused": sum(bool(n["owned"]) for n in sibs),
                "base_owned": bool(base[0]["owned"]) if base else None,
                "negatives_with_siblings": len(neg) + len(rel) if rel else None,
                "realised_fpr_with_siblings": mean([float(bool(n["owned"])) for n in neg + rel]) if rel else None,
                "auc_with_siblings": None, **{f"tpr_at_{f:g}_with_siblings": None for f in FPR_POINTS}}
    if rel and pos:
        r = roc(*ranked_scores(pos, neg + rel))
        out["auc_with_siblings"] = r["auc"]
        out.update({f"tpr_at_{f:g}_with_siblings": r[f"tpr_at_{f:g}"] for f in FPR_POINTS})
    return out


def arena_from_db(db_path: Any) -> list[Row]:
    """The arena rows of a results database."""
    from .outcomes import read_rows

    _meta, cells, negatives, artifacts, keys = read_rows(db_path)
    return arena(cells, negatives, artifacts, keys)
