import numpy as np
import pytest
from scipy import stats as st

from modelseal import stats
from modelseal.verdict import Verdict


def test_binomial_tail_matches_scipy_and_edges():
    assert stats.binomial_tail(6, 6, 0.1) == pytest.approx(1e-6)
    assert stats.binomial_tail(5, 20, 0.1) == pytest.approx(st.binom.sf(4, 20, 0.1))
    assert stats.binomial_tail(0, 10, 0.3) == 1.0
    assert stats.binomial_tail(11, 10, 0.3) == 0.0
    with pytest.raises(ValueError):
        stats.binomial_tail(1, 10, 1.5)


def test_min_queries():
    assert stats.min_queries(0.1, 1e-6) == 6
    assert stats.min_queries(0.5, 0.05) == 5


def test_permutation_pvalue_has_plus_one_correction():
    assert stats.permutation_pvalue(10.0, np.zeros(99)) == pytest.approx(0.01)
    assert stats.permutation_pvalue(-1.0, np.zeros(9)) == 1.0
    with pytest.raises(ValueError):
        stats.permutation_pvalue(1.0, [])


def test_normal_reference_pvalue_is_never_below_the_rank_pvalue_and_needs_a_margin():
    rng = np.random.default_rng(0)
    refs = rng.normal(0.9, 0.01, 99)
    top = float(refs.max())
    # just above every reference: the rank p-value is its floor 0.01, the normal tail keeps it above alpha
    p = stats.normal_reference_pvalue(top + 1e-6, refs)
    assert p > 0.01 and p >= stats.permutation_pvalue(top + 1e-6, refs)
    # far beyond the references' spread: the rank floor
    assert stats.normal_reference_pvalue(1.0, refs) == pytest.approx(0.01)
    thr = stats.normal_reference_threshold(refs, 0.01)
    assert top < thr < 1.0
    assert stats.normal_reference_pvalue(thr + 1e-9, refs) <= 0.01 < stats.normal_reference_pvalue(thr - 1e-3, refs)
    # under the null (a score drawn like the references) it accuses at most at rate alpha
    draws = [stats.normal_reference_pvalue(float(x), rng.normal(0.9, 0.01, 99)) for x in rng.normal(0.9, 0.01, 2000)]
    assert np.mean(np.array(draws) <= 0.01) <= 0.01
    # fewer than 3 references: the rank p-value alone
    assert stats.normal_reference_pvalue(2.0, [0.1, 0.2]) == pytest.approx(1 / 3)


def test_threshold_and_auc_and_uniqueness():
    assert stats.roc_auc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert stats.roc_auc([0.1], [0.9]) == 0.0
    assert stats.uniqueness_score([0.9, 1.0], [0.1, 0.3]) == pytest.approx(0.75)


def test_verdict_to_dict_and_validation():
    v = Verdict("x", True, 1.0, 0.5, 1e-7, queries=6, details={"a": np.float32(1.5)})
    d = v.to_dict()
    assert d["owned"] is True and d["details"]["a"] == 1.5 and d["queries"] == 6
    assert "OWNED" in v.summary()
    with pytest.raises(ValueError):
        Verdict("x", False, 0.0, 0.5, float("nan"))
