"""A registry of named classes whose built-in entries live in modules imported on first use (torch-free).

`modelseal.methods` and `modelseal.attacks` each keep their table in one of these. The registry owns the
lookups every consumer needs: `get(name)` (imports the module on first use), `names(family=None)`,
`available()` (name -> module, without importing anything) and `by_family(order)`. A table may also say each
built-in name's family (attacks do), so that listing by family needs no import either.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable
from typing import Generic, TypeVar

from .errors import RegistryError

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """`modules`: name -> the module that registers it (the built-in table, extended by plugins when they
    register); `families`: name -> family, where the table declares it; `classes`: the classes registered so far.

    `kind` names an entry in error messages ("attack", "method"); `package`, when given, is the package whose
    built-in modules `available()` asks `find_spec` about (a built-in module elsewhere is listed as it is:
    asking for `modelseal.bench.overwrite` would import `modelseal.bench`, and with it torch, to list names).

    `group` is an entry-point group (`modelseal.methods`, `modelseal.attacks`): an installed package that
    declares `NAME = package.module` there joins the table as NAME, and its module (which registers NAME when
    imported, as the built-in ones do) is imported on first use, like theirs. A plugin cannot replace a
    built-in name."""

    def __init__(self, modules: dict[str, str], families: dict[str, str] | None = None, *, kind: str = "entry",
                 package: str | None = None, group: str | None = None) -> None:
        self.modules = modules
        self.families: dict[str, str] = dict(families or {})
        self.builtin = frozenset(modules)
        self.classes: dict[str, T] = {}
        self.kind = kind
        self.package = package
        self.group = group
        self._plugins_read = group is None

    def _read_plugins(self) -> None:
        """Add the modules installed packages declare in the entry-point group (once; nothing is imported)."""
        if self._plugins_read:
            return
        self._plugins_read = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=str(self.group)):
            if ep.name not in self.builtin and ep.module:
                self.modules.setdefault(ep.name, ep.module)

    @classmethod
    def of(cls, table: dict[str, tuple[str, str]], *, kind: str, package: str,
           group: str | None = None) -> Registry[T]:
        """A registry from one table `name -> (module, family)`; a module without a dot is in `package`."""
        modules = {n: m if "." in m else f"{package}.{m}" for n, (m, _) in table.items()}
        return cls(modules, {n: f for n, (_, f) in table.items()}, kind=kind, package=package, group=group)

    def add(self, name: str, cls: T, family: str | None = None) -> None:
        """Record `cls` under `name` (with its `family`, if given); a class from another package is listed
        like the built-in ones."""
        self.classes[name] = cls
        self.modules.setdefault(name, cls.__module__)
        if family is not None:
            self.families[name] = family

    def remove(self, name: str) -> None:
        """Forget a class registered from outside modelseal (tests, plugins); the built-in ones stay."""
        self.classes.pop(name, None)
        if name not in self.builtin:
            self.modules.pop(name, None)
            self.families.pop(name, None)

    def available(self) -> dict[str, str]:
        """Name -> module, for the modules that are installed (found without importing them), plugins included."""
        self._read_plugins()

        def probed(name: str, mod: str) -> bool:
            if name not in self.builtin or (self.package is not None and not mod.startswith(self.package + ".")):
                return True
            return importlib.util.find_spec(mod) is not None

        return {n: m for n, m in self.modules.items() if probed(n, m)}

    def get(self, name: str) -> T:
        """The class registered as `name`, importing its module on first use."""
        if not isinstance(name, str):
            raise RegistryError(f"a {self.kind} name is a string, got {type(name).__name__}")
        if name not in self.classes:
            mod = self.available().get(name)
            if mod is None:
                raise RegistryError(f"unknown {self.kind} '{name}'; known: {', '.join(self.names()) or 'none'}")
            try:
                importlib.import_module(mod)
            except ImportError as e:
                raise RegistryError(f"{self.kind} '{name}' lives in {mod}, which cannot be imported: {e}") from None
        if name not in self.classes:
            raise RegistryError(f"module for {self.kind} '{name}' did not register it")
        return self.classes[name]

    def family(self, name: str) -> str:
        """The family of `name`: from the table when it declares it, else from the class (imported)."""
        fam = self.families.get(name)
        return fam if fam is not None else str(getattr(self.get(name), "family", ""))

    def names(self, family: str | None = None) -> list[str]:
        """The registered names (sorted), optionally only those of one family."""
        every = sorted(set(self.available()) | set(self.classes))
        return every if family is None else [n for n in every if self.family(n) == family]

    def by_family(self, order: Iterable[str] = ()) -> dict[str, list[str]]:
        """The names grouped by family: the families in `order` first, then the others sorted."""
        groups: dict[str, list[str]] = {}
        for n in self.names():
            groups.setdefault(self.family(n), []).append(n)
        first = [f for f in order if f in groups]
        return {f: groups[f] for f in first + sorted(f for f in groups if f not in first)}


__all__ = ["Registry"]
