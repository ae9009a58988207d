"""Registry of removal and evasion attacks: `get(name)` returns the class, `names()` lists them.

An attack is configured in its constructor and has one verb, `apply(model, data) -> new model`, or, with the
run's cost as a typed result, `run(model, data) -> Attacked(model, cost)`. Both are final on `Attack`: they
refuse a model with NaN or infinite weights (attacking one would "succeed" and hand back more garbage), time
the attack, and record its cost in a fresh `Attacked`; a subclass writes `_apply(model, data)` (and, if it
combines copies, `_apply_many(models, data)`). An attack never mutates its input and is deterministic given
its seed. Two class attributes say what else it needs, so the bench and the CLI call every attack the same way:

- `copies` (default 1): how many distributed copies the attack combines (`collude` averages k of them);
  `apply_many(models, data)` / `run_many` receive that many (the default attacks the first);
- `acts_on` (default "weights"): "queries" for attacks that change what the model is asked rather than
  the model (`perturb`); `wrap(suspect, meta)` returns the suspect the verifier then queries (the default
  returns it unchanged).

Training attacks show progress through their `progress` attribute (the runtime's one protocol).
Attacks defined elsewhere register here too: `overwrite` lives in `modelseal.bench` because it composes a
protection, and is found by name like the others.

Families, declared once in the table below (`register` sets each class's `family` from it; a plugin passes
`register(name, family=...)` or inherits "modification"; `FAMILIES` and `by_family()` list them without
importing torch): "input" (query-side input transforms, `inputs.py`), "output" (what a serving API returns,
`outputs.py`), "rejection" (answer flagged queries falsely, `rejection.py`), "modification" (the weights
change: `finetune.py`, `pruning.py`, `weights.py`, `modification.py`, `unlearning.py`), "extraction" (a new
model trained from the suspect's answers, `distill.py`, `extraction.py`), and "chain" (several attacks in a
row, `chain.py`). Extraction attacks take a Suspect (a module, a model file, an ONNX file or a URL) where others
take a module (`takes_suspect`). The attacks that train subclass `training.TrainingAttack`, which declares
their training fields (epochs, lr, batch_size, seed, device, progress) once and turns them into the arguments
of `modelseal.train.fit`; the input transforms share `inputs.InputTransform` (images: `ImageTransform`).

Cost: every run's `Attacked.cost` holds `wall_s`, `examples` (attacker examples it trained or fitted on, as
`_apply` reports them with `used`), `data_fraction` (examples / the size of the data it was given) and
`queries` (inputs it sent to the attacked model or suspect). `attack.cost` is a read-only copy of the last
run's (for callers of `apply`). Query-side attacks also count, in `query_stats`, what their latest wrapped
suspect answered and (rejection) rejected; each `wrap` starts a fresh count. The bench stores both with the
attacked and owner accuracy.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, final

from ..errors import ModelSealError, RegistryError
from ..registry import Registry
from ..schema import Configurable

if TYPE_CHECKING:
    from torch import nn

# The one table of built-in attacks: name -> (module, family). Modules are imported on first use, so listing
# names and families (`modelseal attack --list`, `modelseal methods`) needs no torch; `register` gives each class
# its family from here. tests/test_cli_help.py checks that this table and the registered names agree.
_BUILTIN_TABLE = {
    "finetune": ("finetune", "modification"),
    "prune": ("pruning", "modification"),
    "fine-prune": ("pruning", "modification"),
    "quantize": ("weights", "modification"),
    "noise": ("weights", "modification"),
    "average": ("weights", "modification"),
    "reset-outliers": ("weights", "modification"),
    "collude": ("weights", "modification"),
    "overwrite": ("modelseal.bench.overwrite", "modification"),
    "structured-prune": ("modification", "modification"),
    "permute": ("modification", "modification"),
    "finetune-reg": ("modification", "modification"),
    "refit": ("modification", "modification"),
    "neural-cleanse": ("unlearning", "modification"),
    "dehydrate": ("unlearning", "modification"),
    # input transforms (query side)
    "perturb": ("queries", "input"),
    "jpeg": ("inputs", "input"),
    "squeeze": ("inputs", "input"),
    "median": ("inputs", "input"),
    "blur": ("inputs", "input"),
    "input-noise": ("inputs", "input"),
    "shift": ("inputs", "input"),
    "flip": ("inputs", "input"),
    "input-quantize": ("inputs", "input"),
    # output transforms (what the API returns)
    "softmax": ("outputs", "output"),
    "temperature": ("outputs", "output"),
    "top-k": ("outputs", "output"),
    "round": ("outputs", "output"),
    "label-only": ("outputs", "output"),
    "logit-noise": ("outputs", "output"),
    "prob-noise": ("outputs", "output"),
    "reverse-sigmoid": ("outputs", "output"),
    # query rejection
    "reject-softmax": ("rejection", "rejection"),
    "reject-mahalanobis": ("rejection", "rejection"),
    # extraction through the suspect
    "distill": ("distill", "extraction"),
    "knockoff": ("extraction", "extraction"),
    "knockoff-adaptive": ("extraction", "extraction"),
    "retrain-xarch": ("extraction", "extraction"),
    "transfer": ("extraction", "extraction"),
    # extraction aimed at an API watermark (modelseal.guard)
    "vote": ("api", "extraction"),
    "smooth-labels": ("api", "extraction"),
    "ensemble-distill": ("api", "extraction"),
    "adv-student": ("api", "extraction"),
    # combined
    "chain": ("chain", "chain"),
}
_TABLE: Registry[type[Attack]] = Registry.of(_BUILTIN_TABLE, kind="attack", package=__name__,
                                                   group="modelseal.attacks")
FAMILY_ORDER = ("input", "output", "rejection", "modification", "extraction", "chain")
# The attack that composes others (its `steps` parameter lists them; a scenario's `chain = [...]` names it), and
# the extraction a bench's student negatives use unless the scenario names another: consumers use these names
# instead of spelling an attack's.
CHAIN = "chain"
STUDENT = "knockoff"
# Read-only views of the table, for consumers that list without importing (the CLI): name -> module,
# name -> family (plugins that register join both), the registered classes, the built-in names.
_MODULES, FAMILIES, _REGISTRY, _BUILTIN = _TABLE.modules, _TABLE.families, _TABLE.classes, _TABLE.builtin


@dataclass(frozen=True)
class Attacked:
    """What one run of an attack gives: the attacked `model` and the run's `cost` (`wall_s`, `examples`,
    `data_fraction`, `queries`, and what the attack adds with `Attack.used`, e.g. a chain's `steps`)."""

    model: Any
    cost: dict[str, Any] = field(default_factory=dict)


class AttackError(ModelSealError):
    """An attack was configured with bad parameters or given unusable data or models."""


_FINAL = ("apply", "apply_many", "run", "run_many")


class Attack(Configurable):
    """Base class: `apply(model, data=None) -> nn.Module`, a new model; the input is left untouched.
    `run(model, data=None) -> Attacked` is the same with the run's cost. Subclasses write `_apply`.

    A subclass is a dataclass whose fields are declared with `modelseal.schema.param(...)`: construction
    checks them (AttackError), then the subclass's `check()` (relations between fields)."""

    param_error = AttackError
    param_role = "attack"
    name = "attack"
    seed: int = 0
    copies = 1
    acts_on = "weights"
    family = "modification"  # set by `register` (from the table for built-in attacks)
    takes_suspect = False  # extraction: `apply` also takes a Suspect, a file path or a URL
    progress = None

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        overridden = [v for v in _FINAL if v in cls.__dict__]
        if overridden:
            raise TypeError(f"{cls.__name__} overrides {', '.join(overridden)}, which Attack keeps final (they "
                            "check, time and record the cost); write _apply (and _apply_many) instead")

    def _apply(self, model: nn.Module, data: Any = None) -> nn.Module:  # pragma: no cover - interface
        raise NotImplementedError

    def _apply_many(self, models: list[nn.Module], data: Any = None) -> nn.Module:
        """Attack `self.copies` distributed copies at once (default: `_apply` on the first)."""
        return self._apply(models[0], data)

    @final
    def run(self, model: nn.Module, data: Any = None) -> Attacked:
        """Attack `model` (refused if its weights are not finite); the attacked model and this run's cost."""
        self._refuse_nonfinite([model])
        return self._measured(lambda: self._apply(model, data), data)

    @final
    def run_many(self, models: list[nn.Module], data: Any = None) -> Attacked:
        """Attack `self.copies` distributed copies at once; the attacked model and this run's cost."""
        models = list(models)
        if len(models) < self.copies:
            raise AttackError(f"{self.name} needs {self.copies} copies, got {len(models)}")
        self._refuse_nonfinite(models)
        return self._measured(lambda: self._apply_many(models, data), data)

    @final
    def apply(self, model: nn.Module, data: Any = None) -> nn.Module:
        """The attacked model (`run(model, data).model`)."""
        attacked: nn.Module = self.run(model, data).model
        return attacked

    @final
    def apply_many(self, models: list[nn.Module], data: Any = None) -> nn.Module:
        """The attacked model from `self.copies` distributed copies (`run_many(models, data).model`)."""
        attacked: nn.Module = self.run_many(models, data).model
        return attacked

    def _refuse_nonfinite(self, models: list[Any]) -> None:
        from torch import nn as _nn

        for i, m in enumerate(models):
            if not (self.takes_suspect and not isinstance(m, _nn.Module)):
                require_finite(m, "the model to attack" if i == 0 else f"copy {i + 1} to attack")

    def _measured(self, attack: Callable[[], Any], data: Any) -> Attacked:
        usage: dict[str, Any] = {"examples": 0, "queries": 0}
        self.__dict__["_usage"] = usage  # this run's record, filled by `used`
        t0 = time.perf_counter()
        try:
            out = attack()
        finally:
            self.__dict__.pop("_usage", None)
        n = _size(data)
        cost = {**usage, "wall_s": time.perf_counter() - t0,
                "data_fraction": (min(usage["examples"], n) / n) if n else 0.0}
        self.__dict__["_last_cost"] = cost
        return Attacked(out, copy.deepcopy(cost))

    @property
    def cost(self) -> dict[str, Any]:
        """A copy of the last run's cost ({} before the first): for callers of `apply`; `run` returns it."""
        return copy.deepcopy(self.__dict__.get("_last_cost", {}))

    def wrap(self, suspect: Any, meta: Any = None) -> Any:
        """The suspect the verifier queries after this attack (default: unchanged)."""
        return suspect

    @staticmethod
    def copy_model(model: nn.Module) -> nn.Module:
        """A deep copy of `model` (keeps `modelseal_spec`)."""
        return copy.deepcopy(model)

    def used(self, examples: int = 0, queries: int = 0, **details: Any) -> None:
        """Inside `_apply`: record `examples` of the attacker's data and `queries` to the attacked model spent
        by this run (and JSON-able `details` for its cost record, e.g. a chain's per-step costs)."""
        usage = self.__dict__.get("_usage")
        if usage is None:
            raise AttackError(f"{self.name}: used() records the cost of a run; call it inside _apply")
        usage["examples"] += int(examples)
        usage["queries"] += int(queries)
        usage.update(details)

    def start_query_stats(self) -> dict[str, int]:
        """A fresh count for a new wrapped suspect (`query_stats` then reads it)."""
        stats = {"answered": 0, "rejected": 0}
        self.__dict__["_query_stats"] = stats
        return stats

    def count_query(self, answered: int = 0, rejected: int = 0) -> None:
        """Query-side attacks: count what the latest wrapped suspect answered (and rejected)."""
        stats = self.__dict__.get("_query_stats") or self.start_query_stats()
        stats["answered"] += int(answered)
        stats["rejected"] += int(rejected)

    @property
    def query_stats(self) -> dict[str, int]:
        """What the latest wrapped suspect answered and rejected ({} before the first wrap)."""
        return dict(self.__dict__.get("_query_stats") or {})


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


_A = TypeVar("_A", bound=Attack)


def register(name: str, family: str | None = None) -> Callable[[type[_A]], type[_A]]:
    """Register an attack class under `name` with its family: a built-in attack's comes from the table above;
    a plugin gives `family` or keeps its class's (default "modification")."""

    def deco(cls: type[_A]) -> type[_A]:
        if not (isinstance(cls, type) and issubclass(cls, Attack)):
            raise RegistryError(f"attack '{name}' must subclass modelseal.attacks.Attack")
        declared = _TABLE.families.get(name) if name in _TABLE.builtin else None
        if declared is not None and family is not None and family != declared:
            raise RegistryError(f"attack '{name}' is of family '{declared}', not '{family}'")
        cls.name = name
        cls.family = declared or family or cls.family
        _TABLE.add(name, cls, cls.family)
        return cls

    return deco


# the registry's own lookups: unregister (forget a plugin's attack; the built-in ones stay), _available (name ->
# module, without importing), get (the class, its module imported on first use)
unregister, _available, get = _TABLE.remove, _TABLE.available, _TABLE.get


def names() -> list[str]:
    """Attack names, without importing the attacks (or torch)."""
    return _TABLE.names()


def by_family() -> dict[str, list[str]]:
    """Attack names grouped by family (in FAMILY_ORDER), without importing the attacks (or torch)."""
    return _TABLE.by_family(FAMILY_ORDER)


__all__ = ["Attack", "Attacked", "AttackError", "FAMILIES", "FAMILY_ORDER", "register", "unregister", "get", "names",
           "by_family", "require_finite"]
