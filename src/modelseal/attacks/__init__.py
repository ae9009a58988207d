"""Registry of removal and evasion attacks: `get(name)` returns the class, `names()` lists them.

An attack is configured in its constructor and has one verb, `apply(model, data) -> new model`.
It never mutates its input and is deterministic given its seed. Attacks know nothing of protections.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util

from torch import nn

from ..errors import ModelSealError, RegistryError

_REGISTRY: dict[str, type] = {}
_MODULES = ["modelseal.attacks.finetune", "modelseal.attacks.pruning", "modelseal.attacks.weights",
            "modelseal.attacks.distill"]


class AttackError(ModelSealError):
    """An attack was configured with bad parameters or given unusable data or models."""


class Attack:
    """Base class: `apply(model, data=None) -> nn.Module`, a new model; the input is left untouched."""

    name = "attack"
    seed: int = 0

    def apply(self, model: nn.Module, data=None) -> nn.Module:  # pragma: no cover - interface
        raise NotImplementedError

    @staticmethod
    def copy_model(model: nn.Module) -> nn.Module:
        """A deep copy of `model` (keeps `modelseal_spec`)."""
        return copy.deepcopy(model)


def register(name: str):
    def deco(cls: type) -> type:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_all() -> None:
    for mod in _MODULES:
        if importlib.util.find_spec(mod) is not None:
            importlib.import_module(mod)


def get(name: str) -> type:
    if name not in _REGISTRY:
        _load_all()
    if name not in _REGISTRY:
        raise RegistryError(f"unknown attack '{name}'; known: {', '.join(names())}")
    return _REGISTRY[name]


def names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)
