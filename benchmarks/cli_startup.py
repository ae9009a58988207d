"""CLI start-up: wall time of whole `modelseal ...` processes that need no torch, against `import torch`.

Each command runs `--runs` times (after one warm-up) as `python -m modelseal.cli ARGS`; the JSON gives the
median and min seconds per command, the median of `python -c "import torch"` in the same run, and each
command's ratio to it (the target: `--help` and `methods` well under 1 s, i.e. far below one torch import).
The early-refusal cases run torch commands whose output already exists (or whose key is missing): they must
say so before importing torch, so they too stay far below one torch import. They run in a temporary folder
holding an empty `exists.safetensors` and `exists.seal`; their exit code 2 is expected.
Usage: python benchmarks/cli_startup.py [--runs 7] [--quick]   (--quick: one timed run each)
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
    "modelseal attack --list": ["attack", "--list"],
}
# (name, arguments): commands that must refuse (exit 2) before importing torch
REFUSALS = {
    "refuse: train --out EXISTS": ["train", "--data", "digits", "--out", "exists.safetensors"],
    "refuse: lock --out EXISTS": ["lock", "exists.safetensors", "--data", "digits", "--out", "exists.safetensors",
                                  "--key", "k.seal"],
    "refuse: fingerprint extract --key EXISTS": ["fingerprint", "extract", "exists.safetensors", "--key",
                                                 "exists.seal"],
    "refuse: verify MISSING-KEY": ["verify", "missing.seal", "exists.safetensors"],
    "refuse: unlock --out EXISTS": ["unlock", "exists.safetensors", "exists.seal", "--out", "exists.safetensors"],
}


def _time(argv: list[str], runs: int, env: dict[str, str], cwd: str | None = None, code: int = 0) -> list[float]:
    def once() -> None:
        r = subprocess.run(argv, capture_output=True, env=env, cwd=cwd)
        if r.returncode != code:
            raise SystemExit(f"{argv} exited {r.returncode}, expected {code}: {r.stderr.decode()[-500:]}")

    once()  # warm-up (file cache)
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        once()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="one timed run per command (what the test runs)")
    args = ap.parse_args()
    if args.quick:
        args.runs = 1
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
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for name in ("exists.safetensors", "exists.seal"):
            Path(tmp, name).write_bytes(b"")
        for name, cli_args in REFUSALS.items():
            ts = _time([sys.executable, "-m", "modelseal.cli", *cli_args], args.runs, env, cwd=tmp, code=2)
            med = statistics.median(ts)
            result["commands"][name] = {"median_s": med, "min_s": min(ts),
                                        "ratio_to_import_torch": med / result["import_torch_s"]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
