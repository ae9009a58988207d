"""The main job behind `modelseal demo`: run the built-in bench scenario `demo` (an owner CNN on mnist5k,
every installed protection, a representative attack set, independent models as negatives) and write
`results.sqlite` and `report.html` to the output folder (never overwritten without force). The run's cache
of models and secret keys stays in a private 0700 folder of the user's cache dir (`private_run_dir`), never
in the output folder, which people share.

Every verdict word the demo prints comes from `bench.outcomes` (`cell_outcome`, `negative_outcome`), and its
closing "what survived" table from `bench.outcomes.survival`: the terminal and the HTML report say the same
thing.

`methods` (`modelseal demo --only NAME,...`) runs the demo on some of the protections only.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ModelSealError, OutputExistsError
from .safeio import write_atomic

if TYPE_CHECKING:
    from .bench.scenario import Scenario

OUTPUTS = ("results.sqlite", "report.html", "cache")


def demo_scenario(seed: int = 0, methods: Iterable[str] | None = None) -> Scenario:
    """The built-in demo scenario, parsed, with `seed` as owner and cell seed, restricted to the
    protections of `methods` when given (attacks aimed only at dropped protections go too)."""
    from .bench import load

    return load("demo").select(methods=methods, seed=seed)


def private_run_dir(out_dir: str | Path) -> Path:
    """The folder where the demo's bench run keeps its cache (models and secret keys): one per output
    folder, under the user's cache folder (`MODELSEAL_CACHE`, else the platform's), mode 0700. Refuses a
    folder that is a symbolic link or that belongs to another user."""
    import hashlib

    from .data.embedded import cache_dir

    tag = hashlib.sha256(str(Path(out_dir).resolve()).encode()).hexdigest()[:16]
    d = cache_dir() / "demo-private" / tag
    try:
        for p in (d.parent, d):
            p.mkdir(parents=True, exist_ok=True, mode=0o700)
            if p.is_symlink() or (hasattr(os, "getuid") and p.stat().st_uid != os.getuid()):
                raise ModelSealError(f"{p} is not a private folder of this user; remove it and run again")
            os.chmod(p, 0o700)
    except OSError as e:
        raise ModelSealError(f"cannot create the private demo folder {d}: {e.strerror or e}") from None
    return d


def _detail(c: dict[str, Any], outcome: dict[str, Any]) -> str:
    """The numbers behind a cell's outcome word (the word itself comes from bench.outcomes.cell_outcome)."""
    from .bench.outcomes import alpha_of

    parts = []
    if c["status"] == "ok":
        if c["family"] == "lock":
            if c["unlocked_acc"] is not None:
                parts.append(f"unlocked acc {c['unlocked_acc']:.3f}")
        else:
            parts.append(f"p = {c['p_value']:.2g} (alpha {alpha_of(c):.0e})")
            if c["family"] == "per-user":
                parts.append(f"colluders {c['colluders']}, accused {c['accused']}")
            elif c["queries"]:
                parts.append(f"{c['queries']} queries")
    if outcome["note"]:
        parts.append(outcome["note"])
    return "; ".join(parts)


def run_demo(out_dir: str | Path = "demo-out", device: str = "auto", seed: int = 0, force: bool = False,
             progress: Any = None, methods: Iterable[str] | None = None) -> dict[str, Any]:
    from .bench import report, run
    from .bench.outcomes import attack_text, negative_outcome, outcomes, read_rows, survival
    from .safeio import usable_path

    out_dir = usable_path(out_dir, what="--out folder")
    existing = [n for n in OUTPUTS if (out_dir / n).exists()]
    if existing and not force:
        raise OutputExistsError(f"{out_dir} already holds demo results ({', '.join(existing)}); "
                                "pass --force to overwrite them")
    for n in existing:
        p = out_dir / n
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    t0 = time.perf_counter()
    sc = demo_scenario(seed, methods)
    dev = "cpu" if device == "auto" else device
    # The bench caches models and the protections' secret keys next to its database; the demo runs it in
    # a private folder and copies only the results database into the (possibly shared) output folder.
    run_dir = private_run_dir(out_dir)
    summary = run(sc, run_dir, backend="local", progress=progress, device=dev, force=True)
    db = write_atomic(out_dir / "results.sqlite", (run_dir / "results.sqlite").read_bytes(), force=True)
    report(db, out_dir / "report.html", force=True)
    _, cells, negatives, artifacts, keys = read_rows(db)
    owner_acc = summary["owner_accuracy"]
    rows = [{"protection": "-", "model": "owner " + sc.owner["arch"], "accuracy": owner_acc, "verdict": "-",
             "detail": f"{sc.owner['epochs']} epochs on the owner split"}]
    for c, o in outcomes(cells, keys):
        # the unattacked row shows the protected model's accuracy, as the report does (a per-user cell's
        # attacked model is one user's copy)
        acc = c["protected_acc"] if c["attack"] == "none" else c["attacked_acc"]
        acc = acc if acc is not None else float("nan")
        rows.append({"protection": c["protection"], "model": "protected, no attack" if c["attack"] == "none"
                     else f"attacked: {attack_text(c)}", "accuracy": acc, "verdict": o["word"],
                     "detail": _detail(c, o)})
    for neg in negatives:
        o = negative_outcome(neg)
        rows.append({"protection": neg["protection"], "model": f"independent {neg['negative']}",
                     "accuracy": neg["accuracy"], "verdict": o["word"], "detail": o["note"]})
    seconds = time.perf_counter() - t0
    return {"data": sc.data, "owner_accuracy": owner_acc, "rows": rows, "seconds": seconds,
            "survival": survival(cells, negatives, keys),
            "out_dir": str(out_dir), "db": str(out_dir / "results.sqlite"),
            "report": str(out_dir / "report.html"), "cells": len(cells), "negatives": len(negatives),
            "prepared": len(artifacts)}
