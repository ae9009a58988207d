"""The one result of every verification: `Verdict`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

DEFAULT_ALPHA = 1e-6


@dataclass
class Verdict:
    """Judgement on a suspect model.

    `p_value` is the chance that an independent model scores at least `score`; `owned` is
    `p_value <= alpha`. `queries` counts the inputs the suspect was asked about.
    """

    method: str
    owned: bool
    score: float
    threshold: float
    p_value: float
    alpha: float = DEFAULT_ALPHA
    queries: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (0.0 <= self.p_value <= 1.0) or math.isnan(self.p_value):
            raise ValueError(f"p_value must lie in [0, 1], got {self.p_value}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["owned"] = bool(d["owned"])
        return jsonable(d)

    def summary(self) -> str:
        word = "OWNED" if self.owned else "not owned"
        return (f"{self.method}: {word} (score {self.score:.4g}, p = {self.p_value:.3g}, "
                f"alpha = {self.alpha:.3g}, queries = {self.queries})")


def jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 1) == 0:
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return str(x)
    return x
