"""Cells per second of the bench's local and Ray backends on the same scenario (the built-in `tiny`
scenario with three seeds, 24 cells), each from a fresh run directory. Prints one JSON object.

Both numbers include preparation (owner, negative and protection training) and, for Ray, starting a local
Ray with 2 CPUs; `cell_rows_identical` checks that both backends wrote the same rows.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from importlib import resources

from modelseal import bench
from modelseal.bench import runner


def main() -> None:
    text = resources.files("modelseal.bench").joinpath("scenarios", "tiny.toml").read_text()
    sc = bench.parse(text.replace("seeds = [0]", "seeds = [0, 1, 2]"), "<tiny x3 seeds>")
    out: dict = {"benchmark": "bench_backends", "scenario": "tiny, seeds [0, 1, 2]", "cells": len(sc.cells),
                 "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        # Ray and torch may log to stdout; keep stdout for the JSON.
        with contextlib.redirect_stdout(sys.stderr):
            local = bench.run(sc, f"{tmp}/local", backend="local")
            try:
                ray = bench.run(sc, f"{tmp}/ray", backend="ray", num_cpus=2)
            except Exception as e:  # Ray missing or failing: still report the local number
                ray = {"error": f"{type(e).__name__}: {e}"}
        out["local"] = {k: local[k] for k in ("seconds", "cells_per_second", "ran")}
        if "error" in ray:
            out["ray"] = ray
        else:
            out["ray"] = {k: ray[k] for k in ("seconds", "cells_per_second", "ran")}
            out["cell_rows_identical"] = runner.rows_for_comparison(f"{tmp}/local/results.sqlite") == \
                runner.rows_for_comparison(f"{tmp}/ray/results.sqlite")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
