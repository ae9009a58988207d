import itertools

import numpy as np
import pytest

from modelseal.errors import ModelSealError
from modelseal.methods.deepmarks.codes import PRIMES, and_acc_accuse, design_for_users, projective_plane


@pytest.mark.parametrize("q", PRIMES)
def test_projective_plane_is_a_v_k_1_design(q):
    d = projective_plane(q)
    n = d.incidence.astype(int)
    assert (d.v, d.k) == (q * q + q + 1, q + 1)
    pairs = n @ n.T
    assert (pairs[~np.eye(d.v, dtype=bool)] == 1).all()  # every pair of points in exactly one block
    assert (n.sum(0) == q + 1).all() and (n.sum(1) == q + 1).all()


@pytest.mark.parametrize("q", PRIMES)
def test_codewords_have_k_zeros_and_are_distinct(q):
    d = projective_plane(q)
    cb = d.codebook()
    assert cb.shape == (d.v, d.v)
    assert ((cb == 0).sum(1) == d.k).all()
    assert len({row.tobytes() for row in cb}) == d.v


@pytest.mark.parametrize("q", [2, 3])
def test_and_of_k_minus_1_codewords_never_frames_an_innocent_exhaustive(q):
    cb = projective_plane(q).codebook()
    k = q + 1
    for size in range(1, k):
        for coal in itertools.combinations(range(len(cb)), size):
            assert and_acc_accuse(cb[list(coal)].min(0), cb) == sorted(coal)


@pytest.mark.parametrize("q", [5, 7, 13])
def test_and_of_k_minus_1_codewords_never_frames_an_innocent_random(q):
    cb = projective_plane(q).codebook()
    rng = np.random.default_rng(q)
    for _ in range(300):
        coal = sorted(rng.choice(len(cb), size=int(rng.integers(1, q + 1)), replace=False).tolist())
        assert and_acc_accuse(cb[coal].min(0), cb) == coal


def test_design_for_users_picks_the_smallest_plane():
    assert design_for_users(31).v == 31
    assert design_for_users(32).v == 57
    assert design_for_users(1).v == 7
    assert design_for_users(183).v == 183


@pytest.mark.parametrize("users", [184, 0])
def test_design_for_users_refuses_impossible_counts(users):
    with pytest.raises(ModelSealError, match="user"):
        design_for_users(users)


def test_non_prime_order_is_refused():
    with pytest.raises(ModelSealError, match="prime"):
        projective_plane(4)
