"""Registry of removal and evasion attacks: `get(name)` returns the class, `names()` lists them.

An attack is configured in its constructor and has one verb, `apply(model, data) -> new model`.
It never mutates its input and is deterministic given its seed. Two class attributes say what else it
needs, so the bench and the CLI call every attack the same way:

- `copies` (default 1): how many distributed copies the attack combines (`collude` averages k of them);
  `apply_many(models, data)` receives that many (the default calls `apply` on the first);
- `acts_on` (default "weights"): "queries" for attacks that change what the model is asked rather than
  the model (`perturb`); `wrap(suspect, meta)` returns the suspect the verifier then queries (the default
  returns it unchanged).

Training attacks show progress through their `progress` attribute (the runtime's one protocol).
Attacks defined elsewhere register here too: `overwrite` lives in `modelseal.bench` because it composes a
protection, and is found by name like the others.
"""

from __future__ import annotations

import copy
import functools
import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from ..errors import ModelSealError, RegistryError

if TYPE_CHECKING:
    from torch import nn

_REGISTRY: dict[str, type] = {}
# Where each attack lives: imported on first use, so that listing names (`modelseal methods`) needs no torch.
# tests/test_cli_help.py checks that this table and the registered names agree.
_MODULES = {
    "finetune": "modelseal.attacks.finetune",
    "prune": "modelseal.attacks.pruning",
    "fine-prune": "modelseal.attacks.pruning",
    "quantize": "modelseal.attacks.weights",
    "noise": "modelseal.attacks.weights",
    "average": "modelseal.attacks.weights",
    "reset-outliers": "modelseal.attacks.weights",
    "distill": "modelseal.attacks.distill",
    "collude": "modelseal.attacks.weights",
    "perturb": "modelseal.attacks.queries",
    "overwrite": "modelseal.bench.overwrite",
}


class AttackError(ModelSealError):
    """An attack was configured with bad parameters or given unusable data or models."""


class Attack:
    """Base class: `apply(model, data=None) -> nn.Module`, a new model; the input is left untouched."""

    name = "attack"
    seed: int = 0
    copies = 1
    acts_on = "weights"
    progress = None

    def apply(self, model: nn.Module, data=None) -> nn.Module:  # pragma: no cover - interface
        raise NotImplementedError

    def apply_many(self, models: list[nn.Module], data=None) -> nn.Module:
        """Attack `self.copies` distributed copies at once (default: `apply` on the first)."""
        if len(models) < self.copies:
            raise AttackError(f"{self.name} needs {self.copies} copies, got {len(models)}")
        return self.apply(models[0], data)

    def wrap(self, suspect, meta=None):
        """The suspect the verifier queries after this attack (default: unchanged)."""
        return suspect

    @staticmethod
    def copy_model(model: nn.Module) -> nn.Module:
        """A deep copy of `model` (keeps `modelseal_spec`)."""
        return copy.deepcopy(model)


def require_finite(model: Any, what: str = "the model to attack") -> None:
    """Raise AttackError unless `model` is an nn.Module whose floating parameters and buffers are finite."""
    from torch import nn as _nn

    from ..models.io import check_finite

    if not isinstance(model, _nn.Module):
        raise AttackError(f"{what} must be a torch nn.Module, got {type(model).__name__}")
    check_finite(model, what, AttackError)


def register(name: str):
    """Register an attack class under `name`. Its `apply` is wrapped to refuse a model with NaN or
    infinite weights first: attacking one would "succeed" and hand back more garbage."""

    def deco(cls: type) -> type:
        cls.name = name
        apply = cls.__dict__.get("apply")
        if apply is not None and not getattr(apply, "_checks_finite", False):
            @functools.wraps(apply)
            def checked(self, model, *args: Any, **kw: Any):
                require_finite(model)
                return apply(self, model, *args, **kw)

            checked._checks_finite = True  # type: ignore[attr-defined]
            cls.apply = checked
        _REGISTRY[name] = cls
        return cls

    return deco


def _available() -> dict[str, str]:
    """Attack name -> module, for the modules that are installed. Every module in the table ships with
    modelseal; find_spec is asked only for this package's own submodules (asking for
    `modelseal.bench.overwrite` would import `modelseal.bench`, and with it torch, just to list names)."""
    return {n: m for n, m in _MODULES.items()
            if not m.startswith("modelseal.attacks.") or importlib.util.find_spec(m) is not None}


def get(name: str) -> type:
    if name not in _REGISTRY and name in _available():
        importlib.import_module(_MODULES[name])
    if name not in _REGISTRY:
        raise RegistryError(f"unknown attack '{name}'; known: {', '.join(names())}")
    return _REGISTRY[name]


def names() -> list[str]:
    """Attack names, without importing the attacks (or torch)."""
    return sorted(set(_available()) | set(_REGISTRY))
