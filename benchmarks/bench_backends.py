"""Cells per second of the bench's local and Ray backends on the same scenario (the built-in `tiny`
scenario with three seeds, 24 cells), each from a fresh run directory. Prints one JSON object.

Both numbers include preparation (owner, negative and protection training) and, for Ray, starting a local
Ray with 2 CPUs; `cell_rows_identical` checks that both backends wrote the same rows.

    python benchmarks/bench_backends.py [--quick] [--device cpu|cuda]   # --quick: one seed (8 cells)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from importlib import resources

from modelseal import bench
from modelseal.bench import driver


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the tiny scenario with one seed (what the test runs)")
    ap.add_argument("--device", default="cpu", help="the bench's device (Ray cells ask for a GPU on cuda)")
    args = ap.parse_args()
    seeds = [0] if args.quick else [0, 1, 2]
    text = resources.files("modelseal.bench").joinpath("scenarios", "tiny.toml").read_text()
    sc = bench.parse(text.replace("seeds = [0]", f"seeds = {seeds}"), f"<tiny, seeds {seeds}>")
    out: dict = {"benchmark": "bench_backends", "scenario": f"tiny, seeds {seeds}", "cells": len(sc.cells),
                 "cpus": os.cpu_count(), "device": args.device, "quick": args.quick}
    with tempfile.TemporaryDirectory() as tmp:
        # Ray and torch may log to stdout; keep stdout for the JSON.
        with contextlib.redirect_stdout(sys.stderr):
            local = bench.run(sc, f"{tmp}/local", backend="local", device=args.device)
            try:
                ray = bench.run(sc, f"{tmp}/ray", backend="ray", num_cpus=2, device=args.device)
            except Exception as e:  # Ray missing or failing: still report the local number
                ray = {"error": f"{type(e).__name__}: {e}"}
        out["local"] = {k: local[k] for k in ("seconds", "cells_per_second", "ran")}
        if "error" in ray:
            out["ray"] = ray
        else:
            out["ray"] = {k: ray[k] for k in ("seconds", "cells_per_second", "ran")}
            out["cell_rows_identical"] = driver.rows_for_comparison(f"{tmp}/local/results.sqlite") == \
                driver.rows_for_comparison(f"{tmp}/ray/results.sqlite")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
