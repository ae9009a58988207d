"""A registry of named classes whose built-in entries live in modules imported on first use (torch-free).

`modelseal.methods` and `modelseal.attacks` each keep their table in one of these.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """`modules`: name -> the module that registers it (the built-in table, extended by plugins when they
    register); `classes`: the classes registered so far."""

    def __init__(self, modules: dict[str, str]) -> None:
        self.modules = modules
        self.builtin = frozenset(modules)
        self.classes: dict[str, T] = {}

    def add(self, name: str, cls: T) -> None:
        """Record `cls` under `name`; a class from another package is listed like the built-in ones."""
        self.classes[name] = cls
        self.modules.setdefault(name, cls.__module__)

    def remove(self, name: str) -> None:
        """Forget a class registered from outside modelseal (tests, plugins); the built-in ones stay."""
        self.classes.pop(name, None)
        if name not in self.builtin:
            self.modules.pop(name, None)


__all__ = ["Registry"]
