"""Run a scenario: prepare the owner, the negatives and the protected models, then judge every cell.

Every unit of work is a job: a plain function of JSON-able specs and bytes (models as safetensors bytes,
keys as `Key.to_bytes()`, never pickled objects) that seeds itself and fixes torch's thread count, so the
same seeds give the same rows in-process (`local`) and on Ray workers (`ray`). The driver commits every
result to the run directory's SQLite store as it arrives and caches prepared models and keys in
`cache/`, so a re-run skips finished cells and retrains nothing that is cached.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import KeyMismatchError, ModelSealError, OutputExistsError
from ..models.io import model_from_bytes, model_to_bytes
from ..runtime import track
from . import scenario as scenario_mod
from .store import Store

DB_NAME = "results.sqlite"
REMOVAL_MARGIN = 0.05


# ============================================================================ model transport
# ============================================================================ jobs
@functools.lru_cache(maxsize=4)
def _splits(name: str, seed: int):
    from .. import data

    return data.load(name, seed=seed)


@contextlib.contextmanager
def _job_env(seed: int, threads: int):
    from ..runtime import seed_everything

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    seed_everything(seed)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _device(name: str) -> torch.device:
    from ..runtime import resolve_device

    return resolve_device(name)


def job_train(spec: dict[str, Any], split: str, device: str, threads: int) -> dict[str, Any]:
    """Train a fresh `spec['arch']` on the `split` part of the data; returns its bytes and accuracy."""
    from .. import models, train

    t0 = time.perf_counter()
    with _job_env(spec["seed"], threads):
        splits = _splits(spec["data"], spec["data_seed"])
        model = models.build(spec["arch"], splits.meta, seed=spec["seed"]).to(_device(device))
        train.fit(model, getattr(splits, split), epochs=spec["epochs"], lr=spec["lr"],
                  batch_size=spec["batch_size"], seed=spec["seed"])
        acc = train.evaluate(model, splits.test)
    return {"model": model_to_bytes(model), "accuracy": float(acc), "wall_s": time.perf_counter() - t0}


def job_protect(prot: dict[str, Any], seed: int, data_spec: dict[str, Any], owner: bytes,
                references: list[bytes], device: str, threads: int) -> dict[str, Any]:
    """Protect the owner model with one method and seed: protected model(s), key bytes and fidelity."""
    from .. import methods, train
    from ..api import unlock

    t0 = time.perf_counter()
    with _job_env(seed, threads):
        splits = _splits(data_spec["data"], data_spec["data_seed"])
        dev = _device(device)
        model = model_from_bytes(owner).to(dev)
        params = {k: v for k, v in prot["params"].items() if k != "references"}
        method = methods.get(prot["method"])(**params, seed=seed) if "seed" not in params \
            else methods.get(prot["method"])(**params)
        info: dict[str, Any] = {}
        family = prot["family"]
        if family == "watermark":
            marked, key = method.embed(model, splits.owner)
            out = [marked]
        elif family == "fingerprint":
            kw = {}
            if references:
                kw["references"] = [model_from_bytes(b).to(dev) for b in references]
            key = method.extract(model, splits.meta, **kw)
            out = [model]
        elif family == "per-user":
            out, key = method.distribute(model, splits.owner)
        else:
            locked, key = method.lock(model, splits.owner)
            out = [locked]
            info["unlocked_acc"] = float(train.evaluate(unlock(locked, key), splits.test))
        accs = [float(train.evaluate(m, splits.test)) for m in out]
        info["protected_acc"] = float(np.mean(accs))
        info["copies"] = len(out)
    return {"models": [model_to_bytes(m) for m in out], "key": key.to_bytes(), "info": info,
            "wall_s": time.perf_counter() - t0}


def _log_p(p: float) -> float:
    return -math.log10(max(float(p), 1e-300))


def job_cell(cell: dict[str, Any], data_spec: dict[str, Any], owner_acc: float, prot_info: dict[str, Any],
             models_blob: list[bytes], key_blob: bytes, device: str, threads: int) -> dict[str, Any]:
    """Attack the protected model of one cell and judge it; returns the cell's row."""
    from .. import attacks, train
    from ..api import trace, verify
    from ..keys import Key
    from ..suspect import Suspect
    from .bench_attacks import Collude, PerturbQueries, make

    t0 = time.perf_counter()
    seed = int(cell["seed"])
    row: dict[str, Any] = {
        "cell_id": cell["id"], "protection": cell["protection"], "method": cell["method"],
        "family": cell["family"], "attack": cell["attack"], "attack_name": cell["attack_name"],
        "attack_params": cell["attack_params"], "swept": cell.get("swept"), "strength": cell["strength"],
        "seed": seed, "owner_acc": owner_acc, "protected_acc": prot_info.get("protected_acc"),
        "unlocked_acc": prot_info.get("unlocked_acc"), "status": "ok"}
    family = cell["family"]
    try:
        with _job_env(seed, threads):
            splits = _splits(data_spec["data"], data_spec["data_seed"])
            dev = _device(device)
            key = Key.from_bytes(key_blob)
            copies = [model_from_bytes(b).to(dev) for b in models_blob]
            attack = make(cell["attack_name"], cell["attack_params"], seed=seed)
            rng = np.random.default_rng(seed)
            if isinstance(attack, PerturbQueries) and family in ("per-user", "lock"):
                return {**row, "status": "skipped", "wall_s": time.perf_counter() - t0,
                        "detail": {"reason": f"{family} judges weights; query perturbation does not apply"}}
            if isinstance(attack, Collude) and family != "per-user":
                return {**row, "status": "skipped", "wall_s": time.perf_counter() - t0,
                        "detail": {"reason": "collusion averages distributed copies (deepmarks only)"}}
            users = [0]
            if family == "per-user":
                k = int(attack.k) if isinstance(attack, Collude) else 1
                if k > len(copies):
                    raise ModelSealError(f"collude k={k} exceeds the {len(copies)} distributed copies")
                users = sorted(int(u) for u in rng.choice(len(copies), size=k, replace=False))
            base = copies[users[0]]
            if attack is None:
                attacked: nn.Module = base
            elif isinstance(attack, Collude):
                attacked = attacks.get("average")(others=[copies[u] for u in users[1:]]).apply(base)
            elif isinstance(attack, PerturbQueries):
                attacked = base
            else:
                attacked = attack.apply(base, splits.attacker)
            if isinstance(attack, PerturbQueries):
                x, y = splits.test.x, splits.test.y
                row["attacked_acc"] = float((attack.wrap(base).labels(x) == y).float().mean())
                suspect = attack.wrap(base)
            else:
                row["attacked_acc"] = float(train.evaluate(attacked, splits.test))
                suspect = Suspect(attacked)
            if family == "per-user":
                r = trace(suspect, key)
                accused = sorted(int(u) for u in r.accused)
                row.update(owned=bool(r.owned), score=_log_p(r.p_value), p_value=float(r.p_value),
                           threshold=_log_p(r.alpha), queries=0, colluders=users, accused=accused,
                           colluders_found=len(set(accused) & set(users)),
                           innocents_accused=len(set(accused) - set(users)),
                           detail={"best_user": int(r.best_user), "fit": float(r.fit)})
            elif family == "lock":
                gap = owner_acc - row["attacked_acc"]
                row.update(owned=gap > REMOVAL_MARGIN, score=float(gap), threshold=REMOVAL_MARGIN, queries=0,
                           detail={"recovered_acc": row["attacked_acc"]})
            else:
                v = verify(suspect, key)
                row.update(owned=bool(v.owned), score=float(v.score), p_value=float(v.p_value),
                           threshold=float(v.threshold), queries=int(v.queries),
                           detail=json.loads(json.dumps(v.to_dict().get("details", {}), default=str)))
            # the unattacked cell cannot remove anything: a protected model judged not owned is a missed
            # detection (owned = 0 in its row), not a removal
            row["removed"] = (attack is not None and not row["owned"]
                              and row["attacked_acc"] >= owner_acc - REMOVAL_MARGIN)
    except ModelSealError as e:
        row.update(status="error", detail={"error": f"{type(e).__name__}: {e}"})
    row["wall_s"] = time.perf_counter() - t0
    return row


def job_negative(neg: dict[str, Any], prot: dict[str, Any], seed: int, data_spec: dict[str, Any],
                 neg_acc: float, neg_blob: bytes, key_blob: bytes, device: str, threads: int) -> dict[str, Any]:
    """Judge one independent model with one protection's key."""
    from ..api import trace, verify
    from ..keys import Key
    from ..suspect import Suspect

    t0 = time.perf_counter()
    row: dict[str, Any] = {"neg_id": neg["id"], "protection": prot["label"], "method": prot["method"],
                           "family": prot["family"], "seed": seed, "negative": neg["label"], "arch": neg["arch"],
                           "accuracy": neg_acc, "status": "ok"}
    try:
        with _job_env(seed, threads):
            key = Key.from_bytes(key_blob)
            model = model_from_bytes(neg_blob).to(_device(device))
            if prot["family"] == "per-user":
                r = trace(Suspect(model), key)
                accused = sorted(int(u) for u in r.accused)
                row.update(owned=bool(r.owned), score=_log_p(r.p_value), p_value=float(r.p_value), queries=0,
                           accused=accused, innocents_accused=len(accused))
            else:
                v = verify(Suspect(model), key)
                row.update(owned=bool(v.owned), score=float(v.score), p_value=float(v.p_value),
                           queries=int(v.queries),
                           detail=json.loads(json.dumps(v.to_dict().get("details", {}), default=str)))
    except KeyMismatchError as e:
        # the key cannot be applied to this model (another architecture): no accusation is possible, so this
        # independent model is not accused; recorded without a score or p-value, with the reason
        row.update(owned=False, score=None, p_value=None, queries=0, detail={"not_applicable": str(e)},
                   **({"accused": [], "innocents_accused": 0} if prot["family"] == "per-user" else {}))
    except ModelSealError as e:
        row.update(status="error", detail={"error": f"{type(e).__name__}: {e}"})
    row["wall_s"] = time.perf_counter() - t0
    return row


# ============================================================================ backends
class LocalBackend:
    """Runs jobs in this process, one after another."""

    def map(self, fn: Callable, calls: list[tuple], shared: dict[str, Any] | None = None) -> Iterable:
        for i, args in enumerate(calls):
            yield i, fn(*[shared[a.name] if isinstance(a, _Shared) else a for a in args])

    def share(self, value: Any) -> Any:
        return value

    def close(self) -> None:
        pass


class _Shared:
    def __init__(self, name: str):
        self.name = name


class RayBackend:
    """Runs every job as a Ray task (one CPU each); big blobs go through the object store once."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None):
        try:
            import ray
        except ImportError:
            raise ModelSealError("the ray backend needs Ray: pip install 'ray>=2.9'") from None
        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "configure_logging": False}
            if address:
                kw["address"] = address
            else:
                kw["num_cpus"] = num_cpus
            try:
                ray.init(**kw)
            except Exception as e:  # ConnectionError and friends, as one line
                raise ModelSealError(f"cannot start or reach Ray ({address or 'local'}): {e}") from None
            self.started = True
        self._remote: dict[Callable, Any] = {}

    def share(self, value: Any) -> Any:
        return self.ray.put(value)

    def map(self, fn: Callable, calls: list[tuple], shared: dict[str, Any] | None = None) -> Iterable:
        if fn not in self._remote:
            self._remote[fn] = self.ray.remote(num_cpus=1, max_retries=0)(fn)
        remote = self._remote[fn]
        pending = {}
        for i, args in enumerate(calls):
            ref = remote.remote(*[shared[a.name] if isinstance(a, _Shared) else a for a in args])
            pending[ref] = i
        try:
            while pending:
                done, _ = self.ray.wait(list(pending), num_returns=1)
                for ref in done:
                    yield pending.pop(ref), self.ray.get(ref)
        finally:
            for ref in pending:
                self.ray.cancel(ref, force=True)

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def make_backend(backend: str, address: str | None = None, num_cpus: int | None = None):
    if backend == "local":
        if address:
            raise ModelSealError("--address applies to the ray backend only")
        return LocalBackend()
    if backend == "ray":
        return RayBackend(address, num_cpus)
    raise ModelSealError(f"unknown backend '{backend}'; use 'local' or 'ray'")


# ============================================================================ driver
class _Stop(Exception):
    pass


def _digest(obj: Any) -> str:
    return scenario_mod._digest(obj)




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
    cache.mkdir(parents=True, exist_ok=True)
    dev = device or sc.device
    threads = sc.threads
    t0 = time.perf_counter()
    store = Store(out / DB_NAME)
    be = None
    try:
        from .. import __version__

        if store.get_meta("created") is None:
            store.set_meta("created", time.strftime("%Y-%m-%dT%H:%M:%S"))
        store.set_meta("scenario", sc.text)
        store.set_meta("scenario_name", sc.name)
        store.set_meta("data", sc.data)
        store.set_meta("modelseal_version", __version__)

        data_spec = {"data": sc.data, "data_seed": sc.data_seed}
        owner_id = "owner-" + _digest(sc.owner_spec())
        prot_of = {p.label: p for p in sc.protections}
        neg_specs = sc.negative_specs()
        for n in neg_specs:
            n["id"] = "neg-" + _digest(n)
        done = store.done_cells()
        pending = [c for c in sc.cells if c.id not in done]
        neg_jobs = []
        for p in sc.protections:
            if p.family == "lock":
                continue
            for s in sc.seeds:
                for n in neg_specs:
                    nid = _digest({"owner": sc.owner_spec(), "protection": p.label, "method": p.method,
                                   "params": p.params, "seed": s, "negative": n["id"]})
                    neg_jobs.append((p, s, {**n, "id": nid, "model_id": n["id"]}))
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
                items.append(("ref-" + _digest(r), "reference", r, "attacker"))
            return items

        blobs: dict[str, bytes] = {}
        accs: dict[str, float] = {}
        todo = []
        for aid, kind, spec, split in train_specs():
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
        ref_ids = [a for a, k, _, _ in train_specs() if k == "reference"]

        # ---------------------------------------------------------------- stage 2: protections
        prot_data: dict[tuple[str, int], dict[str, Any]] = {}
        todo_p = []
        for label, s in sorted(needed_prot):
            p = prot_of[label]
            pid = "prot-" + _digest({"owner": sc.owner_spec(), "method": p.method, "params": p.params, "seed": s})
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
            nref = int(p.params.get("references", 0))
            calls.append(({"label": p.label, "method": p.method, "family": p.family, "params": p.params}, s,
                          data_spec, owner_blob, [blobs[r] for r in ref_ids[:nref]], dev, threads))
        for i, res in be.map(job_protect, calls):
            label, s, pid = todo_p[i]
            for j, m in enumerate(res["models"]):
                (cache / f"{pid}-{j}.safetensors").write_bytes(m)
            (cache / f"{pid}.key").write_bytes(res["key"])
            info = {**res["info"], "protection": label, "method": prot_of[label].method,
                    "family": prot_of[label].family, "seed": s}
            store.put_artifact(pid, "protection", f"{label} seed {s}", info, res["wall_s"])
            prot_data[(label, s)] = {"id": pid, "info": info, "key": res["key"], "models": res["models"]}

        # ---------------------------------------------------------------- stage 3: cells and negatives
        owner_art = store.artifact(owner_id)
        owner_acc = accs.get(owner_id, owner_art["info"]["accuracy"] if owner_art else None)
        shared = {}
        for (label, s), d in prot_data.items():
            shared[f"m:{label}:{s}"] = be.share(d["models"])
            shared[f"k:{label}:{s}"] = be.share(d["key"])
        cell_calls = []
        for c in pending:
            spec = {**c.spec(), "id": c.id, "attack": c.attack.label, "swept": c.attack.swept}
            d = prot_data[(c.protection.label, c.seed)]
            cell_calls.append((spec, data_spec, owner_acc, d["info"], _Shared(f"m:{c.protection.label}:{c.seed}"),
                               _Shared(f"k:{c.protection.label}:{c.seed}"), dev, threads))
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
                    prot = {"label": p.label, "method": p.method, "family": p.family}
                    neg_calls.append((n, prot, s, data_spec, accs[n["model_id"]], blobs[n["model_id"]],
                                      _Shared(f"k:{p.label}:{s}"), dev, threads))
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
        store.set_meta("last_run", json.dumps(summary))
        return summary
    finally:
        if be is not None:
            be.close()
        store.close()


def rows_for_comparison(db: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Cells and negatives of a database without the columns that differ between runs (wall time)."""
    from .store import VOLATILE

    with Store(db) as s:
        strip = [[{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]
                 for rows in (s.cells(), s.negatives())]
    return strip[0], strip[1]

