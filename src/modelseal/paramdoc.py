"""The parameters of a registered method or attack, read from its source file without importing it.

`modelseal methods NAME` must answer in well under a second, and importing a method imports torch (seconds).
So this module parses the method's module with `ast`: the parameters are the fields of the dataclass
registered under NAME (type from the annotation, default from the value), their meaning comes from the
field's trailing comment, else the class docstring (`` `name` text`` or ``name: text``), else the first
module-docstring sentence that names the field; their range comes from the checks in the same module
(`if self.x < 1: raise ...`, `if not 0 < self.x < 1: raise ...`, `validate.number(.., self.x, lo, hi)`,
`self.x not in CHOICES`). A method's verifier parameters (`verifier`) come from its class-level
`verify_params = {name: (default, meaning)}`. Nothing here is a hand-kept table, so it cannot drift
from the code; a field without a comment or a check shows "-".
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_INVERT = {ast.Lt: ast.GtE, ast.LtE: ast.Gt, ast.Gt: ast.LtE, ast.GtE: ast.Lt}
_FLIP = {ast.Lt: ast.Gt, ast.LtE: ast.GtE, ast.Gt: ast.Lt, ast.GtE: ast.LtE}


@dataclass
class Param:
    name: str
    type: str
    default: str
    range: str
    meaning: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "type": self.type, "default": self.default, "range": self.range,
                "meaning": self.meaning}


def _source(module: str) -> tuple[str, Path]:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise LookupError(f"module {module} is not installed")
    path = Path(spec.origin)
    return path.read_text(encoding="utf-8"), path


def _constants(tree: ast.Module) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return out


def _imported_constant(tree: ast.Module, name: str, module: str) -> Any:
    """A constant imported with `from .x import NAME`, read from x's source (one level)."""
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and any(a.name == name for a in node.names):
            base = module.rsplit(".", node.level)[0] if node.level else ""
            target = f"{base}.{node.module}" if base and node.module else (node.module or base)
            try:
                src, _ = _source(target)
            except (LookupError, ModuleNotFoundError, ValueError):
                return None
            return _constants(ast.parse(src)).get(name)
    return None


def _registered_class(tree: ast.Module, name: str, consts: dict[str, Any]) -> ast.ClassDef | None:
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        for deco in node.decorator_list:
            if isinstance(deco, ast.Call) and getattr(deco.func, "id", getattr(deco.func, "attr", "")) == "register" \
                    and deco.args:
                arg = deco.args[0]
                value = arg.value if isinstance(arg, ast.Constant) else consts.get(getattr(arg, "id", ""))
                if value == name:
                    return node
    return None


def _field_of(node: ast.AST) -> str | None:
    """`self.x` (or `int(self.x)`, `float(self.x)`) -> 'x'."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("int", "float") and len(node.args) == 1:
        node = node.args[0]
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return node.attr
    return None


def _num(node: ast.AST, consts: dict[str, Any]) -> float | None:
    try:
        v = ast.literal_eval(node)
    except ValueError:
        v = consts.get(getattr(node, "id", ""))
        if v is None and isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "sqrt":
            import math

            inner = _num(node.args[0], consts)
            v = None if inner is None else round(math.sqrt(inner), 3)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


class _Ranges:
    def __init__(self, consts: dict[str, Any]):
        self.consts = consts
        self.lo: dict[str, tuple[float, bool]] = {}  # field -> (bound, open)
        self.hi: dict[str, tuple[float, bool]] = {}
        self.choices: dict[str, list[str]] = {}

    def bound(self, field: str, op: type, value: float) -> None:
        if op in (ast.Gt, ast.GtE):
            self.lo.setdefault(field, (value, op is ast.Gt))
        elif op in (ast.Lt, ast.LtE):
            self.hi.setdefault(field, (value, op is ast.Lt))

    def compare(self, node: ast.Compare, valid: bool) -> None:
        """Record `node` as a condition that holds for valid values (`valid`) or for invalid ones."""
        items = [node.left, *node.comparators]
        for left, op, right in zip(items, node.ops, items[1:], strict=False):
            if isinstance(op, (ast.In, ast.NotIn)):
                f = _field_of(left)
                options = self.consts.get(getattr(right, "id", ""))
                if options is None:
                    try:
                        options = ast.literal_eval(right)
                    except ValueError:
                        options = None
                if f and isinstance(options, (tuple, list, dict, set)) and valid == isinstance(op, ast.In):
                    self.choices.setdefault(f, [str(o) for o in options])
                continue
            if type(op) not in _INVERT:
                continue
            f, value, o = _field_of(left), _num(right, self.consts), type(op)
            if f is None:
                f, value, o = _field_of(right), _num(left, self.consts), _FLIP[type(op)]
            if f is None or value is None:
                continue
            self.bound(f, o if valid else _INVERT[o], value)

    def condition(self, node: ast.AST, valid: bool) -> None:
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            self.condition(node.operand, not valid)
        elif isinstance(node, ast.BoolOp):
            # `a or b` invalid: each part is invalid; `a and b` valid: each part holds. Other mixes (guards
            # such as `x is not None and x < 1`) still state each comparison's own sense.
            for v in node.values:
                self.condition(v, valid)
        elif isinstance(node, ast.Compare):
            self.compare(node, valid)

    def call(self, node: ast.Call) -> None:
        fname = getattr(node.func, "attr", getattr(node.func, "id", ""))
        fields = [(i, _field_of(a)) for i, a in enumerate(node.args)]
        fields = [(i, f) for i, f in fields if f]
        if not fields:
            return
        i, f = fields[0]
        assert f is not None
        if fname == "alpha":
            self.lo.setdefault(f, (0.0, True))
            self.hi.setdefault(f, (1.0, True))
            return
        if fname not in ("number", "count", "_check", "check", "check_number"):
            return
        kw = {k.arg: k.value for k in node.keywords if k.arg}
        rest = node.args[i + 1:]
        lo = rest[0] if rest else kw.get("lo")
        hi = rest[1] if len(rest) > 1 else kw.get("hi")
        lo_v = _num(lo, self.consts) if lo is not None else (1 if fname == "count" else None)
        hi_v = _num(hi, self.consts) if hi is not None else None
        lo_open = isinstance(c := kw.get("lo_open"), ast.Constant) and c.value is True
        hi_open = isinstance(c := kw.get("hi_open"), ast.Constant) and c.value is True
        if lo_v is not None:
            self.lo.setdefault(f, (lo_v, lo_open))
        if hi_v is not None:
            self.hi.setdefault(f, (hi_v, hi_open))

    def text(self, field: str) -> str:
        if field in self.choices:
            return " | ".join(self.choices[field])
        lo, hi = self.lo.get(field), self.hi.get(field)
        if lo and hi:
            return f"{'(' if lo[1] else '['}{lo[0]:g}, {hi[0]:g}{')' if hi[1] else ']'}"
        if lo:
            return f"{'>' if lo[1] else '>='} {lo[0]:g}"
        if hi:
            return f"{'<' if hi[1] else '<='} {hi[0]:g}"
        return "-"


def _ranges(tree: ast.Module, consts: dict[str, Any]) -> _Ranges:
    r = _Ranges(consts)
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and any(isinstance(s, ast.Raise) for s in node.body):
            r.condition(node.test, valid=False)
        elif isinstance(node, ast.Call):
            r.call(node)
    return r


# Fields that mean the same in every method and attack; a field's own comment or docstring still wins.
GLOSSARY = {
    "seed": "random seed (for a method: of the secret)",
    "alpha": "significance level: owned when p-value <= alpha",
    "batch_size": "examples per batch",
    "device": "auto | cpu | cuda (None: where the model is)",
}


def _clean(text: str, limit: int = 240) -> str:
    text = re.sub(r"\s+", " ", text).strip(" ,;.:-")
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def _module_sentence(doc: str, field: str) -> str | None:
    """The first sentence of the module docstring that names `field` in backticks."""
    for part in re.split(r"\n\s*\n|\n- ", doc):
        for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z`(])", part):
            if f"`{field}`" in sentence:
                return _clean(sentence)
    return None


def _doc_meanings(doc: str, fields: list[str]) -> dict[str, str]:
    """Clauses of a docstring that describe fields: `` `name` text `` or ``name: text`` / ``a, b: text``."""
    names = "|".join(sorted((re.escape(f) for f in fields), key=len, reverse=True))
    marker = re.compile(rf"(?:^|(?<=[,.;]\s))\s*(?:`({names})`:?|((?:(?:{names}),\s*)*(?:{names})):\s)", re.M)
    found = list(marker.finditer(doc))
    out: dict[str, str] = {}
    for m, nxt in zip(found, found[1:] + [None], strict=False):
        end = nxt.start() if nxt is not None else len(doc)
        clause = doc[m.end():end]
        clause = re.split(r"\n\s*\n", clause)[0]
        group = [m.group(1)] if m.group(1) else [g.strip() for g in m.group(2).split(",")]
        for f in group:
            if clause.strip(" ,;.:\n") and f not in out:
                out[f] = _clean(clause)
    return out


@functools.lru_cache(maxsize=32)
def _parsed(module: str, name: str) -> tuple[str, ast.Module, dict[str, Any], ast.ClassDef]:
    """(source, syntax tree, module constants, class registered as `name`) of `module`, never imported;
    cached, since `describe` and `verifier` both read it (callers do not modify the tree)."""
    src, path = _source(module)
    tree = ast.parse(src)
    consts = _constants(tree)
    cls = _registered_class(tree, name, consts)
    if cls is None:
        raise LookupError(f"{path} registers no class named {name!r}")
    return src, tree, consts, cls


def _name(field: ast.AnnAssign) -> str:
    """The name of a field `_fields` returned (it keeps only fields whose target is a plain name)."""
    assert isinstance(field.target, ast.Name)
    return field.target.id


def _fields(tree: ast.Module, cls: ast.ClassDef, depth: int = 0) -> list[ast.AnnAssign]:
    """The annotated fields of `cls`, after those of its base classes defined in the same module (a dataclass
    inherits them; a redefined field keeps its place and takes the subclass's default)."""
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    fields: list[ast.AnnAssign] = []
    for base in cls.bases:
        if isinstance(base, ast.Name) and base.id in classes and depth < 8:
            fields += _fields(tree, classes[base.id], depth + 1)
    for n in cls.body:
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name):
            at = next((i for i, f in enumerate(fields) if _name(f) == n.target.id), None)
            if at is None:
                fields.append(n)
            else:
                fields[at] = n
    return fields


def describe(module: str, name: str) -> list[Param]:
    """The parameters of the class registered as `name` in `module` (read from source, never imported)."""
    src, tree, consts, cls = _parsed(module, name)
    lines = src.splitlines()
    fields = _fields(tree, cls)
    names = [_name(f) for f in fields]
    ranges = _ranges(tree, consts)
    from_class = _doc_meanings(ast.get_docstring(cls) or "", names)
    module_doc = ast.get_docstring(tree) or ""
    params = []
    for f in fields:
        fname = _name(f)
        if fname.startswith("_") or fname == "progress":
            continue
        comment = lines[f.lineno - 1].partition("#")[2].strip() if "#" in lines[f.lineno - 1] else ""
        meaning = comment or from_class.get(fname, "")
        meaning = meaning or _module_sentence(module_doc, fname) or GLOSSARY.get(fname, "-")
        if f.value is None:
            default = "(required)"
        else:
            default = ast.unparse(f.value)
            if isinstance(f.value, ast.Name):
                v = consts.get(f.value.id, _imported_constant(tree, f.value.id, module))
                default = repr(v) if v is not None else default
        params.append(Param(fname, ast.unparse(f.annotation), default, ranges.text(fname), meaning))
    return params


def verifier(module: str, name: str) -> list[Param]:
    """The verifier parameters of the method registered as `name` in `module`: its class-level
    `verify_params = {name: (default, meaning)}` (the verifier's rule; never read from a key). Empty for a
    class without one (attacks)."""
    _, tree, consts, cls = _parsed(module, name)
    table = next((n.value for n in cls.body if isinstance(n, ast.Assign) and len(n.targets) == 1
                  and getattr(n.targets[0], "id", "") == "verify_params" and isinstance(n.value, ast.Dict)), None)
    if table is None:
        return []
    out = []
    for k, v in zip(table.keys, table.values, strict=True):
        if not (isinstance(k, ast.Constant) and isinstance(v, ast.Tuple) and len(v.elts) == 2):
            continue
        dnode, mnode = v.elts
        value = consts.get(dnode.id, _imported_constant(tree, dnode.id, module)) if isinstance(dnode, ast.Name) \
            else _num(dnode, consts)
        if isinstance(dnode, ast.Constant) and dnode.value is None:
            value = None
        default = repr(value) if value is not None or isinstance(dnode, ast.Constant) else ast.unparse(dnode)
        kind = type(value).__name__ if value is not None else "-"
        meaning = mnode.value if isinstance(mnode, ast.Constant) and isinstance(mnode.value, str) else "-"
        rng = "(0, 1)" if k.value == "alpha" else "-"
        out.append(Param(str(k.value), kind, default, rng, _clean(meaning)))
    return out
