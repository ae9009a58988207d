"""The bench driver: run (or resume) a scenario into a run directory, in named stages.

`plan` reads what the store already holds and lists what is left; `train_models` trains the owner, the
negatives and the reference models (`train_items`); `protect` protects the owner with every protection and
seed; `run_cells` attacks and judges every pending cell and `run_negatives` judges every negative; `summarize`
records the run. Every result is committed to the run directory's SQLite store as it arrives and prepared
models and keys are cached in `cache/` (model files `Suspect.load` reads), so a re-run skips finished cells
and retrains nothing cached.

The store records what the run planned (`planned` meta: cells in all and per protection, negatives), so
that a run stopped early (`max_cells`, an interrupt) is reported as partial, never as a finished run with
fewer cells. A run that fails before storing any result leaves no database behind (nor the folders it made).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import OutputExistsError
from ..keys import Key
from ..runtime import track
from ..safeio import write_atomic
from . import scenario as scenario_mod
from .backends import Backend, Shared, make_backend
from .jobs import (
    CellJob,
    DataSpec,
    NegativeJob,
    ProtectJob,
    TrainJob,
    job_cell,
    job_negative,
    job_protect,
    job_train,
    negative_kind,
)
from .scenario import Cell, Protection, Scenario, reference_count, spec_digest
from .store import VOLATILE, Store

DB_NAME = "results.sqlite"


@dataclass
class Context:
    """What every stage works with: the scenario, the store, the cache folder and the backend."""

    sc: Scenario
    store: Store
    cache: Path
    backend: Backend
    device: str

    @property
    def data(self) -> DataSpec:
        return DataSpec(self.sc.data, self.sc.data_seed)


@dataclass(frozen=True)
class PendingNegative:
    """One negative verdict still to judge: a protection and seed's key against one independent model."""

    protection: Protection
    seed: int
    neg_id: str
    model_id: str
    spec: dict[str, Any]


@dataclass
class Plan:
    owner_id: str
    negatives: list[dict[str, Any]]  # the negative models' specs, each with its artifact `id`
    pending: list[Cell]
    pending_negatives: list[PendingNegative]
    planned: dict[str, Any]  # cells, by_protection, negatives: recorded so partial runs say so

    @property
    def needed(self) -> set[tuple[str, int]]:
        """The (protection label, seed) pairs whose protected model a pending cell or negative needs."""
        return ({(c.protection.label, c.seed) for c in self.pending}
                | {(n.protection.label, n.seed) for n in self.pending_negatives})


@dataclass(frozen=True)
class TrainItem:
    artifact_id: str
    kind: str  # owner | negative | reference | base
    spec: dict[str, Any]
    split: str


@dataclass
class Trained:
    blobs: dict[str, bytes] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)


@dataclass
class Protected:
    artifact_id: str
    info: dict[str, Any]
    key: bytes
    models: list[bytes]


def run(scenario: str | Path | Scenario, out_dir: str | Path, backend: str = "local",
        address: str | None = None, force: bool = False, progress: Any = None, max_cells: int | None = None,
        num_cpus: int | None = None, device: str | None = None) -> dict[str, Any]:
    """Run (or resume) `scenario` into `out_dir/results.sqlite`; returns a summary.

    A re-run of the same directory skips finished cells; `force` starts over (deletes the database and the
    cache). `max_cells` stops after that many cells ran in this call (the rest stay pending).
    """
    sc = scenario if isinstance(scenario, Scenario) else scenario_mod.load(scenario)
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
    t0 = time.perf_counter()
    try:
        store = Store(out / DB_NAME)
    except BaseException:
        _remove_empty(out, made, False)
        raise
    be: Backend | None = None
    stored = False
    try:
        record_meta(store, sc)
        todo = plan(sc, store)
        dev = device or sc.device
        be = make_backend(backend, address, num_cpus, dev)
        ctx = Context(sc, store, cache, be, dev)
        items = train_items(sc, todo)
        trained = train_models(ctx, items)
        prots = protect(ctx, todo, trained)
        owner_acc = _owner_accuracy(store, trained, todo.owner_id)
        refs = [trained.blobs[i.artifact_id] for i in items if i.kind == "reference"]
        shared = share(be, prots, refs)
        with track(progress, len(todo.pending[:max_cells]) + len(todo.pending_negatives), "bench cells") as bar:
            ran, errors = run_cells(ctx, todo, prots, owner_acc, shared, max_cells, bar)
            if ran == len(todo.pending):  # a max_cells-limited run leaves the negatives pending too
                run_negatives(ctx, todo, trained, shared, bar)
        summary = summarize(store, sc, out, backend, todo, ran, errors, owner_acc, time.perf_counter() - t0)
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


def record_meta(store: Store, sc: Scenario) -> None:
    """The run's description: scenario text (and what `Scenario.select` kept), data, library version."""
    from .._version import __version__

    if store.get_meta("created") is None:
        store.set_meta("created", time.strftime("%Y-%m-%dT%H:%M:%S"))
    store.set_meta("scenario", sc.text)
    if sc.selection:
        store.set_meta("selection", json.dumps(sc.selection, sort_keys=True))
    store.set_meta("scenario_name", sc.name)
    store.set_meta("data", sc.data)
    store.set_meta("modelseal_version", __version__)


def plan(sc: Scenario, store: Store) -> Plan:
    """Every cell and negative verdict of the scenario, what is still pending, and the `planned` record."""
    base_id = base_artifact(sc)
    # the public base judged as a negative is the very model the owner and the siblings were fine-tuned from
    negatives = [{**n, "id": base_id if n.get("kind") == "base" else "neg-" + spec_digest(n)}
                 for n in sc.negative_specs()]
    all_negs = [PendingNegative(p, s, spec_digest({"owner": sc.owner_spec(), "protection": p.label,
                                                   "method": p.method, "params": p.params, "seed": s,
                                                   "negative": n["id"]}), n["id"], n)
                for p in sc.protections if p.family != "lock" for s in sc.seeds for n in negatives]
    by_prot: dict[str, int] = {}
    for c in sc.cells:
        by_prot[c.protection.label] = by_prot.get(c.protection.label, 0) + 1
    planned = {"cells": len(sc.cells), "by_protection": by_prot, "negatives": len(all_negs)}
    store.set_meta("planned", json.dumps(planned, sort_keys=True))
    done, done_negs = store.done_cells(), store.done_negatives()
    return Plan("owner-" + spec_digest(sc.owner_spec()), negatives, [c for c in sc.cells if c.id not in done],
                [n for n in all_negs if n.neg_id not in done_negs], planned)


def base_artifact(sc: Scenario) -> str | None:
    """The artifact id of the scenario's public base (None without siblings)."""
    return "base-" + spec_digest(sc.base_spec()) if sc.negatives.get("siblings") else None


def train_items(sc: Scenario, todo: Plan) -> list[TrainItem]:
    """The models to have before protecting: the public base (when the owner or a relative needs it), the owner
    (when a protection is needed), the negatives still to judge, and as many reference models as the needed
    protections ask for."""
    needed = todo.needed
    items = [TrainItem(todo.owner_id, "owner", {**sc.owner_spec(), "label": "owner"}, "owner")] if needed else []
    want = {n.model_id for n in todo.pending_negatives}
    base_id = base_artifact(sc)
    if base_id is not None and (needed or any(n.get("kind") in ("base", "sibling") and n["id"] in want
                                              for n in todo.negatives)):
        items.insert(0, TrainItem(base_id, "base", {**sc.base_spec(), "label": "public-base"}, "attacker"))
    items += [TrainItem(n["id"], "negative", n, "attacker") for n in todo.negatives
              if n["id"] in want and n["id"] != base_id]
    labels = {label for label, _ in needed}
    count = max([reference_count(p) for p in sc.protections if p.label in labels] or [0])
    items += [TrainItem("ref-" + spec_digest(r), "reference", r, "attacker") for r in sc.reference_specs(count)]
    return items


def train_models(ctx: Context, items: list[TrainItem]) -> Trained:
    """Train what the cache lacks and read back what it holds: first every model trained from scratch (the
    public base among them), then the fine-tunes of the base (the owner and the siblings of a scenario with
    siblings), each handed the base's bytes; one backend map per stage."""
    out = Trained()
    base_id = base_artifact(ctx.sc)
    for stage in (False, True):
        todo = []
        for it in items:
            if ("base" in it.spec) != stage:
                continue
            path = ctx.cache / f"{it.artifact_id}.safetensors"
            art = ctx.store.artifact(it.artifact_id)
            if art is not None and path.is_file():
                out.blobs[it.artifact_id], out.accuracy[it.artifact_id] = path.read_bytes(), art["info"]["accuracy"]
            else:
                todo.append(it)
        init = out.blobs.get(base_id) if stage and base_id is not None else None
        jobs = [TrainJob(it.spec, it.split, ctx.device, ctx.sc.threads, init) for it in todo]
        for i, res in ctx.backend.map(job_train, jobs):
            it = todo[i]
            (ctx.cache / f"{it.artifact_id}.safetensors").write_bytes(res["model"])
            ctx.store.put_artifact(it.artifact_id, it.kind, it.spec.get("label", it.kind),
                                   {"spec": it.spec, "accuracy": res["accuracy"]}, res["wall_s"])
            out.blobs[it.artifact_id], out.accuracy[it.artifact_id] = res["model"], res["accuracy"]
    return out


def protect(ctx: Context, todo: Plan, trained: Trained) -> dict[tuple[str, int], Protected]:
    """Protect the owner with every needed protection and seed; cached protections are read back."""
    cache, prot_of = ctx.cache, {p.label: p for p in ctx.sc.protections}
    out: dict[tuple[str, int], Protected] = {}
    jobs, ids = [], []
    for label, s in sorted(todo.needed):
        p = prot_of[label]
        pid = "prot-" + spec_digest({"owner": ctx.sc.owner_spec(), "method": p.method, "params": p.params,
                                     "seed": s})
        art, keyp = ctx.store.artifact(pid), cache / f"{pid}.key"
        if art is not None and keyp.is_file():
            models = [(cache / f"{pid}-{i}.safetensors").read_bytes() for i in range(art["info"]["copies"])]
            out[(label, s)] = Protected(pid, art["info"], keyp.read_bytes(), models)
            if "key_params" not in art["info"]:  # a run folder from before key parameters were recorded
                art["info"]["key_params"] = Key.from_bytes(out[(label, s)].key).params
                ctx.store.put_artifact(pid, art["kind"], art["label"], art["info"], art["wall_s"])
        else:  # the owner is among the trained models whenever a protection is needed
            jobs.append(ProtectJob(p, s, ctx.data, trained.blobs[todo.owner_id], ctx.device, ctx.sc.threads))
            ids.append(pid)
    for i, res in ctx.backend.map(job_protect, jobs):
        job, pid = jobs[i], ids[i]
        for j, m in enumerate(res["models"]):
            (cache / f"{pid}-{j}.safetensors").write_bytes(m)
        write_atomic(cache / f"{pid}.key", res["key"], force=True, private=True)  # 0600, as every key
        p = job.protection
        info = {**res["info"], "protection": p.label, "method": p.method, "family": p.family, "seed": job.seed}
        ctx.store.put_artifact(pid, "protection", f"{p.label} seed {job.seed}", info, res["wall_s"])
        out[(p.label, job.seed)] = Protected(pid, info, res["key"], res["models"])
    return out


def _owner_accuracy(store: Store, trained: Trained, owner_id: str) -> float | None:
    if owner_id in trained.accuracy:
        return trained.accuracy[owner_id]
    art = store.artifact(owner_id)
    return None if art is None else float(art["info"]["accuracy"])


def share(be: Backend, prots: dict[tuple[str, int], Protected], refs: list[bytes]) -> dict[str, Any]:
    """Put the reference models and every protection's models and key in the backend's store once."""
    shared = {"refs": be.share(refs)}
    for (label, s), d in prots.items():
        shared[f"m:{label}:{s}"] = be.share(d.models)
        shared[f"k:{label}:{s}"] = be.share(d.key)
    return shared


def run_cells(ctx: Context, todo: Plan, prots: dict[tuple[str, int], Protected], owner_acc: float | None,
              shared: dict[str, Any], max_cells: int | None, bar: Any) -> tuple[int, int]:
    """Attack and judge the pending cells (at most `max_cells`); returns (cells run, errors)."""
    jobs = []
    for c in todo.pending[:max_cells]:
        info = prots[(c.protection.label, c.seed)].info
        tag = f"{c.protection.label}:{c.seed}"
        jobs.append(CellJob(c.id, c.protection, c.attack, c.seed, ctx.data, owner_acc, info.get("protected_acc"),
                            info.get("unlocked_acc"), Shared(f"m:{tag}"), Shared(f"k:{tag}"), Shared("refs"),
                            ctx.sc.alpha, ctx.device, ctx.sc.threads))
    errors = 0
    for _i, row in ctx.backend.map(job_cell, jobs, shared):
        ctx.store.put_cell(row)
        errors += row["status"] == "error"
        bar.advance()
    return len(jobs), errors


def run_negatives(ctx: Context, todo: Plan, trained: Trained, shared: dict[str, Any], bar: Any) -> None:
    """Judge every pending negative with its protection's key."""
    jobs = [NegativeJob(n.neg_id, n.spec["label"], n.spec["arch"], trained.accuracy[n.model_id],
                        trained.blobs[n.model_id], n.protection, n.seed, Shared(f"k:{n.protection.label}:{n.seed}"),
                        Shared("refs"), ctx.sc.alpha, ctx.device, ctx.sc.threads, kind=negative_kind(n.spec))
            for n in todo.pending_negatives]
    for _i, row in ctx.backend.map(job_negative, jobs, shared):
        ctx.store.put_negative(row)
        bar.advance()


def summarize(store: Store, sc: Scenario, out: Path, backend: str, todo: Plan, ran: int, errors: int,
              owner_acc: float | None, seconds: float) -> dict[str, Any]:
    """The run's summary (also stored as the `last_run` meta)."""
    finished = len(store.done_cells() & {c.id for c in sc.cells})
    summary: dict[str, Any] = {"scenario": sc.name, "out_dir": str(out), "db": str(out / DB_NAME), "backend": backend,
               "cells": len(sc.cells), "ran": ran, "skipped_finished": len(sc.cells) - len(todo.pending),
               "finished": finished, "pending": len(sc.cells) - finished, "errors": errors,
               "negatives": len(store.done_negatives()), "owner_accuracy": owner_acc,
               "seconds": seconds, "cells_per_second": ran / seconds if seconds > 0 else 0.0,
               "planned": len(sc.cells)}
    summary["partial"] = summary["pending"] > 0
    store.set_meta("last_run", json.dumps(summary))
    return summary


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
    with Store(db) as s:
        strip = [[{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]
                 for rows in (s.cells(), s.negatives())]
    return strip[0], strip[1]
