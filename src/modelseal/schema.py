"""One parameter schema for every method and attack, declared once beside the class.

A method or an attack is a dataclass whose fields are declared with `param(...)` (or one of the shared
ones, `seed_param`, `device_param`, `batch_param`): type (the annotation), default, range or choices,
meaning, and role (`protection` for a method's own parameters, `attack` for an attack's). A method's
verifier parameters (the ones that change a decision) are declared with `verifier(name=vparam(...), ...)`;
`alpha` is always among them, with the one default `verdict.DEFAULT_ALPHA`. Everything reads this one
declaration: construction (`Configurable.__post_init__` checks every field), the verifier's rule
(`rule`), `modelseal methods NAME`, scenario checking and `--set`.

`modelseal methods NAME` must answer without importing torch, and a method's module imports torch. So
`read(module, name)` finds the class registered as NAME in the module's source and evaluates only its
declarations (`param(...)` calls whose arguments are literals, module constants, or constants of the
torch-free modules `validate` and `verdict`), never importing the module. tests/test_schema.py checks, for
every registered method and attack, that what `read` finds equals what the imported class declares.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import importlib.util
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import validate
from .errors import ModelSealError
from .verdict import DEFAULT_ALPHA

ROLES = ("protection", "verifier", "attack", "runtime")
MAX_SEED = 2**63 - 1
MAX_TEXT = 4096  # longest free-text parameter (a path, a beacon, a layer name)
_KEY = "modelseal"
_TYPES = {"int", "float", "str", "bool", "list"}
# the error a failed check raises: a ModelSealError, or ValueError where a caller turns it into its own. Named
# here because inside Spec, `type` is the field of that name.
_Error = type[Exception]


@dataclass(frozen=True)
class Spec:
    """One parameter: its type, default, range (lo/hi, each end open or closed) or choices, meaning, role."""

    type: str
    default: Any
    meaning: str
    role: str = "protection"
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[str, ...] | None = None
    max_len: int = MAX_TEXT
    name: str = ""
    fresh: bool = False  # None means: draw a fresh value from the OS at construction (secret seeds)
    # what the value is to a consumer that knows kinds, not names: "value" (a plain setting), "models" (models
    # that estimate a null: objects in the API, files on the command line, a count of models the bench trains in
    # a scenario) or "budget" (the most queries the suspect may be asked)
    kind: str = "value"

    @property
    def base(self) -> str:
        """The type without `| None` ("union" when several types remain: the class's `check` judges those)."""
        parts = self.parts
        return parts[0] if len(parts) == 1 else "union"

    @property
    def parts(self) -> list[str]:
        return [p.strip() for p in self.type.split("|") if p.strip() != "None"]

    @property
    def optional(self) -> bool:
        return "None" in self.type

    def named(self, name: str, type_: str | None = None, role: str = "protection") -> Spec:
        """This spec as field `name` of a class: its annotation's type, and the class's role unless declared."""
        return dataclasses.replace(self, name=name, type=_norm_type(type_) if type_ else self.type,
                                   role=self.role or role)

    def range_text(self) -> str:
        if self.choices is not None:
            text = " | ".join(self.choices)
        elif self.base in ("int", "float"):
            def num(v: float) -> str:
                return str(int(v)) if self.base == "int" else f"{v:g}"

            lo = "-inf" if self.lo is None else num(self.lo)
            hi = "inf" if self.hi is None else num(self.hi)
            left = "(" if self.lo_open or self.lo is None else "["
            right = ")" if self.hi_open or self.hi is None else "]"
            text = f"{left}{lo}, {hi}{right}"
        elif self.base == "bool":
            text = "true | false"
        elif self.base.startswith("list"):
            text = "a list (see meaning)"
        elif self.base == "str":
            text = f"text of at most {self.max_len} characters"
        else:
            text = "see meaning"
        return text + (" or none" if self.optional else "")

    def check(self, value: Any, error: _Error = ModelSealError) -> Any:
        """`value` if it fits this parameter (numbers are range-checked, texts bounded); else `error`."""
        if value is None:
            if self.optional:
                return None
            raise error(f"{self.name} must not be empty (none); it takes {self.range_text()}")
        base = self.base
        if base in ("int", "float"):
            return validate.number(self.name, value, self.lo, self.hi, lo_open=self.lo_open, hi_open=self.hi_open,
                                   integer=base == "int", error=error)
        if base == "bool":
            if not isinstance(value, bool):
                raise error(f"{self.name} must be true or false, got {value!r}")
            return value
        if base == "str":
            if not isinstance(value, str):
                raise error(f"{self.name} must be text, got {type(value).__name__}")
            if self.choices is not None and value not in self.choices:
                raise error(f"unknown {self.name} '{value[:80]}'; use one of {', '.join(self.choices)}")
            if len(value) > self.max_len or "\x00" in value:
                raise error(f"{self.name} must be text of at most {self.max_len} characters without NUL bytes")
            return value
        return value  # lists and other composite values: the class's own `check` judges them

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "default": self.default, "range": self.range_text(),
                "meaning": self.meaning, "role": self.role}


def _norm_type(t: Any) -> str:
    """An annotation as text: `int | None` whether it came as a string (postponed annotations) or a type."""
    if isinstance(t, type):
        t = t.__name__
    t = str(t).replace("typing.", "")
    t = t.replace("Optional[", "").rstrip("]") if t.startswith("Optional[") else t
    return " | ".join(p.strip() for p in t.split("|"))


def param(default: Any, meaning: str, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
          hi_open: bool = False, choices: Any = None, max_len: int = MAX_TEXT, role: str = "") -> Any:
    """A dataclass field declaring one parameter (use as `n: int = param(100, "triggers in the key", lo=1)`).
    The role defaults to the class's (`protection` for a method, `attack` for an attack)."""
    if role and role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    spec = Spec(type="", default=default, meaning=meaning, role=role, lo=lo, hi=hi, lo_open=lo_open,
                hi_open=hi_open, choices=tuple(str(c) for c in choices) if choices is not None else None,
                max_len=max_len)
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={_KEY: spec})
    return dataclasses.field(default=default, metadata={_KEY: spec})


def seed_param(meaning: str = "random seed (deterministic given it)", role: str = "", hi: int = MAX_SEED) -> Any:
    return param(0, meaning, lo=0, hi=hi, role=role)


def secret_seed_param(meaning: str, hi: int = MAX_SEED) -> Any:
    """The seed a key's secrets derive from. Its default, none, draws a fresh 62-bit seed from the OS
    (`secrets`) when the method is made, and the key records it: two keys made without a seed differ, and
    nobody can re-make one from a published seed. Give a seed only for reproducible experiments."""
    spec = Spec(type="", default=None, meaning=meaning + " (none: a fresh one from the OS, recorded in the key)",
                lo=0, hi=hi, fresh=True)
    return dataclasses.field(default=None, metadata={_KEY: spec})


def device_param() -> Any:
    return param(None, "torch device (auto | cpu | cuda | cuda:N; none: where the model is)", max_len=64,
                 role="runtime")


def batch_param(default: int = 64, role: str = "") -> Any:
    return param(default, "examples per batch", lo=1, hi=validate.MAX_BATCH, role=role)


def progress_field() -> Any:
    """The progress callback a consumer hands in: not a parameter (no schema entry, never in a scenario)."""
    return dataclasses.field(default=None, repr=False, compare=False, metadata={_KEY: None})


def vparam(default: Any, meaning: str, type: str, **kw: Any) -> Spec:
    """One verifier parameter (inside `verifier(...)`)."""
    return Spec(type=_norm_type(type), default=default, meaning=meaning, role="verifier", **kw)


ALPHA = Spec(type="float", default=DEFAULT_ALPHA, meaning="false-accusation rate accepted: owned when p-value <= alpha",
             role="verifier", lo=0.0, hi=1.0, lo_open=True, hi_open=True, name="alpha")


def verifier(**params: Spec) -> dict[str, Spec]:
    """A method's verifier parameters: `alpha` (always, one default) and the ones given, by name."""
    out = {"alpha": ALPHA}
    for k, s in params.items():
        out[k] = s.named(k)
    return out


# ------------------------------------------------------------------------------------------ runtime
def fields_of(cls: type) -> list[Spec]:
    """The declared parameters of a dataclass `cls` (progress callbacks excluded), in field order."""
    role = getattr(cls, "param_role", "protection")
    out = []
    for f in dataclasses.fields(cls):
        if _KEY not in f.metadata:
            out.append(Spec(type=_norm_type(f.type), default=_default(f), meaning="", name=f.name, role=role))
        elif f.metadata[_KEY] is not None:
            out.append(f.metadata[_KEY].named(f.name, _norm_type(f.type), role))
    return out


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def of(cls: type) -> dict[str, list[Spec]]:
    """{"params": the class's own parameters, "verifier": its verifier parameters (methods)}."""
    return {"params": fields_of(cls), "verifier": list(getattr(cls, "verify_params", {}).values())}


def incomplete(specs: list[Spec]) -> list[str]:
    """Why a schema is not complete: fields without a declared type, meaning, role or range."""
    out = []
    for s in specs:
        if not s.meaning:
            out.append(f"{s.name}: no meaning (declare it with param(...))")
        if any(p.split("[")[0] not in _TYPES for p in s.parts):
            out.append(f"{s.name}: type {s.type!r} is not made of {', '.join(sorted(_TYPES))} (and None)")
        if s.base in ("int", "float") and (s.lo is None or s.hi is None):
            out.append(f"{s.name}: a number needs both bounds")
        if s.role not in ROLES:
            out.append(f"{s.name}: unknown role {s.role!r}")
    return out


def fresh_seed() -> int:
    """A secret seed from the OS (62 bits): what a `secret_seed_param` left at none becomes."""
    import secrets

    return secrets.randbits(62)


class Configurable:
    """Base of every method and attack: construction checks every declared field against its schema, then
    the class's own `check()` (relations between fields). `param_error` is the error raised."""

    param_error: type[ModelSealError] = ModelSealError
    param_role: str = "protection"  # the role of a field declared without one

    def __post_init__(self) -> None:
        for s in fields_of(type(self)):
            if s.fresh and getattr(self, s.name) is None:
                setattr(self, s.name, fresh_seed())
            if s.meaning:
                s.check(getattr(self, s.name), self.param_error)
        self.check()

    def check(self) -> None:
        """Checks that relate several fields (default: none)."""


def rule(cls: type, given: dict[str, Any] | None, error: type[Exception] = ModelSealError,
         skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The verifier's rule for `cls`: its declared defaults overridden by `given`, every value checked; an
    unknown name is refused. Names in `skip` (values that are not numbers, such as reference models) pass
    through unchecked."""
    declared: dict[str, Spec] = getattr(cls, "verify_params", {})
    given = dict(given or {})
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise error(f"{getattr(cls, 'name', cls.__name__)} does not take the verifier parameter(s) "
                    f"{', '.join(unknown)}; it takes: {', '.join(declared) or 'none'}")
    out = {}
    for k, s in declared.items():
        v = given.get(k, s.default)
        out[k] = v if k in skip else s.check(v, error)
    return out


KINDS = ("value", "models", "budget")


def declared_defaults(cls: type, skip_kinds: tuple[str, ...] = ()) -> dict[str, Any]:
    """The default of each verifier parameter of `cls`, leaving out those of the kinds `skip_kinds`."""
    return {k: s.default for k, s in getattr(cls, "verify_params", {}).items() if s.kind not in skip_kinds}


def of_kind(cls: type, kind: str) -> list[str]:
    """The names of `cls`'s verifier parameters of one kind (e.g. "models": the reference models it takes)."""
    if kind not in KINDS:
        raise ModelSealError(f"unknown parameter kind '{kind}'; use one of {', '.join(KINDS)}")
    return [k for k, s in getattr(cls, "verify_params", {}).items() if s.kind == kind]


# ------------------------------------------------------------------------------------------ source
_FACTORIES: dict[str, Callable[..., Any]] = {
    "param": param, "seed_param": seed_param, "secret_seed_param": secret_seed_param, "device_param": device_param,
    "batch_param": batch_param,
    "progress_field": progress_field, "vparam": vparam, "verifier": verifier,
}
_SAFE_MODULES = {"validate": validate, "schema": __import__(__name__, fromlist=["x"])}
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.Pow: operator.pow, ast.FloorDiv: operator.floordiv}


class _Evaluator:
    """Evaluates a declaration's expression: literals, names of module constants (or of constants in
    validate/verdict/schema), arithmetic, and calls of this module's factories. Anything else is an error."""

    def __init__(self, tree: ast.Module, module: str, package: bool = False):
        self.module = module
        anchor = module + ".x" if package else module  # a package's own name is the first relative level
        self.consts: dict[str, Any] = {}
        self.imported: dict[str, Any] = {}
        for node in tree.body:
            if isinstance(node, ast.ImportFrom):
                base = anchor.rsplit(".", node.level)[0] if node.level else ""
                target = f"{base}.{node.module}" if base and node.module else (node.module or base)
                for a in node.names:
                    self.imported[a.asname or a.name] = (target, a.name)
        for node in tree.body:
            if isinstance(node, ast.Assign):
                targets, value = node.targets, node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                targets, value = [node.target], node.value
            else:
                continue
            if len(targets) == 1 and isinstance(targets[0], ast.Name):
                try:
                    self.consts[targets[0].id] = self.eval(value)
                except Exception:  # noqa: BLE001 - a constant this reader cannot evaluate is simply not known
                    pass

    def name(self, ident: str) -> Any:
        if ident in self.consts:
            return self.consts[ident]
        if ident in ("None", "True", "False"):
            return {"None": None, "True": True, "False": False}[ident]
        if ident in self.imported:
            target, attr = self.imported[ident]
            if target in ("modelseal.schema", "modelseal.validate", "modelseal.verdict"):
                return getattr(importlib.import_module(target), attr)
            if target.endswith((".validate", ".verdict", ".schema")) and not target.startswith("modelseal."):
                return getattr(importlib.import_module("modelseal." + target.rsplit(".", 1)[1]), attr)
            if attr in _SAFE_MODULES and target == "modelseal":
                return _SAFE_MODULES[attr]
            return _constant_of(target, attr)
        raise LookupError(f"{self.module}: cannot read the name {ident!r} without importing")

    def eval(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            items = [self.eval(e) for e in node.elts]
            return tuple(items) if isinstance(node, ast.Tuple) else set(items) if isinstance(node, ast.Set) else items
        if isinstance(node, ast.Dict):
            out: dict[Any, Any] = {}
            for k, v in zip(node.keys, node.values, strict=True):
                if k is None:  # {**other}
                    out.update(self.eval(v))
                else:
                    out[self.eval(k)] = self.eval(v)
            return out
        if isinstance(node, ast.Name):
            return self.name(node.id)
        if isinstance(node, ast.Attribute):
            base = self.eval(node.value)
            if base in _SAFE_MODULES.values():
                return getattr(base, node.attr)
            raise LookupError(f"{self.module}: cannot read {ast.unparse(node)} without importing")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -self.eval(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](self.eval(node.left), self.eval(node.right))
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "math.sqrt":
            return math.sqrt(self.eval(node.args[0]))
        factory = None
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name):
                factory = node.func.id
            elif isinstance(node.func, ast.Attribute) and ast.unparse(node.func).startswith("schema."):
                factory = node.func.attr
        if isinstance(node, ast.Call) and factory is not None and factory in _FACTORIES:
            args = [self.eval(a) for a in node.args]
            kw = {k.arg: self.eval(k.value) for k in node.keywords if k.arg}
            return _FACTORIES[factory](*args, **kw)
        raise ValueError(f"{self.module}: cannot read {ast.unparse(node)[:60]} without importing")


@functools.lru_cache(maxsize=64)
def _module_source(module: str) -> tuple[ast.Module, bool]:
    """The syntax tree of `module` (found, never imported) and whether it is a package."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise LookupError(f"module {module} is not installed")
    return ast.parse(Path(spec.origin).read_text(encoding="utf-8")), spec.submodule_search_locations is not None


@functools.lru_cache(maxsize=64)
def _evaluator(module: str) -> _Evaluator:
    tree, package = _module_source(module)
    return _Evaluator(tree, module, package)


def _constant_of(module: str, name: str) -> Any:
    if not module.startswith("modelseal."):
        raise LookupError(f"cannot read {name} from {module}")
    return _evaluator(module).name(name)


def _registered(tree: ast.Module, name: str, ev: _Evaluator) -> ast.ClassDef:
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and getattr(deco.func, "id", getattr(deco.func, "attr", "")) \
                        == "register" and deco.args:
                    try:
                        if ev.eval(deco.args[0]) == name:
                            return node
                    except (LookupError, ValueError):
                        continue
    raise LookupError(f"{ev.module} registers no class named {name!r}")


def _bases(tree: ast.Module, module: str, cls: ast.ClassDef) -> list[tuple[ast.Module, str, ast.ClassDef]]:
    """The base classes of `cls` defined in the same module or imported from another modelseal module."""
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    ev = _evaluator(module)
    out = []
    for base in cls.bases:
        if not isinstance(base, ast.Name):
            continue
        if base.id in classes:
            out.append((tree, module, classes[base.id]))
        elif base.id in ev.imported and ev.imported[base.id][0].startswith("modelseal."):
            target, attr = ev.imported[base.id]
            other, _ = _module_source(target)
            node = next((n for n in other.body if isinstance(n, ast.ClassDef) and n.name == attr), None)
            if node is not None:
                out.append((other, target, node))
    return out


def _class_fields(tree: ast.Module, module: str, cls: ast.ClassDef, depth: int = 0) -> list[tuple[str, ast.AnnAssign]]:
    """(module, field) for the annotated fields of `cls`, after those of its bases; a redefined field keeps
    its place (as a dataclass orders them)."""
    fields: list[tuple[str, ast.AnnAssign]] = []
    if depth < 8:
        for btree, bmod, bnode in _bases(tree, module, cls):
            if any("dataclass" in ast.unparse(d) for d in bnode.decorator_list):  # only a dataclass has fields
                fields += _class_fields(btree, bmod, bnode, depth + 1)
    for n in cls.body:
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) \
                and "ClassVar" not in ast.unparse(n.annotation):
            at = next((i for i, (_, f) in enumerate(fields) if f.target.id == n.target.id), None)  # type: ignore[union-attr]
            if at is None:
                fields.append((module, n))
            else:
                fields[at] = (module, n)
    return fields


def _class_verifier(tree: ast.Module, module: str, cls: ast.ClassDef, depth: int = 0) -> dict[str, Spec]:
    for n in cls.body:
        if isinstance(n, (ast.Assign, ast.AnnAssign)):
            target = n.targets[0] if isinstance(n, ast.Assign) else n.target
            if getattr(target, "id", "") == "verify_params" and n.value is not None:
                specs: dict[str, Spec] = _evaluator(module).eval(n.value)
                return specs
    if depth < 8:
        for btree, bmod, bnode in _bases(tree, module, cls):
            found = _class_verifier(btree, bmod, bnode, depth + 1)
            if found is not None:
                return found
    return None  # type: ignore[return-value]


@functools.lru_cache(maxsize=128)
def read(module: str, name: str, role: str = "protection") -> dict[str, list[Spec]]:
    """What `of(cls)` gives for the class registered as `name` in `module`, read from its source (no import);
    `role` is the class's (`attack` for attacks). A field declared without `param(...)` is listed with an
    empty meaning (incomplete)."""
    tree, _ = _module_source(module)
    cls = _registered(tree, name, _evaluator(module))
    params = []
    for fmod, f in _class_fields(tree, module, cls):
        ev = _evaluator(fmod)
        fname = f.target.id  # type: ignore[union-attr]
        tname = _norm_type(ast.unparse(f.annotation))
        value = ev.eval(f.value) if f.value is not None and isinstance(f.value, ast.Call) \
            and getattr(f.value.func, "id", "") in _FACTORIES else None
        if isinstance(value, dataclasses.Field):
            spec = value.metadata.get(_KEY)
            if spec is None:
                continue
            params.append(spec.named(fname, tname, role))
        else:
            default = ev.eval(f.value) if f.value is not None else None
            params.append(Spec(type=tname, default=default, meaning="", name=fname, role=role))
    return {"params": params, "verifier": list((_class_verifier(tree, module, cls) or {}).values())}


__all__ = ["Spec", "param", "seed_param", "device_param", "batch_param", "progress_field", "vparam", "verifier",
           "ALPHA", "Configurable", "fields_of", "of", "read", "rule", "incomplete", "declared_defaults",
           "of_kind", "KINDS"]
