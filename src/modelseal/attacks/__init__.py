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

Families (`family`, one file per family for the new ones; `FAMILIES` lists them without importing torch):
"input" (query-side input transforms, `inputs.py`), "output" (what a serving API returns, `outputs.py`),
"rejection" (answer flagged queries falsely, `rejection.py`), "modification" (the weights change:
`finetune.py`, `pruning.py`, `weights.py`, `modification.py`, `unlearning.py`), "extraction" (a new model
trained from the suspect's answers, `distill.py`, `extraction.py`), and "chain" (several attacks in a row,
`chain.py`). Extraction attacks take a Suspect (a module, a model file, an ONNX file or a URL) where others
take a module (`takes_suspect`). The attacks that train subclass `training.TrainingAttack`, which declares
their training fields (epochs, lr, batch_size, seed, device, progress) once and turns them into the arguments
of `modelseal.train.fit`; the input transforms share `inputs.InputTransform` (images: `ImageTransform`).

Cost: after every `apply` the attack's `cost` holds `wall_s`, `examples` (attacker examples it trained or
fitted on), `data_fraction` (examples / the size of the data it was given) and `queries` (inputs it sent to
the attacked model or suspect). Query-side attacks also count, in `query_stats`, what their wrapped
suspect answered and (rejection) rejected. The bench stores both with the attacked and owner accuracy.
"""

from __future__ import annotations

import copy
import functools
import importlib
import importlib.util
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import ModelSealError, RegistryError
from ..registry import Registry
from ..schema import Configurable

if TYPE_CHECKING:
    from torch import nn

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
    # input transforms (query side)
    "jpeg": "modelseal.attacks.inputs",
    "squeeze": "modelseal.attacks.inputs",
    "median": "modelseal.attacks.inputs",
    "blur": "modelseal.attacks.inputs",
    "input-noise": "modelseal.attacks.inputs",
    "shift": "modelseal.attacks.inputs",
    "flip": "modelseal.attacks.inputs",
    "input-quantize": "modelseal.attacks.inputs",
    # output transforms (what the API returns)
    "softmax": "modelseal.attacks.outputs",
    "temperature": "modelseal.attacks.outputs",
    "top-k": "modelseal.attacks.outputs",
    "round": "modelseal.attacks.outputs",
    "label-only": "modelseal.attacks.outputs",
    "logit-noise": "modelseal.attacks.outputs",
    "prob-noise": "modelseal.attacks.outputs",
    "reverse-sigmoid": "modelseal.attacks.outputs",
    # query rejection
    "reject-softmax": "modelseal.attacks.rejection",
    "reject-mahalanobis": "modelseal.attacks.rejection",
    # model modification
    "structured-prune": "modelseal.attacks.modification",
    "permute": "modelseal.attacks.modification",
    "finetune-reg": "modelseal.attacks.modification",
    "refit": "modelseal.attacks.modification",
    "neural-cleanse": "modelseal.attacks.unlearning",
    "dehydrate": "modelseal.attacks.unlearning",
    # extraction through the suspect
    "knockoff": "modelseal.attacks.extraction",
    "knockoff-adaptive": "modelseal.attacks.extraction",
    "retrain-xarch": "modelseal.attacks.extraction",
    "transfer": "modelseal.attacks.extraction",
    # combined
    "chain": "modelseal.attacks.chain",
}
_TABLE: Registry[type[Attack]] = Registry(_MODULES)
_REGISTRY, _BUILTIN = _TABLE.classes, _TABLE.builtin  # the registered classes; the names that ship with modelseal
FAMILY_ORDER = ("input", "output", "rejection", "modification", "extraction", "chain")
# The family of every attack, for listing without imports; tests check it against each class's `family`.
FAMILIES = {
    **{n: "modification" for n in ("finetune", "prune", "fine-prune", "quantize", "noise", "average",
                                   "reset-outliers", "collude", "overwrite", "structured-prune", "permute",
                                   "finetune-reg", "refit", "neural-cleanse", "dehydrate")},
    **{n: "input" for n in ("perturb", "jpeg", "squeeze", "median", "blur", "input-noise", "shift", "flip",
                            "input-quantize")},
    **{n: "output" for n in ("softmax", "temperature", "top-k", "round", "label-only", "logit-noise",
                             "prob-noise", "reverse-sigmoid")},
    **{n: "rejection" for n in ("reject-softmax", "reject-mahalanobis")},
    **{n: "extraction" for n in ("distill", "knockoff", "knockoff-adaptive", "retrain-xarch", "transfer")},
    "chain": "chain",
}


class AttackError(ModelSealError):
    """An attack was configured with bad parameters or given unusable data or models."""


class Attack(Configurable):
    """Base class: `apply(model, data=None) -> nn.Module`, a new model; the input is left untouched.

    A subclass is a dataclass whose fields are declared with `modelseal.schema.param(...)`: construction
    checks them (AttackError), then the subclass's `check()` (relations between fields)."""

    param_error = AttackError
    param_role = "attack"
    name = "attack"
    seed: int = 0
    copies = 1
    acts_on = "weights"
    family = "modification"
    takes_suspect = False  # extraction: `apply` also takes a Suspect, a file path or a URL
    progress = None
    cost: dict[str, Any] = {}  # set by every `apply` (see the module docstring)
    query_stats: dict[str, int] = {}  # query-side attacks: what the wrapped suspect answered / rejected

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

    def used(self, examples: int = 0, queries: int = 0, **details: Any) -> None:
        """Record `examples` of the attacker's data and `queries` to the attacked model spent by this apply
        (and JSON-able `details` for its cost record, e.g. a chain's per-step costs)."""
        usage = self.__dict__.setdefault("_usage", {"examples": 0, "queries": 0})
        usage["examples"] += int(examples)
        usage["queries"] += int(queries)
        usage.update(details)

    def count_query(self, answered: int = 0, rejected: int = 0) -> None:
        """Query-side attacks: count what the wrapped suspect answered (and rejected)."""
        stats = self.__dict__.setdefault("query_stats", {"answered": 0, "rejected": 0})
        stats["answered"] += int(answered)
        stats["rejected"] += int(rejected)

    def reset_query_stats(self) -> None:
        self.query_stats = {"answered": 0, "rejected": 0}


def _size(data: Any) -> int:
    try:
        return int(len(data)) if data is not None else 0
    except TypeError:
        return 0


def require_finite(model: Any, what: str = "the model to attack") -> None:
    """Raise AttackError unless `model` is an nn.Module whose floating parameters and buffers are finite."""
    from torch import nn as _nn

    from ..models.io import check_finite

    if not isinstance(model, _nn.Module):
        raise AttackError(f"{what} must be a torch nn.Module, got {type(model).__name__}")
    check_finite(model, what, AttackError)


def _costed(fn: Any, many: bool) -> Any:
    """`fn` (an `apply`, or with `many` an `apply_many`) that refuses non-finite models first and records the
    attack's `cost` after it ran."""

    @functools.wraps(fn)
    def checked(self, model, *args: Any, **kw: Any):
        from torch import nn as _nn

        for i, m in enumerate(model if many else [model]):
            if not (self.takes_suspect and not isinstance(m, _nn.Module)):
                require_finite(m, "the model to attack" if i == 0 else f"copy {i + 1} to attack")
        self._usage = {"examples": 0, "queries": 0}
        t0 = time.perf_counter()
        out = fn(self, model, *args, **kw)
        data = args[0] if args else kw.get("data")
        n, usage = _size(data), self._usage
        self.cost = {**usage, "wall_s": time.perf_counter() - t0,
                     "data_fraction": (min(usage["examples"], n) / n) if n else 0.0}
        return out

    checked._checks_finite = True  # type: ignore[attr-defined]
    return checked


_A = TypeVar("_A", bound=Attack)


def register(name: str) -> Callable[[type[_A]], type[_A]]:
    """Register an attack class under `name`. Its `apply` (and its own `apply_many`) is wrapped to refuse a
    model with NaN or infinite weights first (attacking one would "succeed" and hand back more garbage) and
    to record the attack's `cost` when it returns."""

    def deco(cls: type[_A]) -> type[_A]:
        cls.name = name
        apply = getattr(cls, "apply", None)
        if apply is not None and not getattr(apply, "_checks_finite", False):
            cls.apply = _costed(apply, many=False)  # type: ignore[method-assign]
        many = cls.__dict__.get("apply_many")
        if many is not None and not getattr(many, "_checks_finite", False):
            cls.apply_many = _costed(many, many=True)  # type: ignore[method-assign]
        _TABLE.add(name, cls)
        return cls

    return deco


def unregister(name: str) -> None:
    """Forget an attack registered from outside modelseal (tests, plugins); the built-in ones stay."""
    _TABLE.remove(name)


def _available() -> dict[str, str]:
    """Attack name -> module, for the modules that are installed. Every module in the table ships with
    modelseal; find_spec is asked only for this package's own submodules (asking for
    `modelseal.bench.overwrite` would import `modelseal.bench`, and with it torch, just to list names)."""
    return {n: m for n, m in _MODULES.items()
            if not m.startswith("modelseal.attacks.") or n not in _BUILTIN or importlib.util.find_spec(m) is not None}


def get(name: str) -> type[Attack]:
    if name not in _REGISTRY and name in _available():
        importlib.import_module(_MODULES[name])
    if name not in _REGISTRY:
        raise RegistryError(f"unknown attack '{name}'; known: {', '.join(names())}")
    return _REGISTRY[name]


def names() -> list[str]:
    """Attack names, without importing the attacks (or torch)."""
    return sorted(set(_available()) | set(_REGISTRY))


def by_family() -> dict[str, list[str]]:
    """Attack names grouped by family (in FAMILY_ORDER), without importing the attacks (or torch)."""
    groups: dict[str, list[str]] = {}
    for n in names():
        fam = FAMILIES.get(n) or str(getattr(_REGISTRY.get(n), "family", "modification"))
        groups.setdefault(fam, []).append(n)
    order = [f for f in FAMILY_ORDER if f in groups] + sorted(f for f in groups if f not in FAMILY_ORDER)
    return {f: groups[f] for f in order}
