"""Bench jobs: plain functions of one small, frozen job spec that any backend can run.

A spec (`TrainJob`, `ProtectJob`, `CellJob`, `NegativeJob`) holds JSON-able values, bytes, and `Shared`
handles for big values a backend puts in its object store once (the protected models, a key, the reference
models). Models travel as safetensors bytes (`models.model_to_bytes`), keys as `Key.to_bytes()`, never as
pickled objects. Every job seeds itself and fixes torch's thread count, so the same seeds give the same rows
in-process and on Ray workers. Jobs reach methods and attacks only through their registries and protocols
(`methods.protect`, `methods.judge`, `methods.restore`; `Attack.apply_many`, `Attack.wrap`): nothing here
branches on a method's or an attack's name.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import functools
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from ..attacks import Attacked
from ..errors import KeyMismatchError, ModelSealError
from ..models.io import model_from_bytes, model_to_bytes
from ..schema import of_kind
from .backends import Shared
from .scenario import AttackVariant, Protection
from .store import REMOVAL_MARGIN

T = TypeVar("T")
Blob = bytes | Shared
Blobs = list[bytes] | Shared


@dataclass(frozen=True)
class DataSpec:
    """Which data set every job loads (`modelseal.data.load(data, seed=data_seed)`)."""

    data: str
    data_seed: int


@dataclass(frozen=True)
class TrainJob:
    """Train a fresh model: `spec` holds data, data_seed, arch, epochs, lr, batch_size and seed."""

    spec: dict[str, Any]
    split: str  # "owner" or "attacker"
    device: str
    threads: int
    init: Blob | None = None  # a spec with a "base": that base's trained bytes (else it is trained here first)


@dataclass(frozen=True)
class ProtectJob:
    """Protect the owner model with one protection and seed."""

    protection: Protection
    seed: int
    data: DataSpec
    owner: Blob
    device: str
    threads: int


@dataclass(frozen=True)
class CellJob:
    """Attack the protected model(s) of one protection and seed with one attack variant, then judge."""

    cell_id: str
    protection: Protection
    attack: AttackVariant
    seed: int
    data: DataSpec
    owner_acc: float | None
    protected_acc: float | None
    unlocked_acc: float | None
    models: Blobs
    key: Blob
    references: Blobs
    alpha: float
    device: str
    threads: int


@dataclass(frozen=True)
class NegativeJob:
    """Judge one independent model with one protection's key."""

    neg_id: str
    label: str
    arch: str
    accuracy: float
    model: Blob
    protection: Protection
    seed: int
    key: Blob
    references: Blobs
    alpha: float
    device: str
    threads: int
    kind: str = "independent"  # independent | student | sibling | base (`negative_kind`)


def _value(v: T | Shared) -> T:
    if isinstance(v, Shared):  # the backend resolves handles before a job runs
        raise ModelSealError(f"bench job got the unresolved shared value '{v.name}'; run it through a backend")
    return v


@functools.lru_cache(maxsize=4)
def _splits(name: str, seed: int) -> Any:
    from .. import data

    return data.load(name, seed=seed)


@contextlib.contextmanager
def _job_env(seed: int, threads: int) -> Iterator[None]:
    from ..runtime import seed_everything

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    seed_everything(seed)
    try:
        yield
    finally:
        torch.set_num_threads(before)


ATTACK_SEED_OFFSET = 7_777_777


def attack_seed(cell_seed: int) -> int:
    """The seed an attack of a cell runs with: the cell's seed moved far from the seeds owners and negatives are
    built with (0, 1000+, 2000+, 3000+), so that a student the attack trains (knockoff, distill) never starts
    from the owner's initialisation: a shared initialisation is lineage (methods/tafa.py, modelseal.lineage),
    and a thief does not know the owner's seed."""
    return (int(cell_seed) + ATTACK_SEED_OFFSET) % (2**31 - 1)


def _job_env_seed(seed: int) -> None:
    from ..runtime import seed_everything

    seed_everything(seed)


def _device(name: str) -> torch.device:
    from ..runtime import resolve_device

    return resolve_device(name)


def _verifier(prot: Protection, alpha: float, references: list[bytes], dev: torch.device) -> dict[str, Any]:
    """The verifier's parameters for one protection: the scenario's alpha, the protection's verifier
    parameters, and reference models where the method takes them (as many as asked)."""
    from .. import methods
    from .scenario import verifier_params

    cls = methods.get(prot.method)
    out = {"alpha": alpha, **verifier_params(cls, prot.params)}
    for name in of_kind(cls, "models"):  # the scenario gives a count; the method takes the models
        if name in out:
            out[name] = [model_from_bytes(b).to(dev) for b in references[:int(out[name])]]
    return out


def negative_kind(spec: dict[str, Any]) -> str:
    """What a negative model is: `independent` (trained from scratch), `student` (extracted from an independent
    model), or, in a scenario with siblings, `sibling` / `base` (a relative of the owner: bench.scenario)."""
    return str(spec.get("kind") or ("student" if "teacher" in spec else "independent"))


def job_train(job: TrainJob) -> dict[str, Any]:
    """Train a fresh `spec['arch']` on the `split` part of the data, or with a `base` in the spec fine-tune
    that base (on a seeded `fraction` of the split when given); returns its bytes and accuracy."""
    from .. import attacks, models, train

    spec = job.spec
    t0 = time.perf_counter()
    with _job_env(spec["seed"], job.threads):
        splits = _splits(spec["data"], spec["data_seed"])
        if "teacher" in spec:  # a student extracted from an independent model (that model trained first)
            teacher = job_train(TrainJob(spec["teacher"], job.split, job.device, job.threads))
            _job_env_seed(spec["seed"])
            make: Any = attacks.get(spec["extract"]["attack"])
            model = make(**spec["extract"]["params"], seed=spec["seed"]).apply(
                model_from_bytes(teacher["model"]).to(_device(job.device)), getattr(splits, job.split))
        elif "base" in spec:  # a fine-tune of the public base: the owner, or a sibling
            base = _value(job.init) if job.init is not None else \
                job_train(TrainJob(spec["base"], "attacker", job.device, job.threads))["model"]
            _job_env_seed(spec["seed"])
            model = model_from_bytes(base).to(_device(job.device))
            data = getattr(splits, job.split)
            if spec.get("fraction") is not None:
                data = data.subset(float(spec["fraction"]), seed=spec["seed"])
            train.fit(model, data, epochs=spec["epochs"], lr=spec["lr"], batch_size=spec["batch_size"],
                      seed=spec["seed"])
        else:
            model = models.build(spec["arch"], splits.meta, seed=spec["seed"]).to(_device(job.device))
            train.fit(model, getattr(splits, job.split), epochs=spec["epochs"], lr=spec["lr"],
                      batch_size=spec["batch_size"], seed=spec["seed"])
        acc = train.evaluate(model, splits.test)
    return {"model": model_to_bytes(model), "accuracy": float(acc), "wall_s": time.perf_counter() - t0}


def job_protect(job: ProtectJob) -> dict[str, Any]:
    """Protect the owner model with one method and seed: protected model(s), key bytes, fidelity, and the
    key's parameters (recorded in the store, so that the report never reads key files)."""
    from .. import methods, train
    from .scenario import protect_params

    prot = job.protection
    t0 = time.perf_counter()
    with _job_env(job.seed, job.threads):
        splits = _splits(job.data.data, job.data.data_seed)
        model = model_from_bytes(_value(job.owner)).to(_device(job.device))
        mi = methods.info(prot.method)
        params = protect_params(mi.cls, prot.params)
        method = mi.cls(**{"seed": job.seed, **params})
        done = methods.protect(method, model, splits.owner, splits.meta)
        info: dict[str, Any] = {}
        if not mi.judges:  # a lock: how much of the owner's accuracy the key gives back
            info["unlocked_acc"] = float(train.evaluate(methods.restore(done.models[0], done.key), splits.test))
        info["protected_acc"] = float(np.mean([float(train.evaluate(m, splits.test)) for m in done.models]))
        info["copies"] = len(done.models)
        info["key_params"] = json.loads(json.dumps(done.key.params, default=str))
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


def _cost_of(cost: dict[str, Any]) -> dict[str, Any]:
    """An attack run's cost record for the row, JSON-able, without wall times (they differ between runs of one
    scenario; the attack's own goes to the volatile `attack_wall_s` column)."""
    def strip(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k != "wall_s"}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v

    out: dict[str, Any] = strip(json.loads(json.dumps(cost, default=str)))
    return out


def _cell_row(job: CellJob) -> dict[str, Any]:
    p, a = job.protection, job.attack
    return {"cell_id": job.cell_id, "protection": p.label, "method": p.method, "family": p.family,
            "attack": a.label, "attack_name": a.attack, "attack_params": a.params, "swept": a.swept,
            "strength": a.strength, "seed": job.seed, "owner_acc": job.owner_acc,
            "protected_acc": job.protected_acc, "unlocked_acc": job.unlocked_acc, "status": "ok"}


def _skip_reason(attack: Any, access: str, family: str, copies: int, method: str) -> str | None:
    """Why an attack does not apply to this protection (None when it does)."""
    if attack is None:
        return None
    if attack.acts_on == "queries" and access == "white-box":
        return f"{family} judges weights; query perturbation does not apply"
    if attack.copies > 1 and copies == 1:
        return f"{attack.name} combines {attack.copies} distributed copies; {method} makes one model"
    if attack.copies > copies:
        raise ModelSealError(f"{attack.name} k={attack.copies} exceeds the {copies} distributed copies")
    return None


def _attacked_accuracy(attack: Any, attacked: Any, splits: Any, cost: dict[str, Any]) -> float:
    """Test accuracy of the attacked model; query-side attacks are measured through their wrapped suspect
    (and their false-rejection rate on the test inputs goes into `cost`)."""
    from .. import train
    from ..suspect import Suspect

    if attack is None or attack.acts_on != "queries":
        return float(train.evaluate(attacked, splits.test))
    x, y = splits.test.x, splits.test.y
    acc = float((attack.wrap(Suspect(attacked), splits.meta).labels(x) == y).float().mean())
    stats = dict(attack.query_stats)
    if stats.get("answered"):
        cost["test_rejection_rate"] = stats.get("rejected", 0) / stats["answered"]
    return acc


def _judge_cell(job: CellJob, row: dict[str, Any], attack: Any, attacked: Any, users: list[int], splits: Any,
                dev: torch.device) -> None:
    """The verdict columns of a cell: a judged protection's verdict, or whether a lock held."""
    from .. import methods
    from ..keys import Key
    from ..suspect import Suspect

    if not methods.info(job.protection.method).judges:  # a lock holds while accuracy stays well below
        owner = job.owner_acc if job.owner_acc is not None else float("nan")
        gap = owner - row["attacked_acc"]
        row.update(owned=gap > REMOVAL_MARGIN, score=float(gap), threshold=REMOVAL_MARGIN, queries=0,
                   detail={"recovered_acc": row["attacked_acc"]})
        return
    suspect = Suspect(attacked) if attack is None else attack.wrap(Suspect(attacked), splits.meta)
    v = methods.judge(suspect, Key.from_bytes(_value(job.key)),
                      **_verifier(job.protection, job.alpha, _value(job.references), dev))
    row.update(_row_of(v))
    if v.accused is not None:
        row.update(colluders=users, colluders_found=len(set(row["accused"]) & set(users)),
                   innocents_accused=len(set(row["accused"]) - set(users)))
        row["detail"] = {"best_user": v.details["best_user"], "fit": v.details["fit"],
                         "max_colluders": v.details["max_colluders"]}


# Attacked models by (attacked model bytes, attack, parameters, seed, data, device): the fingerprints of one
# owner (and the peer baselines) all judge the same unprotected model, so in one process each attack of a
# scenario runs once for all of them. Attacks are deterministic given their seed and the job seeds itself, so
# a hit gives the model (and the cost record) the attack would make again. Bounded: the oldest goes first.
_ATTACKED: collections.OrderedDict[str, tuple[bytes, dict[str, Any]]] = collections.OrderedDict()
_ATTACKED_MAX = 64


def _apply(attack: Any, job: CellJob, models: list[Any], blobs: list[bytes], splits: Any,
           dev: torch.device) -> Attacked:
    """`attack.run_many(models, attacker data)`, from the in-process cache when the same attack already ran
    on the same model bytes (query-side attacks change the answers, not the model: never cached)."""
    if attack.acts_on == "queries":
        return attack.run_many(models, splits.attacker)
    h = hashlib.sha256()
    for b in blobs:
        h.update(hashlib.sha256(b).digest())
    h.update(json.dumps([job.attack.attack, job.attack.params, job.seed, job.data.data, job.data.data_seed,
                         job.device, job.threads], sort_keys=True, default=str).encode())
    key = h.hexdigest()
    if key in _ATTACKED:
        blob, cost = _ATTACKED[key]
        _ATTACKED.move_to_end(key)
        return Attacked(model_from_bytes(blob).to(dev), copy.deepcopy(cost))
    done: Attacked = attack.run_many(models, splits.attacker)
    _ATTACKED[key] = (model_to_bytes(done.model), copy.deepcopy(done.cost))
    while len(_ATTACKED) > _ATTACKED_MAX:
        _ATTACKED.popitem(last=False)
    return done


def job_cell(job: CellJob) -> dict[str, Any]:
    """Attack the protected model(s) of one cell and judge the result; returns the cell's row."""
    from .. import attacks, methods

    t0 = time.perf_counter()
    row = _cell_row(job)
    try:
        with _job_env(job.seed, job.threads):
            splits = _splits(job.data.data, job.data.data_seed)
            dev = _device(job.device)
            mi = methods.info(job.protection.method)
            copies = [model_from_bytes(b).to(dev) for b in _value(job.models)]
            make: Any = None if job.attack.attack == "none" else attacks.get(job.attack.attack)
            attack = None if make is None else make(**job.attack.params, seed=attack_seed(job.seed))
            reason = _skip_reason(attack, mi.access, mi.family, len(copies), job.protection.method)
            if reason is not None:
                return {**row, "status": "skipped", "wall_s": time.perf_counter() - t0, "detail": {"reason": reason}}
            need = 1 if attack is None else attack.copies
            # which copies the attacker holds: one user's copy, or `need` colluders' (seeded)
            users = [0] if len(copies) == 1 else sorted(
                int(u) for u in np.random.default_rng(job.seed).choice(len(copies), size=need, replace=False))
            done = None if attack is None else _apply(
                attack, job, [copies[u] for u in users], [_value(job.models)[u] for u in users], splits, dev)
            attacked = copies[users[0]] if done is None else done.model
            _job_env_seed(job.seed)  # the judge draws the same randomness whether the attack ran or was cached
            cost = {} if done is None else _cost_of(done.cost)
            if done is not None:
                row["attack_wall_s"] = float(done.cost.get("wall_s", 0.0))
            row["attacked_acc"] = _attacked_accuracy(attack, attacked, splits, cost)
            if attack is not None:
                row["cost"] = {**cost, "owner_acc": job.owner_acc, "attacked_acc": row["attacked_acc"],
                               "accuracy_delta": row["attacked_acc"] - (job.owner_acc or 0.0)}
            try:
                _judge_cell(job, row, attack, attacked, users, splits, dev)
            except KeyMismatchError as e:
                # the key cannot be applied to what the attack made (e.g. a white-box key and a student of
                # another architecture): the protection cannot judge this model, so it is not owned
                row.update(owned=False, score=None, p_value=None, threshold=None, queries=0, alpha=job.alpha,
                           detail={"not_applicable": str(e)})
            # the unattacked cell cannot remove anything: a protected model judged not owned is a missed
            # detection (owned = 0 in its row), not a removal
            row["removed"] = (attack is not None and not row["owned"]
                              and row["attacked_acc"] >= (job.owner_acc or 0.0) - REMOVAL_MARGIN)
    except ModelSealError as e:
        row.update(status="error", detail={"error": f"{type(e).__name__}: {e}"})
    row["wall_s"] = time.perf_counter() - t0
    return row


def job_negative(job: NegativeJob) -> dict[str, Any]:
    """Judge one independent model with one protection's key."""
    from .. import methods
    from ..keys import Key
    from ..suspect import Suspect

    prot = job.protection
    t0 = time.perf_counter()
    row: dict[str, Any] = {"neg_id": job.neg_id, "protection": prot.label, "method": prot.method,
                           "family": prot.family, "seed": job.seed, "negative": job.label, "arch": job.arch,
                           "kind": job.kind, "accuracy": job.accuracy, "status": "ok"}
    per_user = methods.info(prot.method).family == "per-user"
    try:
        with _job_env(job.seed, job.threads):
            dev = _device(job.device)
            key = Key.from_bytes(_value(job.key))
            model = model_from_bytes(_value(job.model)).to(dev)
            v = methods.judge(Suspect(model), key, **_verifier(prot, job.alpha, _value(job.references), dev))
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
