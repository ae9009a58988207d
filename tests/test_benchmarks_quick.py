"""Benchmarks that do not rot: every script in benchmarks/ has a `--quick` path (the smallest honest setting),
and that path exits 0 and prints JSON on stdout (one document, or one per line; progress and logs go to
stderr).

The test lists benchmarks/*.py itself, so a new benchmark is run here too, and one without `--quick` fails.
The quick paths that take more than about 20 s on two CPU cores are marked slow (CI runs them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py"))
# benchmarks whose --quick path another test already runs (with assertions on its JSON): not run twice
COVERED = {"null_rates.py": "test_benchmarks_null_rates.py"}
# quick paths measured at over 20 s on two shared CPU cores (advparams 51 s, arena 72 s, attacks 23 s,
# bench_backends 22 s with Ray's start, tafa 73 s, trigger_set 22 s); the others took 7 to 18 s
# grinding.py (several 3-second budgets plus training) and siblings.py (a base, an owner, 3 siblings, two
# lineage tests per model) joined after this list was measured: slow, unmeasured; guard.py: 33 s (one
# 2,000-query thief, MLP students trained to fit, the attack section); scale.py: 80-130 s (every verb on two models)
SLOW = {"advparams.py", "arena.py", "attacks.py", "bench_backends.py", "grinding.py", "guard.py", "scale.py",
        "siblings.py", "tafa.py",
        "trigger_set.py"}


def _json_documents(text: str, script: str) -> list:
    """One JSON document, or JSON Lines (one document per line: tafa.py prints one per task)."""
    try:
        return [json.loads(text)]
    except json.JSONDecodeError:
        pass
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise AssertionError(f"{script} --quick did not print JSON (one document or one per line) on stdout "
                             f"({e}):\n{text[:1500]}") from None


def _params(names: list[str]) -> list:
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


@pytest.mark.parametrize("script", BENCHMARKS)
def test_every_benchmark_has_a_quick_path(script):
    assert "--quick" in (ROOT / "benchmarks" / script).read_text(), \
        f"benchmarks/{script} has no --quick path: give it one (the smallest honest setting, about a minute at most)"
    if script in COVERED:
        other = (Path(__file__).parent / COVERED[script]).read_text()
        assert script in other and "--quick" in other


@pytest.mark.parametrize("script", _params([b for b in BENCHMARKS if b not in COVERED]))
def test_quick_path_exits_0_and_prints_json(script):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick"], capture_output=True,
                       text=True, env=env, timeout=900, cwd=ROOT)
    seconds = time.perf_counter() - t0
    assert r.returncode == 0, f"{script} --quick exited {r.returncode}:\n{r.stdout[-1500:]}\n{r.stderr[-3000:]}"
    docs = _json_documents(r.stdout, script)
    assert docs and all(isinstance(d, dict) and d for d in docs), script
    print(f"{script} --quick: {seconds:.1f} s")
