"""Benchmark scenarios: a TOML file expanded into preparation jobs and cells.

A scenario names the data set, the owner model and its training, the protections (registered methods with
parameters), the attacks (any name in `modelseal.attacks`, `overwrite`, `perturb` and `collude` included) with
parameter sweeps (any list value is swept; several lists give their product), the negatives (independent
models trained on the attacker split) and the seeds. Example::

    name = "tiny"
    data = "digits"          # a name for modelseal.data.load
    seeds = [0]              # one cell per protection x attack variant x seed
    baseline = true          # also judge every protected model unattacked ("none" cells)

    [owner]
    arch = "mlp"
    epochs = 5               # lr, batch_size and seed (default 0) may be given too

    [[protections]]
    method = "trigger-set"   # label = "..." tells two entries of one method apart
    params = { n = 20 }

    [[attacks]]
    name = "prune"           # attack = "..." when the label differs from the registry name
    params = { amount = [0.2, 0.5] }
    only = ["trigger-set"]   # optional: the protection labels this attack applies to

    [negatives]
    count = 2
    archs = ["mlp", "cnn"]   # cycled; seeds 1000, 1001, ...
    epochs = 5

Validation errors name the key and its line in the file (`ScenarioError`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .. import validate
from ..errors import ModelSealError
from ..verdict import DEFAULT_ALPHA

BUILTIN = ("demo", "tiny")
TOP_KEYS = {"name", "data", "data_seed", "seeds", "baseline", "device", "threads", "owner", "protections",
            "attacks", "negatives", "alpha"}


class ScenarioError(ModelSealError):
    """A scenario file is not valid TOML or does not follow the scenario schema."""


def protect_params(cls: type, params: dict[str, Any]) -> dict[str, Any]:
    """The protection's parameters that configure the method (its constructor)."""
    return {k: v for k, v in params.items() if k not in cls.verify_params}


def verifier_params(cls: type, params: dict[str, Any]) -> dict[str, Any]:
    """The protection's parameters that belong to the verifier (the method's `verify_params`); for
    `references` the value is the number of independent reference models the bench trains."""
    return {k: v for k, v in params.items() if k in cls.verify_params}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Protection:
    label: str
    method: str
    family: str  # watermark | fingerprint | per-user | lock (declared at registration)
    params: dict[str, Any]


@dataclass(frozen=True)
class AttackVariant:
    label: str
    attack: str
    params: dict[str, Any]
    strength: float | None  # value of the (first) swept parameter, for plots
    swept: str | None
    only: tuple[str, ...] | None = None  # protection labels this attack applies to (None: all)


@dataclass
class Cell:
    protection: Protection
    attack: AttackVariant
    seed: int
    id: str = ""

    def spec(self) -> dict[str, Any]:
        return {"protection": self.protection.label, "method": self.protection.method,
                "family": self.protection.family, "protection_params": self.protection.params,
                "attack": self.attack.label, "attack_name": self.attack.attack,
                "attack_params": self.attack.params, "strength": self.attack.strength, "seed": self.seed}


@dataclass
class Scenario:
    name: str
    data: str
    data_seed: int
    seeds: list[int]
    owner: dict[str, Any]
    protections: list[Protection]
    attacks: list[AttackVariant]
    negatives: dict[str, Any]
    baseline: bool = True
    device: str = "cpu"
    threads: int = 1
    text: str = ""
    source: str = "<scenario>"
    cells: list[Cell] = field(default_factory=list)
    alpha: float = DEFAULT_ALPHA  # the verifier's false-accusation rate for every verdict

    def owner_spec(self) -> dict[str, Any]:
        return {"data": self.data, "data_seed": self.data_seed, **self.owner}

    def negative_specs(self) -> list[dict[str, Any]]:
        n = self.negatives
        archs = n["archs"]
        return [{"data": self.data, "data_seed": self.data_seed, "arch": archs[i % len(archs)],
                 "epochs": n["epochs"], "lr": n["lr"], "batch_size": n["batch_size"], "seed": 1000 + i,
                 "label": f"{archs[i % len(archs)]}#{i}"} for i in range(n["count"])]

    def reference_specs(self, count: int) -> list[dict[str, Any]]:
        """Independent models for calibrating c-examples: other seeds than the negatives; they cycle the
        negatives' architectures from the last one."""
        archs = list(reversed(self.negatives["archs"])) or [self.owner["arch"]]
        return [{"data": self.data, "data_seed": self.data_seed, "arch": archs[i % len(archs)],
                 "epochs": self.negatives["epochs"] or self.owner["epochs"], "lr": self.negatives["lr"],
                 "batch_size": self.negatives["batch_size"], "seed": 2000 + i,
                 "label": f"ref-{archs[i % len(archs)]}#{i}"} for i in range(count)]


def _line_of(text: str, key: str, occurrence: int = 0) -> int | None:
    """1-based line where `key` is assigned (or its table opens) in `text`; None when absent."""
    leaf = key.split(".")[-1].split("[")[0]
    pat = re.compile(rf"^\s*(\[\[?\s*)?\"?{re.escape(leaf)}\"?\s*(=|\]|\.)|[{{,]\s*{re.escape(leaf)}\s*=")
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if pat.search(line)]
    if not hits:
        return None
    return hits[min(occurrence, len(hits) - 1)]


class _Checker:
    def __init__(self, text: str, source: str):
        self.text, self.source = text, source

    def fail(self, key: str, msg: str, occurrence: int = 0) -> ScenarioError:
        line = _line_of(self.text, key, occurrence)
        where = f"{self.source}, line {line}" if line else self.source
        return ScenarioError(f"{where}: key '{key}': {msg}")

    def typed(self, table: dict, key: str, path: str, kind: type | tuple, default: Any = ..., occ: int = 0):
        if key not in table:
            if default is ...:
                raise self.fail(path, "is required", occ)
            return default
        v = table[key]
        ok = isinstance(v, kind) and not (isinstance(v, bool) and kind in (int, float, (int, float)))
        if not ok:
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.fail(path, f"must be {names}, got {type(v).__name__} {v!r}", occ)
        return v

    def unknown(self, table: dict, allowed: set[str], prefix: str, occ: int = 0) -> None:
        for k in table:
            if k not in allowed:
                raise self.fail(f"{prefix}{k}", f"unknown key; expected one of {', '.join(sorted(allowed))}",
                                occ)


def parse(text: str, source: str = "<scenario>") -> Scenario:
    """Validate a scenario's TOML text and expand its cells."""
    from .. import attacks as attack_registry
    from .. import methods as method_registry
    from ..errors import RegistryError

    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{source}: not valid TOML: {e}") from None
    c = _Checker(text, source)
    c.unknown(raw, TOP_KEYS, "")
    name = c.typed(raw, "name", "name", str, Path(source).stem)
    data = c.typed(raw, "data", "data", str)
    data_seed = c.typed(raw, "data_seed", "data_seed", int, 0)
    seeds = c.typed(raw, "seeds", "seeds", list, [0])
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise c.fail("seeds", f"must be a non-empty list of integers, got {seeds!r}")
    baseline = c.typed(raw, "baseline", "baseline", bool, True)
    device = c.typed(raw, "device", "device", str, "cpu")
    threads = c.typed(raw, "threads", "threads", int, 1)

    owner_t = c.typed(raw, "owner", "owner", dict)
    c.unknown(owner_t, {"arch", "epochs", "lr", "batch_size", "seed"}, "owner.")
    owner = {"arch": c.typed(owner_t, "arch", "owner.arch", str),
             "epochs": c.typed(owner_t, "epochs", "owner.epochs", int),
             "lr": float(c.typed(owner_t, "lr", "owner.lr", (int, float), 1e-3)),
             "batch_size": c.typed(owner_t, "batch_size", "owner.batch_size", int, 64),
             "seed": c.typed(owner_t, "seed", "owner.seed", int, 0)}
    from .. import models as model_zoo
    if owner["arch"] not in model_zoo.names():
        raise c.fail("owner.arch", f"unknown architecture '{owner['arch']}'; known: {', '.join(model_zoo.names())}")
    if owner["epochs"] < 1:
        raise c.fail("owner.epochs", "must be >= 1")

    protections: list[Protection] = []
    known_methods = method_registry.names()
    for i, p in enumerate(c.typed(raw, "protections", "protections", list)):
        if not isinstance(p, dict):
            raise c.fail("protections", "must be an array of tables ([[protections]])", i)
        c.unknown(p, {"method", "label", "params"}, "protections.", i)
        method = c.typed(p, "method", "method", str, occ=i)
        if method not in known_methods:
            raise c.fail("method", f"method '{method}' is not installed; installed: "
                         f"{', '.join(known_methods) or 'none'}", i)
        try:
            cls = method_registry.get(method)
        except RegistryError as e:
            raise c.fail("method", str(e), i) from None
        params = c.typed(p, "params", "params", dict, {}, occ=i)
        try:
            cls(**protect_params(cls, params))
            vp = verifier_params(cls, params)
            if "references" in vp:
                validate.count("references", vp["references"], 0, 1000)
        except (TypeError, ModelSealError) as e:
            raise c.fail("params", f"bad parameters for {method}: {e}", i) from None
        label = c.typed(p, "label", "label", str, method, occ=i)
        protections.append(Protection(label, method, cls.family, params))
    labels = [p.label for p in protections]
    if len(set(labels)) != len(labels):
        raise c.fail("label", f"protection labels must be unique, got {labels}; add label = \"...\"")

    known_attacks = set(attack_registry.names())
    variants: list[AttackVariant] = []
    if baseline:
        variants.append(AttackVariant("none", "none", {}, 0.0, None))
    for i, a in enumerate(c.typed(raw, "attacks", "attacks", list, [])):
        if not isinstance(a, dict):
            raise c.fail("attacks", "must be an array of tables ([[attacks]])", i)
        c.unknown(a, {"name", "attack", "params", "only"}, "attacks.", i)
        only = c.typed(a, "only", "only", list, None, occ=i)
        for o in only or []:
            if o not in labels:
                raise c.fail("only", f"'{o}' is not a protection label of this scenario; labels: "
                             f"{', '.join(labels)}", i)
        label = c.typed(a, "name", "name", str, occ=i)
        attack = c.typed(a, "attack", "attack", str, label, occ=i)
        if attack not in known_attacks:
            raise c.fail("name" if "attack" not in a else "attack",
                         f"unknown attack '{attack}'; known: {', '.join(sorted(known_attacks))}", i)
        params = c.typed(a, "params", "params", dict, {}, occ=i)
        swept = [k for k, v in params.items() if isinstance(v, list)]
        for k in swept:
            if not params[k]:
                raise c.fail(k, "a sweep needs at least one value")
        grid = itertools.product(*[params[k] for k in swept]) if swept else [()]
        for values in grid:
            concrete = {**params, **dict(zip(swept, values, strict=False))}
            strength = values[0] if values and isinstance(values[0], (int, float)) else None
            tag = label + ("" if not swept else " " + ",".join(f"{k}={v}" for k, v in zip(swept, values, strict=False)))
            try:
                attack_registry.get(attack)(**concrete, seed=0)
            except (TypeError, ModelSealError) as e:
                raise c.fail("params", f"bad parameters for attack {attack}: {e}", i) from None
            variants.append(AttackVariant(tag, attack, concrete,
                                          None if strength is None else float(strength),
                                          swept[0] if swept else None, tuple(only) if only else None))

    neg_t = c.typed(raw, "negatives", "negatives", dict, {})
    c.unknown(neg_t, {"count", "archs", "epochs", "lr", "batch_size"}, "negatives.")
    negatives = {"count": c.typed(neg_t, "count", "negatives.count", int, 0),
                 "archs": c.typed(neg_t, "archs", "negatives.archs", list, [owner["arch"]]),
                 "epochs": c.typed(neg_t, "epochs", "negatives.epochs", int, owner["epochs"]),
                 "lr": float(c.typed(neg_t, "lr", "negatives.lr", (int, float), owner["lr"])),
                 "batch_size": c.typed(neg_t, "batch_size", "negatives.batch_size", int, owner["batch_size"])}
    for a in negatives["archs"]:
        if a not in model_zoo.names():
            raise c.fail("archs", f"unknown architecture '{a}'; known: {', '.join(model_zoo.names())}")

    alpha = c.typed(raw, "alpha", "alpha", (int, float), DEFAULT_ALPHA)
    try:
        alpha = validate.alpha(alpha)
    except ModelSealError as e:
        raise c.fail("alpha", str(e)) from None
    sc = Scenario(name, data, data_seed, list(seeds), owner, protections, variants, negatives, baseline,
                  device, threads, text, source, alpha=alpha)
    for p in protections:
        for v in variants:
            if v.only is not None and p.label not in v.only:
                continue
            for s in seeds:
                cell = Cell(p, v, s)
                cell.id = _digest({"owner": sc.owner_spec(), **cell.spec()})
                sc.cells.append(cell)
    return sc


def load(path: str | Path) -> Scenario:
    """Read a scenario file, or a built-in one by name ('demo', 'tiny')."""
    s = str(path)
    if s in BUILTIN:
        text = resources.files("modelseal.bench").joinpath("scenarios", f"{s}.toml").read_text()
        return parse(text, f"<built-in {s}>")
    p = Path(s)
    if not p.is_file():
        raise ScenarioError(f"scenario file {p} does not exist (or name a built-in: {', '.join(BUILTIN)})")
    return parse(p.read_text(), str(p))
