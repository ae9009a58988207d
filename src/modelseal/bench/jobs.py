"""Bench jobs: plain functions of JSON-able specs and bytes that any backend can run.

Models travel as safetensors bytes (`models.model_to_bytes`), keys as `Key.to_bytes()`, never as pickled
objects. Every job seeds itself and fixes torch's thread count, so the same seeds give the same rows
in-process and on Ray workers. Jobs reach methods and attacks only through their registries and protocols
(`methods.protect`, `methods.judge`, `methods.restore`; `Attack.apply_many`, `Attack.wrap`): nothing here
branches on a method's or an attack's name.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from typing import Any

import numpy as np
import torch

from ..errors import KeyMismatchError, ModelSealError
from ..models.io import model_from_bytes, model_to_bytes
from .store import REMOVAL_MARGIN


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


def _verifier(prot: dict[str, Any], alpha: float, references: list[bytes], dev: torch.device) -> dict[str, Any]:
    """The verifier's parameters for one protection: the scenario's alpha, the protection's verifier
    parameters, and reference models where the method takes them (as many as asked)."""
    from .. import methods
    from .scenario import verifier_params

    cls = methods.get(prot["method"])
    out = {"alpha": alpha, **verifier_params(cls, prot.get("params", {}))}
    if "references" in out:
        n = int(out["references"])
        out["references"] = [model_from_bytes(b).to(dev) for b in references[:n]]
    return out


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


def job_protect(prot: dict[str, Any], seed: int, data_spec: dict[str, Any], owner: bytes, device: str,
                threads: int) -> dict[str, Any]:
    """Protect the owner model with one method and seed: protected model(s), key bytes and fidelity."""
    from .. import methods, train
    from .scenario import protect_params

    t0 = time.perf_counter()
    with _job_env(seed, threads):
        splits = _splits(data_spec["data"], data_spec["data_seed"])
        model = model_from_bytes(owner).to(_device(device))
        mi = methods.info(prot["method"])
        params = protect_params(mi.cls, prot["params"])
        method = mi.cls(**{"seed": seed, **params})
        done = methods.protect(method, model, splits.owner, splits.meta)
        info: dict[str, Any] = {}
        if not mi.judges:  # a lock: how much of the owner's accuracy the key gives back
            info["unlocked_acc"] = float(train.evaluate(methods.restore(done.models[0], done.key), splits.test))
        info["protected_acc"] = float(np.mean([float(train.evaluate(m, splits.test)) for m in done.models]))
        info["copies"] = len(done.models)
    return {"models": [model_to_bytes(m) for m in done.models], "key": done.key.to_bytes(), "info": info,
            "wall_s": time.perf_counter() - t0}


def _row_of(v: Any) -> dict[str, Any]:
    """The verdict columns of a bench row (every family: a Verdict)."""
    row = {"owned": bool(v.owned), "score": float(v.score), "p_value": float(v.p_value),
           "threshold": float(v.threshold), "queries": int(v.queries), "alpha": float(v.alpha),
           "detail": json.loads(json.dumps(v.to_dict().get("details", {}), default=str))}
    if v.accused is not None:
        row["accused"] = sorted(int(u) for u in v.accused)
    return row


def _cost_of(attack: Any) -> dict[str, Any]:
    """The attack's cost record for the row, JSON-able, without wall times (they differ between runs of one
    scenario; the attack's own goes to the volatile `attack_wall_s` column)."""
    def strip(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k != "wall_s"}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v

    return strip(json.loads(json.dumps(attack.cost, default=str)))


def job_cell(cell: dict[str, Any], data_spec: dict[str, Any], owner_acc: float, prot_info: dict[str, Any],
             models_blob: list[bytes], key_blob: bytes, device: str, threads: int,
             references: list[bytes] | None = None, alpha: float = 1e-6) -> dict[str, Any]:
    """Attack the protected model(s) of one cell and judge the result; returns the cell's row."""
    from .. import attacks, methods, train
    from ..keys import Key
    from ..suspect import Suspect

    t0 = time.perf_counter()
    seed = int(cell["seed"])
    row: dict[str, Any] = {
        "cell_id": cell["id"], "protection": cell["protection"], "method": cell["method"],
        "family": cell["family"], "attack": cell["attack"], "attack_name": cell["attack_name"],
        "attack_params": cell["attack_params"], "swept": cell.get("swept"), "strength": cell["strength"],
        "seed": seed, "owner_acc": owner_acc, "protected_acc": prot_info.get("protected_acc"),
        "unlocked_acc": prot_info.get("unlocked_acc"), "status": "ok"}
    try:
        with _job_env(seed, threads):
            splits = _splits(data_spec["data"], data_spec["data_seed"])
            dev = _device(device)
            mi = methods.info(cell["method"])
            key = Key.from_bytes(key_blob)
            copies = [model_from_bytes(b).to(dev) for b in models_blob]
            attack = None if cell["attack_name"] == "none" else \
                attacks.get(cell["attack_name"])(**cell["attack_params"], seed=seed)

            def skip(reason: str) -> dict[str, Any]:
                return {**row, "status": "skipped", "wall_s": time.perf_counter() - t0, "detail": {"reason": reason}}

            if attack is not None and attack.acts_on == "queries" and mi.access == "white-box":
                return skip(f"{mi.family} judges weights; query perturbation does not apply")
            need = attack.copies if attack is not None else 1
            if need > 1 and len(copies) == 1:
                return skip(f"{attack.name} combines {need} distributed copies; {cell['method']} makes one model")
            if need > len(copies):
                raise ModelSealError(f"{attack.name} k={need} exceeds the {len(copies)} distributed copies")
            # which copies the attacker holds: one user's copy, or `need` colluders' (seeded)
            users = [0] if len(copies) == 1 else sorted(
                int(u) for u in np.random.default_rng(seed).choice(len(copies), size=need, replace=False))
            attacked = copies[users[0]] if attack is None else attack.apply_many(
                [copies[u] for u in users], splits.attacker)
            cost = {} if attack is None else _cost_of(attack)
            if attack is not None:
                row["attack_wall_s"] = float(attack.cost.get("wall_s", 0.0))
            if attack is not None and attack.acts_on == "queries":
                x, y = splits.test.x, splits.test.y
                row["attacked_acc"] = float((attack.wrap(Suspect(attacked), splits.meta).labels(x) == y)
                                            .float().mean())
                # what the wrapped suspect did on the test inputs (rejection: its false-rejection rate)
                stats = dict(attack.query_stats)
                if stats.get("answered"):
                    cost["test_rejection_rate"] = stats.get("rejected", 0) / stats["answered"]
            else:
                row["attacked_acc"] = float(train.evaluate(attacked, splits.test))
            if attack is not None:
                row["cost"] = {**cost, "owner_acc": owner_acc, "attacked_acc": row["attacked_acc"],
                               "accuracy_delta": row["attacked_acc"] - owner_acc}
            if mi.judges:
                suspect = Suspect(attacked) if attack is None else attack.wrap(Suspect(attacked), splits.meta)
                v = methods.judge(suspect, key, **_verifier(cell | {"params": cell.get("protection_params", {})},
                                                            alpha, references or [], dev))
                row.update(_row_of(v))
                if v.accused is not None:
                    row.update(colluders=users, colluders_found=len(set(row["accused"]) & set(users)),
                               innocents_accused=len(set(row["accused"]) - set(users)))
                    row["detail"] = {"best_user": v.details["best_user"], "fit": v.details["fit"],
                                     "max_colluders": v.details["max_colluders"]}
            else:  # a lock holds while the attacked model stays well below the owner's accuracy
                gap = owner_acc - row["attacked_acc"]
                row.update(owned=gap > REMOVAL_MARGIN, score=float(gap), threshold=REMOVAL_MARGIN, queries=0,
                           detail={"recovered_acc": row["attacked_acc"]})
            # the unattacked cell cannot remove anything: a protected model judged not owned is a missed
            # detection (owned = 0 in its row), not a removal
            row["removed"] = (attack is not None and not row["owned"]
                              and row["attacked_acc"] >= owner_acc - REMOVAL_MARGIN)
    except ModelSealError as e:
        row.update(status="error", detail={"error": f"{type(e).__name__}: {e}"})
    row["wall_s"] = time.perf_counter() - t0
    return row


def job_negative(neg: dict[str, Any], prot: dict[str, Any], seed: int, data_spec: dict[str, Any],
                 neg_acc: float, neg_blob: bytes, key_blob: bytes, device: str, threads: int,
                 references: list[bytes] | None = None, alpha: float = 1e-6) -> dict[str, Any]:
    """Judge one independent model with one protection's key."""
    from .. import methods
    from ..keys import Key
    from ..suspect import Suspect

    t0 = time.perf_counter()
    row: dict[str, Any] = {"neg_id": neg["id"], "protection": prot["label"], "method": prot["method"],
                           "family": prot["family"], "seed": seed, "negative": neg["label"], "arch": neg["arch"],
                           "accuracy": neg_acc, "status": "ok"}
    per_user = methods.info(prot["method"]).family == "per-user"
    try:
        with _job_env(seed, threads):
            dev = _device(device)
            key = Key.from_bytes(key_blob)
            model = model_from_bytes(neg_blob).to(dev)
            v = methods.judge(Suspect(model), key, **_verifier(prot, alpha, references or [], dev))
            row.update(_row_of(v))
            row.pop("threshold")
            if v.accused is not None:
                row["innocents_accused"] = len(row["accused"])
                row.pop("detail")
    except KeyMismatchError as e:
        # the key cannot be applied to this model (another architecture): no accusation is possible, so this
        # independent model is not accused; recorded without a score or p-value, with the reason
        row.update(owned=False, score=None, p_value=None, queries=0, detail={"not_applicable": str(e)},
                   **({"accused": [], "innocents_accused": 0} if per_user else {}))
    except ModelSealError as e:
        row.update(status="error", detail={"error": f"{type(e).__name__}: {e}"})
    row["wall_s"] = time.perf_counter() - t0
    return row
