"""The one result of every verification: `Verdict`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

DEFAULT_ALPHA = 1e-6
RELATED = ("related, not proven stolen: a match shows the two models are related (a shared ancestor, or one "
           "derived from the other), not theft and not which came first, unless trusted timestamps order them")


@dataclass
class Verdict:
    """Judgement on a suspect model.

    `p_value` is the chance that an independent model scores at least `score`; `owned` is
    `p_value <= alpha`, where alpha is the verifier's (never the key's). `queries` counts the inputs the
    suspect was asked about. `accused` lists the users a per-user method names (None for other families).
    `judged` is False when the method could not reach a decision (e.g. no calibrated null): then
    `owned` is False and `details["not_judged"]` says why. `transcript` (not printed, not in `to_dict`)
    holds what the suspect was asked and answered, for an evidence file.
    """

    method: str
    owned: bool
    score: float
    threshold: float
    p_value: float
    alpha: float = DEFAULT_ALPHA
    queries: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    accused: list[int] | None = None
    judged: bool = True
    transcript: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (0.0 <= self.p_value <= 1.0) or math.isnan(self.p_value):
            raise ValueError(f"p_value must lie in [0, 1], got {self.p_value}")
        if self.owned and not self.judged:
            raise ValueError("a verdict that was not judged cannot be owned")
        if self.owned and not self.p_value <= self.alpha:
            raise ValueError(f"owned needs p_value <= alpha, got p = {self.p_value} > alpha = {self.alpha}")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "transcript"}
        d["owned"] = bool(d["owned"])
        if d["accused"] is None:
            d.pop("accused")
        out: dict[str, Any] = jsonable(d)
        return out

    def summary(self) -> str:
        if not self.judged:
            return f"{self.method}: not judged: {self.details.get('not_judged', 'no decision possible')}"
        if self.accused is not None:
            if self.accused:
                return (f"{self.method}: accused user(s) {', '.join(str(j) for j in self.accused)} "
                        f"(p = {self.p_value:.3g}, alpha = {self.alpha:.3g})")
            return f"{self.method}: nobody accused at alpha {self.alpha:.3g}{self._best_candidate()}"
        word = "OWNED" if self.owned else "not owned"
        return (f"{self.method}: {word} (score {self.score:.4g}, p = {self.p_value:.3g}, "
                f"alpha = {self.alpha:.3g}, queries = {self.queries})")

    def notes(self) -> list[str]:
        """What the verdict does not prove, one line each: the time line (`details["time"]`: proven by an RFC
        3161 token, or not) and, for a fingerprint match, that it shows relatedness, not direction."""
        out = []
        time = self.details.get("time")
        if isinstance(time, dict) and isinstance(time.get("line"), str):
            out.append(time["line"])
        if isinstance(self.details.get("relatedness"), str):
            out.append(self.details["relatedness"])
        return out

    def _best_candidate(self) -> str:
        """The closest the per-user decoder came: its decoded coalition with the coalition p-value, else the
        best single user with that user's p-value."""
        cands, best = self.details.get("candidates"), self.details.get("best_user")
        if cands:
            who = f"user {cands[0]}" if len(cands) == 1 else f"users {', '.join(str(j) for j in cands)}"
            return f" (best candidate: {who}, p = {self.p_value:.3g})"
        if best is not None and self.details.get("single_p_value") is not None:
            return f" (best candidate: user {best}, p = {float(self.details['single_p_value']):.3g})"
        return f" (p = {self.p_value:.3g})"


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


def fuse(verdicts: list[Verdict], alpha: float, *, method: str = "fused",
         rule: str = "Holm-Bonferroni (valid under any dependence between the tests)",
         none_judged: str = "none of the tests could judge this suspect", **details: Any) -> Verdict:
    """One verdict from several tests of one suspect: the Holm-Bonferroni minimum over the judged verdicts'
    p-values (valid under any dependence); owned iff it is <= alpha. `details` gains `rule`, `judged`,
    `verdicts` (each as a dict) and `adjusted_p_values` (in the order of the judged verdicts)."""
    from . import stats

    judged = [v for v in verdicts if v.judged]
    adjusted = stats.holm([v.p_value for v in judged]) if judged else []
    p = min(adjusted) if adjusted else 1.0
    owned = bool(judged) and p <= alpha
    out = {**details, "rule": rule, "judged": len(judged), "verdicts": [v.to_dict() for v in verdicts],
           "adjusted_p_values": adjusted}
    times = [v.details.get("time") for v in verdicts]
    if times and all(isinstance(t, dict) for t in times):
        proven = all(t.get("proven") for t in times)  # type: ignore[union-attr]
        out["time"] = ({"proven": True, "line": "time: " + "; ".join(
            str(t["line"]).removeprefix("time: ") for t in times)} if proven  # type: ignore[index]
            else {"proven": False, "line": next(str(t["line"]) for t in times  # type: ignore[index]
                                                 if not t.get("proven"))})  # type: ignore[union-attr]
    related = next((v.details["relatedness"] for v in verdicts if "relatedness" in v.details), None)
    if related is not None and owned:
        out["relatedness"] = related
    if not judged:
        out["not_judged"] = none_judged
    return Verdict(method, owned=owned, score=-_log10(p), threshold=-_log10(alpha), p_value=p, alpha=alpha,
                   queries=sum(v.queries for v in verdicts), details=out, judged=bool(judged))


def _log10(p: float) -> float:
    return math.log10(max(p, 1e-300))
