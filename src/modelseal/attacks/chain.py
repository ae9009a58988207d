"""Combined attacks: several registered attacks in a row, the way the WRT paper (Lukas et al., "SoK: How
Robust is Image Classification Deep Neural Network Watermarking?", S&P 2022) shows schemes fall to
combinations (e.g. structured pruning, then fine-tuning, then extraction).

`steps` is a list of {"attack": NAME, "params": {...}}. Weight steps run in order on the model; a query-side
step (input/output transform, rejection) is fitted on the model as it is then and wraps the suspect: an
extraction step after it queries through that wrapped suspect (a thief that steals from an API that only
returns labels), and query-side steps left at the end wrap the suspect the verifier queries. A weight step
cannot follow a query-side step that no extraction consumed. The chain's cost sums its steps' wall time and
queries and takes the largest number of examples (the steps share one data set); `step_costs` keeps each step's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from torch import nn
from torch.utils.data import Dataset

from ..data import meta_of
from ..errors import RegistryError
from ..schema import param, progress_field, seed_param
from ..suspect import Suspect
from . import Attack, AttackError, get, register

MAX_STEPS = 16


@register("chain")
@dataclass
class Chain(Attack):
    """Run `steps` (a list of {"attack": name, "params": {...}}) one after another as one attack."""

    steps: list = param([], "the attacks to run in order: a list of {'attack': NAME, 'params': {...}}")
    seed: int = seed_param()
    progress: Any = progress_field()

    def check(self) -> None:
        if not isinstance(self.steps, (list, tuple)) or not self.steps:
            raise AttackError("chain needs steps = [{attack = NAME, params = {...}}, ...]")
        if len(self.steps) > MAX_STEPS:
            raise AttackError(f"a chain has at most {MAX_STEPS} steps, got {len(self.steps)}")
        self._attacks: list[Attack] = []
        for i, s in enumerate(self.steps):
            if not isinstance(s, dict) or "attack" not in s or set(s) - {"attack", "params"}:
                raise AttackError(f"chain step {i + 1} must be {{attack = NAME, params = {{...}}}}, got {s!r}")
            name, params = s["attack"], dict(s.get("params") or {})
            if name == "chain":
                raise AttackError("a chain step cannot be another chain; list its steps instead")
            try:
                cls = get(name)
            except RegistryError as e:
                raise AttackError(f"chain step {i + 1}: {e}") from None
            try:
                atk = cls(**{"seed": int(self.seed) + i, **params})
            except TypeError as e:
                raise AttackError(f"chain step {i + 1}: bad parameters for {name}: {e}") from None
            if atk.copies != 1:
                raise AttackError(f"chain step {i + 1}: {name} combines several copies; it cannot be chained")
            self._attacks.append(atk)
        self._pending: list[Attack] = []

    @property
    def acts_on(self) -> str:  # type: ignore[override]
        return "queries" if any(a.acts_on == "queries" for a in self._attacks) else "weights"

    def _apply(self, model: nn.Module, data: Dataset | None = None) -> nn.Module:
        meta = meta_of(data) if data is not None else None
        current, pending = model, []
        self.step_costs: list[dict[str, Any]] = []
        for i, atk in enumerate(self._attacks):
            atk.progress = self.progress
            if atk.acts_on == "queries":
                done = atk.run(current, data)
                pending.append(atk)
            elif pending:
                if not atk.takes_suspect:
                    raise AttackError(f"chain step {i + 1} ({atk.name}) changes weights after query-side "
                                      f"step(s) {', '.join(a.name for a in pending)}; put query-side steps last "
                                      "or before an extraction step")
                suspect: Suspect = Suspect(current)
                for q in pending:
                    suspect = q.wrap(suspect, meta)
                # an extraction step (takes_suspect) steals through the wrapped suspect instead of a module
                done, pending = atk.run(cast(nn.Module, suspect), data), []
                current = done.model
            else:
                done = atk.run(current, data)
                current = done.model
            self.step_costs.append({"attack": atk.name, **done.cost, **({"query_stats": atk.query_stats}
                                                                        if atk.query_stats else {})})
            self.used(queries=int(done.cost.get("queries", 0)))
        self._pending = pending
        # the steps train on the same attacker data: the chain used as much of it as its hungriest step
        self.used(examples=max((int(c.get("examples", 0)) for c in self.step_costs), default=0),
                  steps=self.step_costs)
        return current

    def wrap(self, suspect: Suspect, meta: Any = None) -> Suspect:
        """The suspect wrapped by the query-side steps left at the end of the chain."""
        for q in self._pending:
            suspect = q.wrap(suspect, meta)
        return suspect

    @property
    def query_stats(self) -> dict[str, int]:
        """What the outermost wrapper answered, and what all query-side steps rejected."""
        pending = self.__dict__.get("_pending") or []
        if not pending:
            return {}
        return {"answered": int(pending[-1].query_stats.get("answered", 0)),
                "rejected": int(sum(q.query_stats.get("rejected", 0) for q in pending))}
