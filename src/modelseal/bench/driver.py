"""The bench driver: run (or resume) a scenario into a run directory.

Stage 1 trains the owner, the negatives and the reference models; stage 2 protects the owner with every
protection and seed; stage 3 attacks and judges every cell and judges every negative. Every result is
committed to the run directory's SQLite store as it arrives and prepared models and keys are cached in
`cache/` (model files `Suspect.load` reads), so a re-run skips finished cells and retrains nothing cached.

The store records what the run planned (`planned` meta: cells in all and per protection, negatives), so
that a run stopped early (`max_cells`, an interrupt) is reported as partial, never as a finished run with
fewer cells. A run that fails before storing any result leaves no database behind (nor the folders it made).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from ..errors import OutputExistsError
from ..runtime import track
from ..safeio import write_atomic
from . import scenario as scenario_mod
from .backends import Shared, make_backend
from .jobs import job_cell, job_negative, job_protect, job_train
from .scenario import spec_digest
from .store import Store

DB_NAME = "results.sqlite"




def run(scenario: str | Path | scenario_mod.Scenario, out_dir: str | Path, backend: str = "local",
        address: str | None = None, force: bool = False, progress: Any = None, max_cells: int | None = None,
        num_cpus: int | None = None, device: str | None = None) -> dict[str, Any]:
    """Run (or resume) `scenario` into `out_dir/results.sqlite`; returns a summary.

    A re-run of the same directory skips finished cells; `force` starts over (deletes the database and the
    cache). `max_cells` stops after that many cells ran in this call (the rest stay pending).
    """
    sc = scenario if isinstance(scenario, scenario_mod.Scenario) else scenario_mod.load(scenario)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a directory; choose another run directory")
    if force:
        (out / DB_NAME).unlink(missing_ok=True)
        shutil.rmtree(out / "cache", ignore_errors=True)
    cache = out / "cache"
    made = [d for d in (out, cache) if not d.exists()]  # removed again if the run stores nothing
    new_db = not (out / DB_NAME).exists()
    cache.mkdir(parents=True, exist_ok=True)
    cache.chmod(0o700)  # it holds secret keys: like every key modelseal writes, for the owner only
    dev = device or sc.device
    threads = sc.threads
    t0 = time.perf_counter()
    try:
        store = Store(out / DB_NAME)
    except BaseException:
        _remove_empty(out, made, False)
        raise
    be = None
    stored = False
    try:
        from .._version import __version__

        if store.get_meta("created") is None:
            store.set_meta("created", time.strftime("%Y-%m-%dT%H:%M:%S"))
        store.set_meta("scenario", sc.text)
        if sc.selection:  # `Scenario.select` narrowed the text above (methods, seed)
            store.set_meta("selection", json.dumps(sc.selection, sort_keys=True))
        store.set_meta("scenario_name", sc.name)
        store.set_meta("data", sc.data)
        store.set_meta("modelseal_version", __version__)

        data_spec = {"data": sc.data, "data_seed": sc.data_seed}
        owner_id = "owner-" + spec_digest(sc.owner_spec())
        prot_of = {p.label: p for p in sc.protections}
        neg_specs = sc.negative_specs()
        for n in neg_specs:
            n["id"] = "neg-" + spec_digest(n)
        done = store.done_cells()
        pending = [c for c in sc.cells if c.id not in done]
        by_prot: dict[str, int] = {}
        for c in sc.cells:
            by_prot[c.protection.label] = by_prot.get(c.protection.label, 0) + 1
        neg_jobs = []
        for p in sc.protections:
            if p.family == "lock":
                continue
            for s in sc.seeds:
                for n in neg_specs:
                    nid = spec_digest({"owner": sc.owner_spec(), "protection": p.label, "method": p.method,
                                   "params": p.params, "seed": s, "negative": n["id"]})
                    neg_jobs.append((p, s, {**n, "id": nid, "model_id": n["id"]}))
        store.set_meta("planned", json.dumps({"cells": len(sc.cells), "by_protection": by_prot,
                                              "negatives": len(neg_jobs)}, sort_keys=True))
        done_negs = store.done_negatives()
        neg_jobs = [j for j in neg_jobs if j[2]["id"] not in done_negs]
        needed_prot = {(c.protection.label, c.seed) for c in pending} | {(p.label, s) for p, s, _ in neg_jobs}
        ran = 0
        be = make_backend(backend, address, num_cpus)

        # ---------------------------------------------------------------- stage 1: owner, negatives, refs
        def train_specs() -> list[tuple[str, str, dict[str, Any], str]]:
            items = []
            if needed_prot:
                items.append((owner_id, "owner", {**sc.owner_spec(), "label": "owner"}, "owner"))
            need_negs = {j[2]["model_id"] for j in neg_jobs}
            items += [(n["id"], "negative", n, "attacker") for n in neg_specs if n["id"] in need_negs]
            needed_labels = {label for label, _ in needed_prot}
            refs = max([int(p.params.get("references", 0)) for p in sc.protections
                        if p.label in needed_labels] or [0])
            for r in sc.reference_specs(refs):
                items.append(("ref-" + spec_digest(r), "reference", r, "attacker"))
            return items

        blobs: dict[str, bytes] = {}
        accs: dict[str, float] = {}
        todo = []
        specs = train_specs()
        for aid, kind, spec, split in specs:
            path = cache / f"{aid}.safetensors"
            art = store.artifact(aid)
            if art is not None and path.is_file():
                blobs[aid] = path.read_bytes()
                accs[aid] = art["info"]["accuracy"]
            else:
                todo.append((aid, kind, spec, split))
        for i, res in be.map(job_train, [(s, split, dev, threads) for _, _, s, split in todo]):
            aid, kind, spec, _ = todo[i]
            (cache / f"{aid}.safetensors").write_bytes(res["model"])
            store.put_artifact(aid, kind, spec.get("label", kind), {"spec": spec, "accuracy": res["accuracy"]},
                               res["wall_s"])
            blobs[aid], accs[aid] = res["model"], res["accuracy"]
        ref_ids = [a for a, k, _, _ in specs if k == "reference"]

        # ---------------------------------------------------------------- stage 2: protections
        prot_data: dict[tuple[str, int], dict[str, Any]] = {}
        todo_p = []
        for label, s in sorted(needed_prot):
            p = prot_of[label]
            pid = "prot-" + spec_digest({"owner": sc.owner_spec(), "method": p.method, "params": p.params, "seed": s})
            art = store.artifact(pid)
            keyp = cache / f"{pid}.key"
            if art is not None and keyp.is_file():
                n = art["info"]["copies"]
                prot_data[(label, s)] = {"id": pid, "info": art["info"], "key": keyp.read_bytes(),
                                         "models": [(cache / f"{pid}-{i}.safetensors").read_bytes() for i in range(n)]}
            else:
                todo_p.append((label, s, pid))
        owner_blob = blobs.get(owner_id)
        calls = []
        for label, s, _pid in todo_p:
            p = prot_of[label]
            calls.append(({"label": p.label, "method": p.method, "family": p.family, "params": p.params}, s,
                          data_spec, owner_blob, dev, threads))
        for i, res in be.map(job_protect, calls):
            label, s, pid = todo_p[i]
            for j, m in enumerate(res["models"]):
                (cache / f"{pid}-{j}.safetensors").write_bytes(m)
            write_atomic(cache / f"{pid}.key", res["key"], force=True, private=True)  # 0600, as every key
            info = {**res["info"], "protection": label, "method": prot_of[label].method,
                    "family": prot_of[label].family, "seed": s}
            store.put_artifact(pid, "protection", f"{label} seed {s}", info, res["wall_s"])
            prot_data[(label, s)] = {"id": pid, "info": info, "key": res["key"], "models": res["models"]}

        # ---------------------------------------------------------------- stage 3: cells and negatives
        owner_art = store.artifact(owner_id)
        owner_acc = accs.get(owner_id, owner_art["info"]["accuracy"] if owner_art else None)
        shared = {"refs": be.share([blobs[r] for r in ref_ids])}
        for (label, s), d in prot_data.items():
            shared[f"m:{label}:{s}"] = be.share(d["models"])
            shared[f"k:{label}:{s}"] = be.share(d["key"])
        cell_calls = []
        for c in pending:
            spec = {**c.spec(), "id": c.id, "attack": c.attack.label, "swept": c.attack.swept}
            d = prot_data[(c.protection.label, c.seed)]
            cell_calls.append((spec, data_spec, owner_acc, d["info"], Shared(f"m:{c.protection.label}:{c.seed}"),
                               Shared(f"k:{c.protection.label}:{c.seed}"), dev, threads, Shared("refs"), sc.alpha))
        if max_cells is not None:
            cell_calls = cell_calls[:max_cells]
        errors = 0
        with track(progress, len(cell_calls) + len(neg_jobs), "bench cells") as bar:
            for _i, row in be.map(job_cell, cell_calls, shared):
                store.put_cell(row)
                errors += row["status"] == "error"
                ran += 1
                bar.advance()
            neg_calls = []
            if len(cell_calls) == len(pending):  # a max_cells-limited run leaves the negatives pending too
                for p, s, n in neg_jobs:
                    prot = {"label": p.label, "method": p.method, "family": p.family, "params": p.params}
                    neg_calls.append((n, prot, s, data_spec, accs[n["model_id"]], blobs[n["model_id"]],
                                      Shared(f"k:{p.label}:{s}"), dev, threads, Shared("refs"), sc.alpha))
                for _i, row in be.map(job_negative, neg_calls, shared):
                    store.put_negative(row)
                    bar.advance()
        seconds = time.perf_counter() - t0
        finished = len(store.done_cells() & {c.id for c in sc.cells})
        summary = {"scenario": sc.name, "out_dir": str(out), "db": str(out / DB_NAME), "backend": backend,
                   "cells": len(sc.cells), "ran": ran, "skipped_finished": len(sc.cells) - len(pending),
                   "finished": finished, "pending": len(sc.cells) - finished, "errors": errors,
                   "negatives": len(store.done_negatives()), "owner_accuracy": owner_acc,
                   "seconds": seconds, "cells_per_second": ran / seconds if seconds > 0 else 0.0}
        summary["planned"] = len(sc.cells)
        summary["partial"] = summary["pending"] > 0
        store.set_meta("last_run", json.dumps(summary))
        stored = True
        return summary
    finally:
        if be is not None:
            be.close()
        if not stored and new_db:
            stored = bool(store.done_cells() or store.done_negatives() or store.artifacts())
        store.close()
        if not stored and new_db:
            _remove_empty(out, made, True)


def _remove_empty(out: Path, made: list[Path], db: bool) -> None:
    """After a run that stored nothing: remove the database it created and the folders it made (if empty),
    so that a refused run leaves the run directory as it was."""
    if db:
        (out / DB_NAME).unlink(missing_ok=True)
        for extra in ("-journal", "-wal", "-shm"):
            (out / (DB_NAME + extra)).unlink(missing_ok=True)
    for d in reversed(made):
        try:
            d.rmdir()
        except OSError:
            pass


def rows_for_comparison(db: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Cells and negatives of a database without the columns that differ between runs (wall time)."""
    from .store import VOLATILE

    with Store(db) as s:
        strip = [[{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]
                 for rows in (s.cells(), s.negatives())]
    return strip[0], strip[1]

