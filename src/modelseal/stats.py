"""Statistics shared by every method: tail probabilities, permutation tests, thresholds from null
scores, ROC AUC, and the Uniqueness Score of characteristic-example fingerprints."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats as _st


def binomial_tail(matches: int, n: int, p: float) -> float:
    """P[Binom(n, p) >= matches]: the chance an independent model matches at least this many."""
    if n < 0 or matches < 0:
        raise ValueError("matches and n must be non-negative")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must lie in [0, 1], got {p}")
    if matches <= 0:
        return 1.0
    if matches > n:
        return 0.0
    return float(min(1.0, max(0.0, _st.binom.sf(matches - 1, n, p))))


def min_queries(p: float, alpha: float) -> int:
    """Smallest n for which n matches out of n reach p-value <= alpha under Binom(n, p)."""
    if not 0 < p < 1:
        raise ValueError("p must lie strictly between 0 and 1")
    return int(np.ceil(np.log(alpha) / np.log(p) - 1e-12))


def permutation_pvalue(statistic: float, null: np.ndarray | Sequence[float]) -> float:
    """One-sided permutation p-value with the +1 correction: (1 + #{null >= stat}) / (1 + n)."""
    null = np.asarray(null, dtype=float)
    if null.size == 0:
        raise ValueError("null distribution is empty")
    return float((1 + np.sum(null >= statistic)) / (1 + null.size))


def threshold_from_null(null_scores: Sequence[float], alpha: float) -> float:
    """Score above which at most a fraction alpha of the null scores lie (empirical 1-alpha quantile)."""
    null = np.asarray(null_scores, dtype=float)
    if null.size == 0:
        raise ValueError("need at least one null score")
    return float(np.quantile(null, 1.0 - alpha, method="higher"))


def roc_auc(positive_scores: Sequence[float], negative_scores: Sequence[float]) -> float:
    """ROC AUC of a score separating positives (derived models) from negatives (independent ones)."""
    from sklearn.metrics import roc_auc_score

    pos, neg = list(positive_scores), list(negative_scores)
    if not pos or not neg:
        raise ValueError("need at least one positive and one negative score")
    y = [1] * len(pos) + [0] * len(neg)
    return float(roc_auc_score(y, pos + neg))


def uniqueness_score(robustness: float | Sequence[float], transferability: float | Sequence[float]) -> float:
    """Uniqueness Score (Wang et al. 2021) = mean robustness - mean transferability.

    Robustness is the fingerprint match rate on pruned / fine-tuned copies of the owner model;
    transferability is the match rate on independently trained models.
    """
    return float(np.mean(robustness) - np.mean(transferability))
