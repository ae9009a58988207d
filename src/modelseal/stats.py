"""Every statistic modelseal uses, in one place: binomial and beta-binomial tails, the Clopper-Pearson
bound and the conservative beta-binomial null from reference models, the exact sequential binomial test
(min-p adjustment over planned looks) and its replay from a transcript, correlation tails, the paired
permutation test (exact for small n, else Hoeffding's normal tail floored at 1/n!), the sequential Monte Carlo
permutation p-value (Besag-Clifford), the sign test, fixed points of random matchings, the KS uniformity
check, Holm-Bonferroni and intersection-union combination, thresholds from null scores, ROC AUC and the
Uniqueness Score. Methods compute their features; the decisions are made here."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

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


def monte_carlo_pvalue(statistic: float, draw: Callable[[int], np.ndarray], total: int, stop_after: int = 10,
                       chunk: int = 8192) -> dict[str, Any]:
    """Exact Monte Carlo p-value of `statistic` against up to `total` null draws (`draw(k)` returns k of them),
    with Besag and Clifford's sequential rule (Biometrika 78, 1991): stop at the `stop_after`-th draw that
    reaches the statistic, after t draws, with p = stop_after / t; otherwise p = (1 + #reached) / (1 + total).
    Valid (P[p <= a] <= a) at every level either way; the smallest p it can give is 1 / (total + 1)."""
    if total < 1 or stop_after < 1:
        raise ValueError("total and stop_after must be at least 1")
    reached, done = 0, 0
    while done < total:
        k = min(chunk, total - done)
        hits = np.asarray(draw(k), dtype=float) >= statistic
        if hits.shape != (k,):
            raise ValueError(f"draw({k}) returned shape {hits.shape}")
        if reached + int(hits.sum()) >= stop_after:
            t = done + int(np.flatnonzero(np.cumsum(hits) == stop_after - reached)[0]) + 1
            return {"p_value": stop_after / t, "draws": t, "reached": stop_after, "stopped_early": True,
                    "p_floor": 1.0 / (total + 1)}
        reached += int(hits.sum())
        done += k
    return {"p_value": (1 + reached) / (1 + total), "draws": total, "reached": reached, "stopped_early": False,
            "p_floor": 1.0 / (total + 1)}


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


# ------------------------------------------------------------------------------------------- binomial family
def clopper_pearson_upper(matches: int, trials: int, confidence: float = 1.0 - 1e-3) -> float:
    """One-sided Clopper-Pearson upper confidence bound of a binomial rate."""
    if trials <= 0 or matches >= trials:
        return 1.0
    return float(_st.beta.ppf(confidence, matches + 1, trials - matches))


def beta_binomial_tail(matches: int, n: int, a: float, b: float) -> float:
    """P[BetaBinom(n, a, b) >= matches]."""
    if matches <= 0:
        return 1.0
    if matches > n:
        return 0.0
    return float(min(1.0, max(0.0, _st.betabinom.sf(matches - 1, n, a, b))))


def beta_binomial_null(counts: Sequence[int], n: int, rho_floor: float = 0.1, floor: float = 0.01,
                       confidence: float = 1.0 - 1e-3) -> dict[str, float]:
    """Conservative beta-binomial null from R reference models' match counts out of `n` items each.

    Mean: the largest of the highest single reference rate, the Clopper-Pearson upper bound (at
    `confidence`) of the pooled rate, and `floor`. Overdispersion rho (the between-model share of the
    variance): the method-of-moments estimate, never below `rho_floor`. Returns the parameters a, b."""
    if not counts or n < 1:
        raise ValueError("need at least one reference count and n >= 1")
    rates = [c / n for c in counts]
    pooled = sum(counts) / (n * len(counts))
    mu = min(0.99, max(max(rates), clopper_pearson_upper(sum(counts), n * len(counts), confidence), floor))
    rho_hat = 0.0
    if len(rates) >= 2 and 0 < pooled < 1 and n > 1:
        m = sum(rates) / len(rates)
        var = sum((r - m) ** 2 for r in rates) / (len(rates) - 1)
        rho_hat = (n * var / (pooled * (1 - pooled)) - 1) / (n - 1)
    rho = min(0.99, max(rho_hat, rho_floor))
    scale = (1 - rho) / rho
    return {"null_rate": pooled, "null_p0": mu, "null_rho": rho, "null_rho_estimate": rho_hat,
            "null_a": mu * scale, "null_b": (1 - mu) * scale}


def normal_reference_null(scores: Sequence[float], confidence: float = 1.0 - 1e-3) -> dict[str, float]:
    """Conservative normal null of a similarity score from R >= 3 reference models' scores: mean = the
    one-sided upper confidence bound (Student t, at `confidence`) of the references' mean, sd = the upper
    confidence bound (chi-square) of their standard deviation. The score counterpart of `beta_binomial_null`."""
    x = np.asarray(scores, dtype=float)
    r = x.size
    if r < 3:
        raise ValueError("a normal reference null needs at least 3 reference scores")
    m, sd = float(x.mean()), float(x.std(ddof=1))
    sd_up = max(sd, 1e-12) * math.sqrt((r - 1) / float(_st.chi2.ppf(1.0 - confidence, r - 1)))
    m_up = m + float(_st.t.ppf(confidence, r - 1)) * max(sd, 1e-12) / math.sqrt(r)
    return {"null_mean": m_up, "null_sd": sd_up, "null_mean_estimate": m, "null_sd_estimate": sd}


def normal_reference_pvalue(score: float, scores: Sequence[float], confidence: float = 1.0 - 1e-3) -> float:
    """P-value of `score` against R reference scores: the larger of the rank p-value (1 + #{>= score}) / (R + 1)
    (valid by exchangeability alone) and the upper tail of `normal_reference_null` (needs R >= 3; below that
    the rank p-value alone). The rank p-value is exact, so exchangeable independents reach alpha = 1/(R + 1)
    at rate alpha; the normal tail demands that an accused suspect lie beyond the references' spread, not
    merely above their maximum."""
    p = permutation_pvalue(score, scores)
    if len(scores) >= 3:
        null = normal_reference_null(scores, confidence)
        p = max(p, float(_st.norm.sf((score - null["null_mean"]) / null["null_sd"])))
    return p


def normal_reference_threshold(scores: Sequence[float], alpha: float, confidence: float = 1.0 - 1e-3) -> float:
    """The smallest score the normal part of `normal_reference_pvalue` accuses at `alpha` (inf for R < 3)."""
    if len(scores) < 3:
        return -math.inf
    null = normal_reference_null(scores, confidence)
    return null["null_mean"] + float(_st.norm.isf(alpha)) * null["null_sd"]


def smallest_significant(n: int, tail: Callable[[int], float], alpha: float) -> int | None:
    """Smallest count m in 0..n with tail(m) <= alpha, or None when no count reaches alpha."""
    for m in range(n + 1):
        if tail(m) <= alpha:
            return m
    return None


class SequentialBinomial:
    """Exact min-p adjustment for looks at cumulative sizes `schedule` under matches ~ Bernoulli(p0).

    `adjusted(t)` = P_null[some look has nominal tail P[Binom(n_j, p0) >= S_j] <= t]. Since the reported
    p-value `adjusted(smallest nominal tail so far)` never falls below `adjusted(min over all looks)`,
    whose law is super-uniform, it is valid at any (data-dependent) stopping time.
    """

    def __init__(self, schedule: Sequence[int], p0: float):
        if not schedule or any(b <= a for a, b in zip([0, *schedule], schedule, strict=False)):
            raise ValueError("schedule must be strictly increasing positive look sizes")
        self.schedule, self.p0 = [int(s) for s in schedule], float(p0)
        # tails[j][c] = P[Binom(n_j, p0) >= c]; the same numbers serve the design and the observations.
        self.tails = [np.minimum(1.0, _st.binom.sf(np.arange(s + 1) - 1, s, p0)) for s in self.schedule]
        incs = np.diff([0, *self.schedule])
        self._pmf = {int(d): _st.binom.pmf(np.arange(d + 1), d, p0) for d in set(incs.tolist())}
        self._incs = incs.tolist()
        self.adjusted = lru_cache(maxsize=4096)(self._adjusted)

    def nominal(self, look: int, matches: int) -> float:
        return float(self.tails[look][matches])

    def _adjusted(self, t: float) -> float:
        dist = np.ones(1)
        crossed = 0.0
        tol = t * (1 + 1e-9)
        for j, d in enumerate(self._incs):
            dist = np.convolve(dist, self._pmf[d])
            c = int(np.argmax(self.tails[j] <= tol)) if self.tails[j][-1] <= tol else len(dist)
            crossed += float(dist[c:].sum())
            dist[c:] = 0.0
        return float(min(1.0, crossed))


@lru_cache(maxsize=64)
def sequential_design(schedule: tuple[int, ...], p0: float) -> SequentialBinomial:
    return SequentialBinomial(schedule, p0)


def sequential_schedule(budget: int, batch: int) -> list[int]:
    """Look sizes batch, 2*batch, ..., budget."""
    return list(range(batch, budget, batch)) + [budget]


def sequential_test(answer: Callable[[int, int], np.ndarray], budget: int, p0: float, alpha: float,
                    batch: int, available: int | None = None) -> dict[str, Any]:
    """Sequential binomial test: `answer(lo, hi)` returns match booleans of items lo..hi-1 (in order).

    Looks are at batch, 2*batch, ..., budget. Stops when the adjusted p-value <= alpha ("owned"), when
    alpha can no longer be reached even if every remaining item matched ("futile"), or at the budget.
    When even `budget` matches out of `budget` cannot reach alpha, nothing is asked and `stop` says so.
    `available` (a recorded transcript's length, at least the first look) stops the test at its last
    complete look inside it ("transcript ends").
    """
    if budget < 1:
        return {"owned": False, "p_value": 1.0, "p_nominal": 1.0, "score": 0.0, "threshold": float("inf"),
                "matches": 0, "queried": 0, "looks": 0, "planned_looks": 0, "stop": "no query budget",
                "reachable": False}
    schedule = sequential_schedule(budget, batch)
    seq = sequential_design(tuple(schedule), float(p0))
    base = {"planned_looks": len(schedule), "batch": batch, "budget": budget}
    if seq.adjusted(seq.nominal(len(schedule) - 1, budget)) > alpha:
        return {**base, "owned": False, "p_value": 1.0, "p_nominal": 1.0, "score": 0.0,
                "threshold": float("inf"), "matches": 0, "queried": 0, "looks": 0, "reachable": False,
                "stop": f"unreachable: even {budget} matches out of {budget} cannot reach alpha = {alpha:g}; "
                        "raise the query budget"}
    matches, queried, best, looks = 0, 0, 1.0, 0
    stop = "budget"
    for j, size in enumerate(schedule):
        if available is not None and size > available:
            stop = "transcript ends"
            break
        hits = np.asarray(answer(queried, size), dtype=bool)
        if hits.shape != (size - queried,):
            raise ValueError(f"expected {size - queried} answers, got {hits.shape}")
        matches += int(hits.sum())
        queried, looks = size, j + 1
        nominal = seq.nominal(j, matches)
        best = min(best, nominal)
        p_adj = seq.adjusted(best)
        if p_adj <= alpha:
            stop = "owned"
            break
        if j + 1 < len(schedule):
            rest = budget - queried
            if seq.adjusted(min(best, seq.nominal(len(schedule) - 1, matches + rest))) > alpha:
                stop = "futile"
                break
    if looks == 0:
        raise ValueError(f"the transcript holds {available} answers, fewer than the first look ({schedule[0]})")
    last = looks - 1
    need = next((c for c in range(queried + 1) if seq.adjusted(min(best, seq.nominal(last, c))) <= alpha), None)
    return {**base, "owned": p_adj <= alpha, "p_value": p_adj, "p_nominal": nominal, "p_nominal_min": best,
            "score": matches / queried, "threshold": (need / queried) if need is not None else float("inf"),
            "matches": matches, "queried": queried, "looks": looks, "stop": stop, "reachable": True}


def sequential_replay(hits: Sequence[bool], budget: int, p0: float, alpha: float, batch: int,
                      exact: bool = True) -> dict[str, Any]:
    """Recompute a sequential test from its recorded answers (a transcript, in the committed order).

    exact=True: the same test as recorded — ValueError unless it stops exactly where the transcript ends.
    exact=False (a checker's own rule on someone else's transcript): the test runs over the recorded
    answers and, when it would ask past them, stops at its last complete look inside the transcript
    (`stop` = "transcript ends"). Either way the reported p-value is valid, since the min-p adjusted
    p-value is valid at any stopping time, chosen by anyone, as long as the answers are a prefix of the
    committed order."""
    arr = np.asarray(hits, dtype=bool)
    if not exact:
        if budget < 1:
            raise ValueError("the query budget must be at least 1")
        schedule = sequential_schedule(budget, batch)
        if schedule[0] > len(arr):
            return {"owned": False, "p_value": 1.0, "p_nominal": 1.0, "score": 0.0, "threshold": float("inf"),
                    "matches": 0, "queried": 0, "looks": 0, "planned_looks": len(schedule),
                    "stop": f"transcript ends: {len(arr)} answers, before the first look of {schedule[0]}",
                    "reachable": False}

    def answer(lo: int, hi: int) -> np.ndarray:
        if hi > len(arr):
            raise ValueError(f"the transcript holds {len(arr)} answers but the test asks for {hi}")
        return arr[lo:hi]

    if exact:
        res = sequential_test(answer, budget, p0, alpha, batch)
        if res["queried"] != len(arr):
            raise ValueError(f"the transcript holds {len(arr)} answers but the test stops after {res['queried']}")
        return res
    # the checker's rule: the same test (the same planned looks), cut at the transcript's end
    return sequential_test(answer, budget, p0, alpha, batch, available=len(arr))


# ------------------------------------------------------------------------------------------- correlation
def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two vectors (0 when either is constant)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    a, b = a - a.mean(), b - b.mean()
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / den) if den > 1e-12 else 0.0


def correlation_log_tail(r: float, v: int) -> float:
    """log P[R >= r] for the Pearson correlation of an isotropic Gaussian vector in R^v with a fixed one."""
    r = min(r, 1.0 - 1e-15)
    t = r * math.sqrt(v - 2) / math.sqrt(1.0 - r * r)
    return float(_st.t.logsf(t, v - 2))


def log_count_subsets(total: int, max_size: int) -> float:
    """log of the number of subsets of 1..max_size items out of `total` (a Bonferroni factor)."""
    logs = [math.lgamma(total + 1) - math.lgamma(s + 1) - math.lgamma(total - s + 1)
            for s in range(1, min(max_size, total) + 1)]
    m = max(logs)
    return m + math.log(sum(math.exp(x - m) for x in logs))


def rank_standardize(a: np.ndarray) -> np.ndarray:
    """Ranks per column, centred and scaled to unit sd (constant columns become 0)."""
    r = _st.rankdata(a, axis=0)
    r = r - r.mean(0, keepdims=True)
    sd = r.std(0, keepdims=True)
    return np.where(sd > 0, r / np.where(sd > 0, sd, 1), 0.0)


# Keys of at most this many fingerprints get the exact permutation p-value (8! = 40,320 permutations).
PERMUTATION_EXACT_MAX = 8


@lru_cache(maxsize=8)
def _all_permutations(n: int) -> np.ndarray:
    return np.array(list(itertools.permutations(range(n))), dtype=np.intp)


def permutation_floor(n: int) -> float:
    """1 / n!: the smallest p-value any exact permutation test on n paired rows can give."""
    return math.exp(-math.lgamma(n + 1))


def paired_permutation_test(a: np.ndarray, b: np.ndarray, margin: float = 0.0, permutations: int = 0,
                            seed: int = 0) -> dict[str, Any]:
    """Test H0: correlation(rows of a paired with rows of b) <= `margin`, against row permutations.

    `a`, `b` are (n, d) and column-centred. The statistic is the linear permutation statistic
    S = sum_i <a_i, b_i> = sum_i c[i, i] with c = a b^T doubly centred; its permutation mean (0) and
    variance (sum c^2 / (n - 1)) are exact. For n <= PERMUTATION_EXACT_MAX every permutation is
    enumerated and the p-value is exact, P_pi[S_pi >= S - margin * norm]. For larger n, Hoeffding's
    combinatorial central limit theorem gives the normal tail of (S - margin * norm) / sd, and the
    p-value is never below 1 / n! (the floor of the exact test: only the identity pairing is sure to
    reach the observed S). `permutations` > 0 adds a Monte Carlo p-value against 0 as a check (it
    cannot go below 1 / (permutations + 1)).
    """
    n = a.shape[0]
    c = a @ b.T
    stat = float(np.trace(c))
    var = float((c ** 2).sum() / (n - 1))
    norm = math.sqrt(float((a ** 2).sum() * (b ** 2).sum()))
    score = stat / norm if norm > 0 else 0.0
    floor = permutation_floor(n)
    z = (stat - margin * norm) / math.sqrt(var) if var > 0 else 0.0
    if var <= 0:
        p, method = 1.0, "constant"
    elif n <= PERMUTATION_EXACT_MAX:
        perms = _all_permutations(n)
        null = c[np.arange(n)[None, :], perms].sum(1)
        # ties within rounding count as reaching the observed value (conservative)
        reach = stat - margin * norm - 1e-9 * max(1.0, abs(stat))
        p, method = float(np.mean(null >= reach)), "exact"
    else:
        p = float(min(1.0, max(_st.norm.sf(z), floor)))
        method = "normal tail, floored at 1/n!"
    sd = math.sqrt(var) if var > 0 else 0.0
    out: dict[str, Any] = {"score": score, "p_value": p, "z": z, "z_vs_zero": stat / sd if sd > 0 else 0.0,
                           "margin": margin, "sd": sd, "norm": norm, "p_method": method, "p_floor": floor}
    if permutations > 0 and var > 0:
        rng = np.random.default_rng(seed)
        idx = np.arange(n)
        null = np.array([c[idx, rng.permutation(n)].sum() for _ in range(permutations)])
        out["p_monte_carlo_vs_zero"] = permutation_pvalue(stat, null)
        out["permutations"] = permutations
    return out


def paired_permutation_threshold(margin: float, sd: float, norm: float, alpha: float, n: int | None = None
                                 ) -> float:
    """The score at which `paired_permutation_test`'s normal-tail p-value equals alpha (inf when n
    paired rows cannot reach alpha: 1 / n! > alpha)."""
    if norm <= 0 or (n is not None and permutation_floor(n) > alpha):
        return float("inf")
    return float(margin + _st.norm.isf(alpha) * sd / norm)


def sign_test(wins: int, losses: int) -> float:
    """One-sided exact sign (McNemar) test: P[Binom(wins + losses, 1/2) >= wins] (1 without discordant pairs)."""
    if wins < 0 or losses < 0:
        raise ValueError("wins and losses must be non-negative")
    return binomial_tail(wins, wins + losses, 0.5)


def matching_agreement_bound(k: int, m: int, n: int) -> float:
    """P[K >= k] <= C(m, k) (n - k)! / n! for K = the units on which a fixed injection of m units into n agrees
    with a uniformly random one (the union bound over k-sets; about 1/k! when m = n: the rencontres tail)."""
    if not 0 <= m <= n:
        raise ValueError("need 0 <= m <= n")
    if k <= 0:
        return 1.0
    if k > m:
        return 0.0
    log = (math.lgamma(m + 1) - math.lgamma(k + 1) - math.lgamma(m - k + 1)
           + math.lgamma(n - k + 1) - math.lgamma(n + 1))
    return float(min(1.0, math.exp(log)))


def ks_uniform(p_values: Sequence[float]) -> float:
    """Kolmogorov-Smirnov p-value of the hypothesis that `p_values` are U(0, 1) draws."""
    p = np.asarray(p_values, dtype=float)
    if p.size == 0:
        raise ValueError("need at least one p-value")
    return float(_st.kstest(p, "uniform").pvalue)


# ------------------------------------------------------------------------------------------- combining
def intersection_union(p_values: Sequence[float]) -> float:
    """p-value of the intersection-union test (reject only if every H0_r is rejected): max_r p_r, valid
    without any correction (Berger 1982)."""
    if not len(p_values):
        raise ValueError("need at least one p-value")
    return float(max(p_values))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (valid under any dependence), in the input order."""
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    if m == 0:
        return []
    order = np.argsort(p, kind="stable")
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return [float(x) for x in adj]
