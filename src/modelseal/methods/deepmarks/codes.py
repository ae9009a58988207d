"""Anti-collusion codes from (v, k, 1) balanced incomplete block designs (projective planes PG(2, q)).

Trappe, Wu, Wang, Liu, "Anti-collusion fingerprinting for multimedia" (IEEE TSP 2003), as used by
DeepMarks: with a (v, k, 1) BIBD of incidence matrix N (points x blocks), user j's codeword is
`1 - N[:, j]` (length v, exactly k zeros). Averaging the copies of at most k - 1 colluders leaves a 1
only where every colluder has a 1 (the AND of their codewords); the zero set of that AND is the union of
the colluders' blocks, and because two blocks share exactly one point no union of k - 1 other blocks
covers an innocent user's k zeros. modelseal uses the projective planes of prime order q, the designs the
paper's default (q = 5: 31 users, 5 colluders) belongs to.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np

from ...errors import ModelSealError

PRIMES = (2, 3, 5, 7, 11, 13)


@dataclass(frozen=True)
class BIBD:
    """A (v, k, 1) design: `incidence[p, b] = 1` iff point p lies in block b (v points, v blocks)."""

    q: int
    incidence: np.ndarray

    @property
    def v(self) -> int:
        return int(self.incidence.shape[0])

    @property
    def k(self) -> int:
        return int(self.incidence[:, 0].sum())

    @property
    def max_colluders(self) -> int:
        return self.k - 1

    def codebook(self, users: int | None = None) -> np.ndarray:
        """AND-ACC codewords, one row per user: row j = 1 - incidence column j (uint8, k zeros each)."""
        users = self.v if users is None else int(users)
        if not 1 <= users <= self.v:
            raise ModelSealError(f"this design has codewords for 1..{self.v} users, {users} were asked for")
        return (1 - self.incidence[:, :users].T).astype(np.uint8)


def _normalised_vectors(q: int) -> list[tuple[int, int, int]]:
    """One representative per 1-D subspace of GF(q)^3: the first nonzero coordinate is 1."""
    out: list[tuple[int, int, int]] = []
    for a, b, c in itertools.product(range(q), repeat=3):
        nz = [x for x in (a, b, c) if x]
        if nz and nz[0] == 1:
            out.append((a, b, c))
    return out


@functools.lru_cache(maxsize=None)
def projective_plane(q: int) -> BIBD:
    """PG(2, q) for prime q: points and lines are the 1-D subspaces of GF(q)^3, p on l iff p . l = 0.
    Built once per q (the incidence matrix is read-only)."""
    if q not in PRIMES:
        raise ModelSealError(f"projective planes are built for prime orders {PRIMES}, not {q}")
    pts = np.array(_normalised_vectors(q), dtype=np.int64)
    incidence = ((pts @ pts.T) % q == 0).astype(np.uint8)
    incidence.flags.writeable = False
    design = BIBD(q=q, incidence=incidence)
    check_design(design)
    return design


def check_design(design: BIBD) -> None:
    """Raise ModelSealError unless every block has k points and every pair of points lies in one block."""
    n = design.incidence.astype(np.int64)
    q = design.q
    v, k = q * q + q + 1, q + 1
    if n.shape != (v, v):
        raise ModelSealError(f"PG(2, {q}) must have {v} points and blocks, got incidence {n.shape}")
    if not (n.sum(0) == k).all() or not (n.sum(1) == k).all():
        raise ModelSealError(f"PG(2, {q}): every block and every point must have {k} incidences")
    pairs = n @ n.T
    off = pairs[~np.eye(v, dtype=bool)]
    if not (off == 1).all():
        raise ModelSealError(f"PG(2, {q}) is not a (v, k, 1) design: some pair of points lies in "
                             f"{int(off.min())} or {int(off.max())} blocks instead of exactly one")


def design_for_users(users: int) -> BIBD:
    """The smallest projective plane with at least `users` codewords."""
    users = int(users)
    if users < 1:
        raise ModelSealError(f"need at least one user, got {users}")
    for q in PRIMES:
        if q * q + q + 1 >= users:
            return projective_plane(q)
    largest = PRIMES[-1] ** 2 + PRIMES[-1] + 1
    raise ModelSealError(f"{users} users is more than the largest built-in design holds ({largest} users, "
                         f"PG(2, {PRIMES[-1]})); distribute to at most {largest} users")


def and_acc_accuse(bits: np.ndarray, codebook: np.ndarray) -> list[int]:
    """Users whose every zero position decodes to 0 in `bits` (AND-ACC rule)."""
    bits = np.asarray(bits).astype(bool)
    zeros = np.asarray(codebook) == 0
    covered = ~(zeros & bits[None, :]).any(1)
    return [int(j) for j in np.flatnonzero(covered)]
