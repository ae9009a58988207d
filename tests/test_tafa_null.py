"""TAFA's null: p-values never below the exact permutation floor, (super-)uniform under the null, and a
verifier-set rule (margin floor, minimum key size) that verify and recheck enforce alike."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats as st

import modelseal as ms
from modelseal import stats
from modelseal.methods import tafa as tafa_mod

TAFA = ms.methods.get("tafa")


def _null_p(rng: np.random.Generator, n: int, d: int, margin: float = 0.0) -> float:
    a = stats.rank_standardize(rng.standard_normal((n, d)))
    b = stats.rank_standardize(rng.standard_normal((n, d)))
    return stats.paired_permutation_test(a, b, margin=margin)["p_value"]


@pytest.mark.parametrize("n", [3, 5, 8, 9, 12])
def test_perfect_copy_never_below_exact_floor(n):
    rng = np.random.default_rng(n)
    a = stats.rank_standardize(rng.standard_normal((n, 10)))
    res = stats.paired_permutation_test(a, a.copy())
    assert res["p_value"] >= math.factorial(n) ** -1 * (1 - 1e-9)
    if n <= stats.PERMUTATION_EXACT_MAX:
        assert res["p_method"] == "exact"
        assert res["p_value"] == pytest.approx(1 / math.factorial(n))  # only the identity reaches the max


def test_issue_examples_now_at_the_floor():
    # the issue's cases: n = 3 gave 0.037 (floor 1/3! = 0.167), n = 5 gave 5.8e-4 (floor 1/5! = 8.3e-3)
    rng = np.random.default_rng(0)
    for n in (3, 5):
        a = stats.rank_standardize(rng.standard_normal((n, 4)))
        assert stats.paired_permutation_test(a, a.copy())["p_value"] >= 1 / math.factorial(n) - 1e-12


def test_exact_branch_matches_brute_force():
    rng = np.random.default_rng(1)
    a = stats.rank_standardize(rng.standard_normal((6, 3)))
    b = stats.rank_standardize(a + rng.standard_normal((6, 3)))
    s = float((a * b).sum())
    perms = list(itertools.permutations(range(6)))
    brute = np.mean([float((a * b[list(p)]).sum()) >= s - 1e-9 for p in perms])
    assert stats.paired_permutation_test(a, b)["p_value"] == pytest.approx(brute)


@pytest.mark.parametrize("n", [3, 8, 10, 20, 60, 300])
def test_pvalues_super_uniform_under_the_null(n):
    """P[p <= a] <= a (+ 3 binomial sd) for a in {0.01, 0.05, 0.1}, and at margin 0 a KS test does not
    find p stochastically smaller than uniform, from the smallest key to 300 points."""
    rng = np.random.default_rng(100 + n)
    trials = 300 if n <= 8 else 600
    ps = np.array([_null_p(rng, n, 3) for _ in range(trials)])
    for a in (0.01, 0.05, 0.1):
        assert (ps <= a).mean() <= a + 3 * math.sqrt(a * (1 - a) / trials) + 1e-12, (n, a)
    # one-sided KS: the empirical cdf of p never far above the uniform cdf
    assert st.kstest(ps, "uniform", alternative="greater").pvalue > 1e-3
    # with the verifier's margin the test is conservative
    pm = np.array([_null_p(rng, n, 3, margin=tafa_mod.MIN_MARGIN) for _ in range(trials // 3)])
    assert (pm <= 0.05).mean() <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / len(pm))


def test_kink_statistic_null_through_the_method():
    """Owner kinks against independent random outputs (the method's own path): p super-uniform."""
    gen = torch.Generator().manual_seed(3)
    ps = []
    for _ in range(300):
        owner = torch.randn(5 * 40, 4, generator=gen).double()
        other = torch.randn(5 * 40, 4, generator=gen).double()
        ps.append(tafa_mod.kink_statistic(owner, other)["p_value"])
    ps = np.array(ps)
    for a in (0.01, 0.05, 0.1):
        assert (ps <= a).mean() <= a + 3 * math.sqrt(a * (1 - a) / len(ps))


# ---------------------------------------------------------------------- the verifier's rule
@pytest.fixture(scope="module")
def small_case():
    spec = ms.data.InputSpec((10,), (0.0, 1.0))
    model = ms.models.build("mlp", input_shape=(10,), num_classes=3, seed=0, hidden=(32, 32))
    return model, spec, TAFA(n=5, seed=0).extract(model, spec), TAFA(n=30, seed=0).extract(model, spec)


def test_min_points_default_reaches_default_alpha():
    assert stats.permutation_floor(tafa_mod.DEFAULT_MIN_POINTS) < ms.verdict.DEFAULT_ALPHA
    assert TAFA.verify_params["min_points"].default == tafa_mod.DEFAULT_MIN_POINTS


def test_key_below_the_verifiers_minimum_is_not_judged(small_case):
    model, _, key, _ = small_case
    v = ms.verify(model, key)
    assert not v.judged and not v.owned and v.p_value == 1.0
    assert "min_points=20" in v.details["not_judged"] and v.queries == 0
    # the verifier may lower it; then the exact floor 1/5! keeps it from being owned at 1e-6
    v = ms.verify(model, key, min_points=5)
    assert v.judged and not v.owned and v.p_value >= 1 / 120 - 1e-12
    assert v.details["p_method"] == "exact"
    # (with the margin, permutations within 0.1 of the top also count: 2 of 120 here)
    assert ms.verify(model, key, min_points=5, alpha=0.05).owned


def test_key_cannot_set_the_minimum(small_case):
    model, _, key, _ = small_case
    key = ms.Key("tafa", params={**key.params, "min_points": 3}, tensors=dict(key.tensors), signature=key.signature)
    assert not ms.verify(model, key).judged


@pytest.mark.parametrize("bad", [{"margin": 0.0}, {"margin": 0.01}, {"margin": 1.0}, {"margin": -0.1},
                                 {"min_points": 2}, {"min_points": 2.5}, {"repeats": 0}, {"alpha": 0.0}])
def test_verify_refuses_out_of_range_rule(small_case, bad):
    model, _, _, key = small_case
    with pytest.raises(ms.ModelSealError, match=next(iter(bad))):
        ms.verify(model, key, **bad)


def test_recheck_uses_the_same_rule(small_case):
    model, _, _, key = small_case
    v = ms.verify(model, key)
    opened = {"outputs": key.tensors["outputs"]}
    tr = v.transcript
    again = tafa_mod.recheck(opened, tr, {})
    assert again["p_value"] == pytest.approx(v.p_value, rel=1e-12) and again["owned"] == v.owned
    for bad in ({"margin": 0.0}, {"min_points": 1}, {"alpha": 2.0}):
        with pytest.raises(ValueError):
            tafa_mod.recheck(opened, {**tr, "verifier": {**tr["verifier"], **bad}}, {})
    # a checker that demands more points than the key has gets "not owned"
    strict = tafa_mod.recheck(opened, {**tr, "verifier": {**tr["verifier"], "min_points": 31}}, {})
    assert strict == {"score": 0.0, "p_value": 1.0, "owned": False}
