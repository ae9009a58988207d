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

    [[attacks]]              # a combined attack: its steps run in order, as one cell (one row)
    name = "prune-then-steal"
    chain = [{ attack = "structured-prune", params = { amount = 0.5 } },
             { attack = "knockoff", params = { queries = 500 } }]

    [negatives]
    count = 2
    archs = ["mlp", "cnn"]   # cycled; seeds 1000, 1001, ...
    epochs = 5
    data_seeds = [0, 1]      # optional, cycled: independent models on the attacker split of other data splits
    students = 1             # optional: models extracted from the independent models (seeds 3000, ...)
    student_attack = { attack = "knockoff", params = { queries = 1000, epochs = 5 } }   # the default
    siblings = 3             # optional: innocent siblings of a public base model (below)
    base_epochs = 10         # the public base's training (default: the negatives' epochs)
    sibling_epochs = 3       # each sibling's fine-tune from the base (default: the owner's epochs)

Siblings (`[negatives] siblings = N`): most deployed models are fine-tunes of a public base, and an innocent
party that fine-tuned the same base is related to the owner without having taken anything from it. With
siblings, the bench trains one **public base** of the owner's architecture on the *attacker split* (seed 5000,
`base_epochs`); the **owner is fine-tuned from that base** on the owner split (`[owner] epochs` are then its
fine-tune epochs); and N **siblings** are fine-tuned from the same base, each on its own seeded half of the
attacker split with its own seed (4000, 4001, ...; `sibling_epochs`). The base itself is judged too. The
attacker split and not the test split: every accuracy in the report (and the 5-point removal margin) is
measured on the test split, which must stay unseen by every model; the attacker split is disjoint from the
owner's data, which is all a public base needs. Siblings and the base are negatives of their own kind
(`sibling`, `base` in the store), reported beside the independent models, never mixed into them. A scenario
without `siblings` keeps its owner, negatives, cell ids and rows.

Validation errors name the key and its line in the file (`ScenarioError`). Every number is bounded with
`modelseal.validate` (epochs, batch sizes, seeds, counts, and method/attack parameters that size work such
as `n`, `steps` or `permutations`); sweeps, cells and the file itself have upper bounds too.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import validate
from ..attacks import CHAIN, STUDENT
from ..errors import ModelSealError
from ..schema import MAX_SEED, Spec
from ..verdict import DEFAULT_ALPHA

if TYPE_CHECKING:
    from ..methods.base import Method

BUILTIN = ("demo", "tiny", "arena")
TOP_KEYS = {"name", "data", "data_seed", "seeds", "baseline", "device", "threads", "owner", "protections",
            "attacks", "negatives", "alpha"}
BASE_SEED = 5000  # the public base of a scenario with siblings
SIBLING_SEED = 4000  # sibling i is fine-tuned with seed 4000 + i (other negatives: 1000+, 2000+, 3000+)
SIBLING_FRACTION = 0.5  # each sibling fine-tunes on its own seeded half of the attacker split


class ScenarioError(ModelSealError):
    """A scenario file is not valid TOML or does not follow the scenario schema."""


def protect_params(cls: type[Method], params: dict[str, Any]) -> dict[str, Any]:
    """The protection's parameters that configure the method (its constructor)."""
    return {k: v for k, v in params.items() if k not in cls.verify_params}


def verifier_params(cls: type[Method], params: dict[str, Any]) -> dict[str, Any]:
    """The protection's parameters that belong to the verifier (the method's `verify_params`); for a
    parameter of kind "models" the value is the number of independent reference models the bench trains."""
    return {k: v for k, v in params.items() if k in cls.verify_params}


def reference_count(prot: Protection) -> int:
    """How many reference models a protection of the scenario asks the bench to train (its "models" kind)."""
    from .. import methods
    from ..schema import of_kind

    return max([int(prot.params.get(k, 0)) for k in of_kind(methods.get(prot.method), "models")] or [0])


def spec_digest(obj: Any) -> str:
    """A short, stable name for a JSON-able spec (an owner, a negative, a cell): the cache and row ids."""
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
    selection: dict[str, Any] = field(default_factory=dict)  # what `select` kept (recorded with the results)

    def select(self, methods: Iterable[str] | None = None, seed: int | None = None) -> Scenario:
        """A copy restricted to the protections of `methods` (attacks aimed only at dropped protections go
        too) and, with `seed`, run with that one seed as owner seed and cell seed; cells are expanded anew.
        What was selected is kept in `selection` (the bench stores it next to the scenario text)."""
        protections = self.protections
        selection = dict(self.selection)
        if methods is not None:
            want = list(dict.fromkeys(methods))
            known = {p.method for p in self.protections}
            unknown = [m for m in want if m not in known]
            if unknown:
                raise ScenarioError(f"{self.source}: no protection uses {', '.join(unknown)}; "
                                    f"it has {', '.join(sorted(known))}")
            protections = [p for p in self.protections if p.method in want]
            selection["methods"] = want
        labels = {p.label for p in protections}
        attacks = []
        for v in self.attacks:
            if v.only is None:
                attacks.append(v)
            elif labels & set(v.only):
                attacks.append(replace(v, only=tuple(o for o in v.only if o in labels)))
        owner, seeds = dict(self.owner), list(self.seeds)
        if seed is not None:
            seed = validate.count("seed", seed, 0, MAX_SEED, error=ScenarioError)
            owner["seed"], seeds = seed, [seed]
            selection["seed"] = seed
        return _expand(replace(self, protections=protections, attacks=attacks, owner=owner, seeds=seeds,
                               selection=selection, cells=[]))

    def owner_spec(self) -> dict[str, Any]:
        """The owner's training: from scratch, or (a scenario with siblings) a fine-tune of the public base."""
        spec = {"data": self.data, "data_seed": self.data_seed, **self.owner}
        if self.negatives.get("siblings"):
            spec["base"] = self.base_spec()
        return spec

    def base_spec(self) -> dict[str, Any]:
        """The public base of a scenario with siblings: the owner's architecture trained on the attacker split
        (module docstring: why that split)."""
        n = self.negatives
        return {"data": self.data, "data_seed": self.data_seed, "arch": self.owner["arch"],
                "epochs": n["base_epochs"], "lr": n["lr"], "batch_size": n["batch_size"], "seed": BASE_SEED}

    def relative_specs(self) -> list[dict[str, Any]]:
        """The public base (kind `base`) and its `siblings` (kind `sibling`): fine-tunes of the base on seeded
        halves of the attacker split, seeds 4000, 4001, ...; none without `siblings`."""
        n = self.negatives
        if not n.get("siblings"):
            return []
        base = self.base_spec()
        sibs = [{"data": self.data, "data_seed": self.data_seed, "arch": self.owner["arch"],
                 "epochs": n["sibling_epochs"], "lr": self.owner["lr"], "batch_size": self.owner["batch_size"],
                 "seed": SIBLING_SEED + i, "base": base, "fraction": SIBLING_FRACTION, "kind": "sibling",
                 "label": f"sibling#{i}"} for i in range(n["siblings"])]
        return [{**base, "kind": "base", "label": "public-base"}, *sibs]

    def negative_specs(self) -> list[dict[str, Any]]:
        """The independent models: `count` models cycling `archs` and `data_seeds` (seeds 1000, 1001, ...),
        then `students` models extracted (`student_attack`) from those independent models in turn (seeds
        3000, 3001, ...): a student of an independent model is a derived model, but not of the owner's."""
        n = self.negatives
        archs, dseeds = n["archs"], n.get("data_seeds") or [self.data_seed]
        out = [{"data": self.data, "data_seed": dseeds[i % len(dseeds)], "arch": archs[i % len(archs)],
                "epochs": n["epochs"], "lr": n["lr"], "batch_size": n["batch_size"], "seed": 1000 + i,
                "label": f"{archs[i % len(archs)]}#{i}" + (f"@split{dseeds[i % len(dseeds)]}" if len(dseeds) > 1
                                                             else "")} for i in range(n["count"])]
        students = []
        for j in range(int(n.get("students", 0))):
            teacher = {k: v for k, v in out[j % len(out)].items() if k != "label"}
            extract = n["student_attack"]
            student = str(extract["params"].get("student", "same"))
            arch = teacher["arch"] if student == "same" else (student if student != "other" else
                                                              f"other-than-{teacher['arch']}")
            students.append({"data": teacher["data"], "data_seed": teacher["data_seed"], "arch": arch,
                             "epochs": n["epochs"], "lr": n["lr"], "batch_size": n["batch_size"], "seed": 3000 + j,
                             "teacher": teacher, "extract": extract,
                             "label": f"student-of-{out[j % len(out)]['label']}#{j}"})
        return out + students + self.relative_specs()

    def reference_specs(self, count: int) -> list[dict[str, Any]]:
        """Independent models for calibrating c-examples: other seeds than the negatives; they cycle the
        negatives' architectures from the last one."""
        archs = list(reversed(self.negatives["archs"])) or [self.owner["arch"]]
        return [{"data": self.data, "data_seed": self.data_seed, "arch": archs[i % len(archs)],
                 "epochs": self.negatives["epochs"] or self.owner["epochs"], "lr": self.negatives["lr"],
                 "batch_size": self.negatives["batch_size"], "seed": 2000 + i,
                 "label": f"ref-{archs[i % len(archs)]}#{i}"} for i in range(count)]


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")


def _assigns(line: str, leaf: str) -> bool:
    """Whether `line` assigns `leaf` (`leaf = ...`, `"leaf" = ...`, or inside an inline table)."""
    k = re.escape(leaf)
    return bool(re.search(rf"^\s*[\"']?{k}[\"']?\s*=|[{{,]\s*[\"']?{k}[\"']?\s*=", line))


def _line_of(text: str, key: str, occurrence: int = 0, table: str | None = None) -> int | None:
    """1-based line of `key` in `text`, looked up inside the `occurrence`-th `[table]`/`[[table]]` (the
    top level when `table` is None: before the first table header). Falls back to the table's header
    line, then to the first line anywhere that assigns the key; None when absent."""
    lines = text.splitlines()
    leaf = key.split(".")[-1].split("[")[0]
    headers = [(i, m.group(2).strip().strip("\"'")) for i, line in enumerate(lines)
               if (m := _HEADER.match(line))]
    if table is None:
        stop = headers[0][0] if headers else len(lines)
        spans = [(0, stop)]
    else:
        starts = [i for i, name in headers if name == table]
        spans = []
        for a in starts:
            b = next((i for i, _ in headers if i > a), len(lines))
            spans.append((a, b))
        if not spans:  # the table is written inline: `table = [{...}, {...}]` or `table = {...}`
            at = next((i for i, line in enumerate(lines) if _assigns(line, table)), None)
            if at is not None:
                stop = next((i for i, _ in headers if i > at), len(lines))
                hits = [i for i in range(at, stop) if _assigns(lines[i], leaf)]
                if hits:
                    return hits[min(occurrence, len(hits) - 1)] + 1
                return at + 1
    if spans:
        a, b = spans[min(occurrence, len(spans) - 1)]
        for i in range(a, b):
            if (table is None or i > a) and _assigns(lines[i], leaf):
                return i + 1
        if table is not None:
            return a + 1
    hits = [i for i, line in enumerate(lines) if _assigns(line, leaf) or
            ((m := _HEADER.match(line)) and m.group(2).strip() == leaf)]
    return hits[0] + 1 if hits else None


class _Checker:
    def __init__(self, text: str, source: str):
        self.text, self.source = text, source

    def fail(self, key: str, msg: str, occurrence: int = 0, table: str | None = None) -> ScenarioError:
        if table is None and "." in key:
            table = key.split(".")[0]
        line = _line_of(self.text, key, occurrence, table)
        where = f"{self.source}, line {line}" if line else self.source
        return ScenarioError(f"{where}: key '{key}': {msg}")

    def typed(self, tbl: dict, key: str, path: str, kind: type | tuple, default: Any = ..., occ: int = 0,
              table: str | None = None):
        if key not in tbl:
            if default is ...:
                raise self.fail(path, "is required", occ, table)
            return default
        v = tbl[key]
        ok = isinstance(v, kind) and not (isinstance(v, bool) and kind in (int, float, (int, float)))
        if not ok:
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.fail(path, f"must be {names}, got {type(v).__name__} {v!r}", occ, table)
        return v

    def bounded(self, tbl: dict, key: str, path: str, default: Any, lo: float, hi: float, *,
                integer: bool = True, lo_open: bool = False, occ: int = 0, table: str | None = None):
        """A number from the scenario checked by `modelseal.validate` (finite, in range, below hard bounds)."""
        v = self.typed(tbl, key, path, int if integer else (int, float), default, occ, table)
        try:
            return validate.number(path, v, lo, hi, integer=integer, lo_open=lo_open)
        except ModelSealError as e:
            raise self.fail(path, str(e).removeprefix(f"{path} "), occ, table) from None

    def unknown(self, tbl: dict, allowed: set[str], prefix: str, occ: int = 0, table: str | None = None) -> None:
        for k in tbl:
            if k not in allowed:
                raise self.fail(f"{prefix}{k}", f"unknown key; expected one of {', '.join(sorted(allowed))}",
                                occ, table)


MAX_VARIANTS = 10_000
MAX_CELLS = 100_000
MAX_TEXT = 1 << 20


def _check_params(c: _Checker, cls: type, params: dict[str, Any], what: str, occ: int, table: str) -> None:
    """Every parameter in `params` is one `cls` declares (its schema, and for a method its verifier's), and
    every value (each value of a sweep) fits the declared type and range, before any constructor runs."""
    from ..schema import fields_of

    specs = {s.name: s for s in fields_of(cls)}
    specs.update(getattr(cls, "verify_params", {}))
    for k, v in params.items():
        spec = specs.get(k)
        if spec is None:
            raise c.fail("params", f"{what} has no parameter '{k}'; its parameters: {', '.join(specs)}", occ, table)
        if spec.kind == "models":  # in a scenario: how many independent reference models the bench trains
            spec = Spec("int", 0, "reference models to train", lo=0, hi=1000, name=k)
        for item in (v if isinstance(v, list) and not spec.base.startswith("list") else [v]):
            try:
                spec.check(item)
            except ModelSealError as e:
                raise c.fail("params", f"{what} parameter {e}", occ, table) from None


def _chain_steps(c: _Checker, steps: Any, known: set[str], occ: int) -> list[dict[str, Any]]:
    """The steps of a chained attack: [{attack = NAME, params = {...}}, ...], each known, none swept."""
    from .. import attacks as attack_registry

    if not isinstance(steps, list) or not steps:
        raise c.fail(CHAIN, "must be a non-empty list of {attack = NAME, params = {...}} tables", occ, "attacks")
    out = []
    for j, st in enumerate(steps):
        if not isinstance(st, dict) or "attack" not in st or set(st) - {"attack", "params"}:
            raise c.fail(CHAIN, f"step {j + 1} must be {{attack = NAME, params = {{...}}}}, got {st!r}", occ,
                         "attacks")
        name, params = st["attack"], st.get("params", {})
        if not isinstance(name, str) or name not in known or name == CHAIN:
            raise c.fail(CHAIN, f"step {j + 1}: unknown attack {name!r}; known: {', '.join(sorted(known))}", occ,
                         "attacks")
        if not isinstance(params, dict) or any(isinstance(v, list) for v in params.values()):
            raise c.fail(CHAIN, f"step {j + 1}: params must be a table of single values (a chain step is not "
                         "swept)", occ, "attacks")
        _check_params(c, attack_registry.get(name), params, f"chain step {j + 1} ({name})", occ, "attacks")
        out.append({"attack": name, "params": dict(params)})
    return out


def parse(text: str, source: str = "<scenario>") -> Scenario:
    """Validate a scenario's TOML text and expand its cells."""
    from .. import attacks as attack_registry
    from .. import methods as method_registry
    from ..errors import RegistryError

    if len(text) > MAX_TEXT:
        raise ScenarioError(f"{source}: {len(text)} characters; a scenario is at most {MAX_TEXT}")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{source}: not valid TOML: {e}") from None
    except RecursionError:
        raise ScenarioError(f"{source}: not valid TOML: arrays or tables nested too deeply") from None
    c = _Checker(text, source)
    c.unknown(raw, TOP_KEYS, "")
    name = c.typed(raw, "name", "name", str, Path(source).stem)
    data = c.typed(raw, "data", "data", str)
    data_seed = c.bounded(raw, "data_seed", "data_seed", 0, 0, MAX_SEED)
    seeds = c.typed(raw, "seeds", "seeds", list, [0])
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED for s in seeds):
        raise c.fail("seeds", f"must be a non-empty list of integers in [0, {MAX_SEED}], got {seeds!r}")
    if len(seeds) > 1000:
        raise c.fail("seeds", f"at most 1000 seeds, got {len(seeds)}")
    baseline = c.typed(raw, "baseline", "baseline", bool, True)
    device = c.typed(raw, "device", "device", str, "cpu")
    threads = c.bounded(raw, "threads", "threads", 1, 1, 1024)

    owner_t = c.typed(raw, "owner", "owner", dict)
    c.unknown(owner_t, {"arch", "epochs", "lr", "batch_size", "seed"}, "owner.")
    owner = {"arch": c.typed(owner_t, "arch", "owner.arch", str),
             "epochs": c.bounded(owner_t, "epochs", "owner.epochs", ..., 1, validate.MAX_EPOCHS),
             "lr": float(c.bounded(owner_t, "lr", "owner.lr", 1e-3, 0, 10, integer=False, lo_open=True)),
             "batch_size": c.bounded(owner_t, "batch_size", "owner.batch_size", 64, 1, validate.MAX_BATCH),
             "seed": c.bounded(owner_t, "seed", "owner.seed", 0, 0, MAX_SEED)}
    from .. import models as model_zoo
    if owner["arch"] not in model_zoo.names():
        raise c.fail("owner.arch", f"unknown architecture '{owner['arch']}'; known: {', '.join(model_zoo.names())}")

    protections: list[Protection] = []
    known_methods = method_registry.names()
    for i, p in enumerate(c.typed(raw, "protections", "protections", list)):
        if not isinstance(p, dict):
            raise c.fail("protections", "must be an array of tables ([[protections]])", i)
        c.unknown(p, {"method", "label", "params"}, "protections.", i, table="protections")
        method = c.typed(p, "method", "method", str, occ=i, table="protections")
        if method not in known_methods:
            raise c.fail("method", f"method '{method}' is not installed; installed: "
                         f"{', '.join(known_methods) or 'none'}", i, "protections")
        try:
            cls = method_registry.get(method)
        except RegistryError as e:
            raise c.fail("method", str(e), i, "protections") from None
        params = c.typed(p, "params", "params", dict, {}, occ=i, table="protections")
        _check_params(c, cls, params, method, i, "protections")
        try:
            cls(**protect_params(cls, params))
        except (TypeError, ModelSealError) as e:
            raise c.fail("params", f"bad parameters for {method}: {e}", i, "protections") from None
        label = c.typed(p, "label", "label", str, method, occ=i, table="protections")
        protections.append(Protection(label, method, cls.family, params))
    labels = [p.label for p in protections]
    if len(set(labels)) != len(labels):
        dup = next(lb for lb in labels if labels.count(lb) > 1)
        occ = [i for i, lb in enumerate(labels) if lb == dup][1]
        raise c.fail("label", f"protection labels must be unique, got {labels}; add label = \"...\"", occ,
                     "protections")

    known_attacks = set(attack_registry.names())
    variants: list[AttackVariant] = []
    if baseline:
        variants.append(AttackVariant("none", "none", {}, 0.0, None))
    for i, a in enumerate(c.typed(raw, "attacks", "attacks", list, [])):
        if not isinstance(a, dict):
            raise c.fail("attacks", "must be an array of tables ([[attacks]])", i)
        c.unknown(a, {"name", "attack", "params", "only", CHAIN}, "attacks.", i, table="attacks")
        only = c.typed(a, "only", "only", list, None, occ=i, table="attacks")
        for o in only or []:
            if o not in labels:
                raise c.fail("only", f"'{o}' is not a protection label of this scenario; labels: "
                             f"{', '.join(labels)}", i, "attacks")
        label = c.typed(a, "name", "name", str, occ=i, table="attacks")
        attack = c.typed(a, "attack", "attack", str, CHAIN if CHAIN in a else label, occ=i, table="attacks")
        if attack not in known_attacks:
            raise c.fail("name" if "attack" not in a else "attack",
                         f"unknown attack '{attack}'; known: {', '.join(sorted(known_attacks))}", i, "attacks")
        params = c.typed(a, "params", "params", dict, {}, occ=i, table="attacks")
        chain = c.typed(a, CHAIN, CHAIN, list, None, occ=i, table="attacks")
        if chain is not None:  # a combined attack: one cell (one row) with every step's parameters
            if "attack" in a or "params" in a:
                raise c.fail(CHAIN, "an entry with chain = [...] names its steps only (no attack or params)",
                             i, "attacks")
            attack, params = CHAIN, {"steps": _chain_steps(c, chain, known_attacks, i)}
        elif attack == CHAIN:
            params = {**params, "steps": _chain_steps(c, params.get("steps"), known_attacks, i)}
        _check_params(c, attack_registry.get(attack), {k: v for k, v in params.items() if k != "steps"},
                      f"attack {attack}", i, "attacks")
        # a chain's list of steps is its value, not a sweep
        swept = [k for k, v in params.items() if isinstance(v, list) and not (attack == CHAIN and k == "steps")]
        size = 1
        for k in swept:
            if not params[k]:
                raise c.fail(k, "a sweep needs at least one value", i, "attacks")
            size *= len(params[k])
        if len(variants) - bool(baseline) + size > MAX_VARIANTS:  # the unattacked baseline is not a sweep value
            raise c.fail("params", f"the sweeps give more than {MAX_VARIANTS} attack variants; sweep fewer "
                         "values", i, "attacks")
        grid = itertools.product(*[params[k] for k in swept]) if swept else [()]
        for values in grid:
            concrete = {**params, **dict(zip(swept, values, strict=False))}
            strength = values[0] if values and isinstance(values[0], (int, float)) else None
            tag = label + ("" if not swept else " " + ",".join(f"{k}={v}" for k, v in zip(swept, values, strict=False)))
            try:
                make: Any = attack_registry.get(attack)  # every attack declares a seed (its schema)
                make(**concrete, seed=0)
            except (TypeError, ModelSealError) as e:
                raise c.fail("params", f"bad parameters for attack {attack}: {e}", i, "attacks") from None
            variants.append(AttackVariant(tag, attack, concrete,
                                          None if strength is None else float(strength),
                                          swept[0] if swept else None, tuple(only) if only else None))

    neg_t = c.typed(raw, "negatives", "negatives", dict, {})
    c.unknown(neg_t, {"count", "archs", "epochs", "lr", "batch_size", "data_seeds", "students", "student_attack",
                      "siblings", "base_epochs", "sibling_epochs"}, "negatives.")
    negatives = {"count": c.bounded(neg_t, "count", "negatives.count", 0, 0, 1000),
                 "archs": c.typed(neg_t, "archs", "negatives.archs", list, [owner["arch"]]),
                 "epochs": c.bounded(neg_t, "epochs", "negatives.epochs", owner["epochs"], 1, validate.MAX_EPOCHS),
                 "lr": float(c.bounded(neg_t, "lr", "negatives.lr", owner["lr"], 0, 10, integer=False,
                                       lo_open=True)),
                 "batch_size": c.bounded(neg_t, "batch_size", "negatives.batch_size", owner["batch_size"], 1,
                                         validate.MAX_BATCH)}
    if not negatives["archs"]:
        raise c.fail("negatives.archs", "must name at least one architecture")
    _negative_extras(c, neg_t, negatives, data_seed, known_attacks)
    _siblings(c, neg_t, negatives, owner)
    for a in negatives["archs"]:
        if not isinstance(a, str) or a not in model_zoo.names():
            raise c.fail("negatives.archs", f"unknown architecture {a!r}; known: {', '.join(model_zoo.names())}")

    alpha = c.typed(raw, "alpha", "alpha", (int, float), DEFAULT_ALPHA)
    try:
        alpha = validate.alpha(alpha)
    except ModelSealError as e:
        raise c.fail("alpha", str(e)) from None
    ncells = sum(len(seeds) for p in protections for v in variants if v.only is None or p.label in v.only)
    if ncells > MAX_CELLS:
        raise ScenarioError(f"{source}: the scenario expands to {ncells} cells, more than {MAX_CELLS}; use fewer "
                            "seeds, sweep values or protections")
    return _expand(Scenario(name, data, data_seed, list(seeds), owner, protections, variants, negatives, baseline,
                            device, threads, text, source, alpha=alpha))


DEFAULT_STUDENT_ATTACK = {"attack": STUDENT, "params": {"queries": 1000, "epochs": 5}}


def _negative_extras(c: _Checker, neg_t: dict[str, Any], negatives: dict[str, Any], data_seed: int,
                     known_attacks: set[str]) -> None:
    """`data_seeds` (independent models on other data splits) and `students` (models extracted from
    independent models, by `student_attack`: an extraction attack with single-valued parameters)."""
    from .. import attacks as attack_registry

    dseeds = c.typed(neg_t, "data_seeds", "negatives.data_seeds", list, None)
    if dseeds is not None:
        if not dseeds or len(dseeds) > 1000 or not all(
                isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SEED for s in dseeds):
            raise c.fail("negatives.data_seeds", f"must be 1 to 1000 integers in [0, {MAX_SEED}], got {dseeds!r}")
        if dseeds != [data_seed]:  # the default adds nothing to the specs (their ids stay those of older runs)
            negatives["data_seeds"] = list(dseeds)
    students = c.bounded(neg_t, "students", "negatives.students", 0, 0, 1000)
    if students:
        if negatives["count"] == 0:
            raise c.fail("negatives.students", "students are extracted from the independent models: set count >= 1")
        st = c.typed(neg_t, "student_attack", "negatives.student_attack", dict, DEFAULT_STUDENT_ATTACK)
        name, params = st.get("attack"), st.get("params", {})
        if set(st) - {"attack", "params"} or not isinstance(name, str) or not isinstance(params, dict):
            raise c.fail("negatives.student_attack", f"must be {{attack = NAME, params = {{...}}}}, got {st!r}")
        if name not in known_attacks or getattr(attack_registry.get(name), "family", "") != "extraction":
            raise c.fail("negatives.student_attack", f"'{name}' is not an extraction attack; use knockoff or distill")
        if any(isinstance(v, list) for v in params.values()):
            raise c.fail("negatives.student_attack", "its params are single values (not a sweep)")
        _check_params(c, attack_registry.get(name), params, f"student attack {name}", 0, "negatives")
        negatives["students"] = students
        negatives["student_attack"] = {"attack": name, "params": dict(params)}
    elif "student_attack" in neg_t:
        raise c.fail("negatives.student_attack", "needs students = N (how many students to extract)")


def _siblings(c: _Checker, neg_t: dict[str, Any], negatives: dict[str, Any], owner: dict[str, Any]) -> None:
    """`siblings` (fine-tunes of a public base by innocent parties), `base_epochs` and `sibling_epochs`; the
    defaults add nothing to `negatives` (a scenario without siblings keeps its specs and ids)."""
    siblings = c.bounded(neg_t, "siblings", "negatives.siblings", 0, 0, 1000)
    if not siblings:
        for k in ("base_epochs", "sibling_epochs"):
            if k in neg_t:
                raise c.fail(f"negatives.{k}", "needs siblings = N (how many siblings of the public base)")
        return
    negatives["siblings"] = siblings
    negatives["base_epochs"] = c.bounded(neg_t, "base_epochs", "negatives.base_epochs", negatives["epochs"], 1,
                                         validate.MAX_EPOCHS)
    negatives["sibling_epochs"] = c.bounded(neg_t, "sibling_epochs", "negatives.sibling_epochs", owner["epochs"],
                                            1, validate.MAX_EPOCHS)


def _expand(sc: Scenario) -> Scenario:
    """Fill `sc.cells`: every protection x attack variant aimed at it x seed, with its content id."""
    sc.cells = []
    for p in sc.protections:
        for v in sc.attacks:
            if v.only is not None and p.label not in v.only:
                continue
            for s in sc.seeds:
                cell = Cell(p, v, s)
                cell.id = spec_digest({"owner": sc.owner_spec(), **cell.spec()})
                sc.cells.append(cell)
    return sc


def load(path: str | Path) -> Scenario:
    """Read a scenario file, or a built-in one by name ('demo', 'tiny')."""
    s = str(path)
    if s in BUILTIN:
        text = resources.files("modelseal.bench").joinpath("scenarios", f"{s}.toml").read_text()
        return parse(text, f"<built-in {s}>")
    from ..safeio import usable_path

    p = usable_path(s, ScenarioError, "scenario file")
    if not p.is_file():
        raise ScenarioError(f"scenario file {p} does not exist (or name a built-in: {', '.join(BUILTIN)})")
    try:
        if p.stat().st_size > MAX_TEXT:
            raise ScenarioError(f"{p}: {p.stat().st_size} bytes; a scenario is at most {MAX_TEXT}")
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ScenarioError(f"{p}: not UTF-8 text, so not a TOML scenario") from None
    except OSError as e:
        raise ScenarioError(f"cannot read scenario file {p}: {e.strerror or e}") from None
    return parse(text, str(p))
