"""One validator for every number a user, a key file or a scenario can set.

Every size, count and rate is checked here before it is used: finite, of the right kind, inside a stated
range, and below a hard upper bound so that no input can make modelseal allocate without limit or loop
for hours. Errors are one line and name the parameter, the range and the value received.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import ModelSealError

# Hard upper bounds. They are far above any sensible use and far below what would exhaust memory or time.
MAX_COUNT = 1_000_000  # queries, examples, samples
MAX_PERMUTATIONS = 100_000
MAX_EPOCHS = 10_000
MAX_BATCH = 65_536
MAX_STEPS = 1_000_000


def number(name: str, value: Any, lo: float | None = None, hi: float | None = None, *,
           lo_open: bool = False, hi_open: bool = False, integer: bool = False,
           error: type[Exception] = ModelSealError) -> int | float:
    """Return `value` if it is a finite number (an integer if `integer`) in the range; raise `error`.

    The range is [lo, hi] with either end open (`lo_open`/`hi_open`) or unbounded (None).
    Booleans are refused (True is not the number 1 here); integral floats pass as integers.
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:
        ok = float(value).is_integer()
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        rng = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        kind = "an integer" if integer else "a number"
        raise error(f"{name} must be {kind} in {rng}, got {value!r}")
    return int(value) if integer else value


def count(name: str, value: Any, lo: int = 1, hi: int = MAX_COUNT, *,
          error: type[Exception] = ModelSealError) -> int:
    """An integer count in [lo, hi] (default [1, 1,000,000])."""
    return int(number(name, value, lo, hi, integer=True, error=error))


def alpha(value: Any, *, name: str = "alpha", error: type[Exception] = ModelSealError) -> float:
    """The false-accusation rate a verifier accepts: a finite number with 0 < alpha < 1."""
    return float(number(name, value, 0.0, 1.0, lo_open=True, hi_open=True, error=error))
