"""benchmarks/null_rates.py --quick: one JSON document, the owner detected by every method, no independent
model accused at the default alpha, and the sequential test's simulated false-accusation rate reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelseal import methods

ROOT = Path(__file__).resolve().parents[1]
SRC = str(ROOT / "src")


@pytest.fixture(scope="module")
def result() -> dict:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "null_rates.py"), "--quick"],
                       capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "[null_rates" in r.stderr  # progress goes to stderr, the JSON alone to stdout
    return json.loads(r.stdout)


def test_structure_and_independent_population(result):
    assert result["benchmark"] == "null_rates" and result["settings"]["quick"]
    ind = result["independent_models"]
    # 4 varied independents + 2 that share the owner's architecture and initialisation seed
    assert ind["count"] == result["settings"]["models"] + result["settings"]["same_init"] == 6
    assert ind["trained_on"] == "attacker split" and ind["same_init"] == 2
    assert ind["variants"]["cnn-same-init"]["init_seeds"] == [result["owner"]["seed"]]
    assert set(ind["architectures"]) == {"cnn", "mlp"}
    assert sum(v["count"] for v in ind["variants"].values()) == 6
    assert all(0.0 <= v["mean_test_accuracy"] <= 1.0 for v in ind["variants"].values())
    refs = result["reference_models"]
    assert refs["count"] >= 1 and refs["disjoint_from_judged"] and refs["trained_on"] == "attacker split"
    judging = {n for n in methods.names() if methods.info(n).judges}
    assert set(result["methods"]) == judging and judging >= {"trigger-set", "c-examples", "tafa", "deepmarks"}
    for name, m in result["methods"].items():
        assert m["keys"] == result["settings"]["keys"]
        assert set(m["by_alpha"]) == {f"{a:g}" for a in result["settings"]["alphas"]}
        for b in m["by_alpha"].values():
            assert b["verdicts"] + b["not_judged"] == ind["count"] * m["keys"], name
            assert b["verdicts"] == 0 or 0.0 <= b["rate"] <= b["upper95"] <= 1.0
            assert len(b["accused_per_key"]) == m["keys"] and sum(b["accused_per_key"]) == b["accused"]


def test_owner_is_detected_so_the_benchmark_judges_something(result):
    m = result["methods"]
    for name in ("trigger-set", "tafa", "deepmarks"):
        assert m[name]["owner_detected"]["1e-06"]["detected"], name
    assert m["deepmarks"]["owner_detected"]["1e-06"]["traced_to_own_user"] == \
        m["deepmarks"]["owner_detected"]["1e-06"]["copies"]
    # c-examples cannot reach p < 1/(R + 1) with R references: detected at the loosest alpha it can reach
    ce = m["c-examples"]
    assert not ce["by_alpha"]["1e-06"]["alpha_reachable"] and ce["by_alpha"]["0.1"]["alpha_reachable"]
    assert ce["owner_detected"]["0.1"]["detected"] and not ce["owner_detected"]["1e-06"]["detected"]


def test_no_independent_model_is_accused_at_the_default_alpha(result):
    assert result["false_accusations_at_default_alpha"] == 0
    for name, m in result["methods"].items():
        b = m["by_alpha"]["1e-06"]
        assert b["accused"] == 0 and b["accused_models"] == [], (name, b["accused_models"])
    assert result["methods"]["tafa"]["by_alpha"]["1e-06"]["verdicts"] > 0
    dm = result["methods"]["deepmarks"]
    assert dm["by_alpha"]["1e-06"]["verdicts"] > 0 and dm["by_alpha"]["1e-06"]["not_judged"] > 0
    assert dm["not_judged_reasons"] and dm["judged_architectures"] == ["cnn"]
    # only the owner's architecture has the fingerprinted layer (the same-init independents share it)
    assert set(dm["judged_per_variant"]) == {"cnn", "cnn-same-init"}


def test_sequential_simulation_is_reported(result):
    sim = result["sequential_simulation"]
    assert sim["function"] == "modelseal.stats.sequential_test" and sim["sims"] == 2000
    assert set(sim["by_alpha"]) == {"0.01", "0.001"}
    for a, s in sim["by_alpha"].items():
        assert s["exact_rate_le_alpha"] and s["exact_rate"] <= float(a)
        assert s["rate_le_alpha_plus_3se"] and s["lower95"] <= s["rate"] <= s["upper95"]
