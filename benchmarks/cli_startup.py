"""CLI start-up: wall time of whole `modelseal ...` processes that need no torch, against `import torch`.

Each command runs `--runs` times (after one warm-up) as `python -m modelseal.cli ARGS`; the JSON gives the
median and min seconds per command, the median of `python -c "import torch"` in the same run, and each
command's ratio to it (the target: `--help` and `methods` well under 1 s, i.e. far below one torch import).
Usage: python benchmarks/cli_startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {
    "modelseal --help": ["--help"],
    "modelseal methods": ["methods"],
    "modelseal methods tafa": ["methods", "tafa"],
    "modelseal verify --help": ["verify", "--help"],
}


def _time(argv: list[str], runs: int, env: dict[str, str]) -> list[float]:
    subprocess.run(argv, capture_output=True, env=env, check=True)  # warm-up (file cache)
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, capture_output=True, env=env, check=True)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    torch_s = _time([sys.executable, "-c", "import torch"], args.runs, env)
    python_s = _time([sys.executable, "-c", "pass"], args.runs, env)
    result = {"runs": args.runs, "python_startup_s": statistics.median(python_s),
              "import_torch_s": statistics.median(torch_s), "commands": {}}
    for name, cli_args in COMMANDS.items():
        ts = _time([sys.executable, "-m", "modelseal.cli", *cli_args], args.runs, env)
        med = statistics.median(ts)
        result["commands"][name] = {"median_s": med, "min_s": min(ts),
                                    "ratio_to_import_torch": med / result["import_torch_s"]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
