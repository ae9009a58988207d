"""The base class of every method and one per family, with every optional hook declared (and its default).

A method subclasses its family's base (`Watermark`, `Fingerprint`, `PerUser`, `Lock`), declares its
parameters as dataclass fields with `schema.param(...)` and its verifier parameters with
`verify_params = schema.verifier(...)`, and implements its protect verb and `decide`. The family's judge verb
(`verify`, or `trace` for per-user methods) is defined here once: it checks the verifier's rule against the
schema (plus the method's `check_rule`), turns what it is given into a Suspect, checks the suspect against
the key's signature and the method's access (`check_suspect`), then calls `decide(suspect, key, rule)`.

Hooks with their defaults (a method overrides the ones it needs; consumers call them without probing):

- `check_secrets(key)`: raise KeyIntegrityError unless every secret the method can derive from the commitment's
  nonce or root (trigger labels and order, DeepMarks' X and U) is the derived one; called before a key commits
  or judges (default: nothing to derive). `check_opened(opened, nonce, public) -> [problems]`: the same for
  the secrets an evidence file opens (default: none);
- `commitment_extra(key) -> dict | None` and `check_commitment_extra(key, public) -> [differences]`:
  method-specific commitment fields (default: none);
- `evidence_open(key, transcript) -> dict | None`: the key tensors an evidence file reveals (default None:
  every key tensor, opened with the commitment's nonce) and `evidence_check(opened, public) -> bool` (True
  when the method checked the opened tensors itself; default False: the generic digest check);
- `recheck(opened, transcript, public, rule=None) -> {score, p_value, owned, ...}` and
  `reanswer(suspect, opened, transcript, public)`: recompute a verdict from an evidence file and re-ask the
  suspect; a method without them writes no evidence (`writes_evidence()` is False);
- `evidence_not_proved`: what a check of this method's evidence cannot show;
- `score_is_match_rate`: the Verdict score is a match rate (the bench report gives the Uniqueness Score);
- `shared_init_is_derived`: the method's null is independent *initialisation* (the keyless lineage test), so a
  model trained from the owner's initial weights is derived, not independent: a benchmark of false
  accusations reports such models apart (`benchmarks/null_rates.py`);
- `peer_baseline`: a peer fingerprint from the literature (AKH, IPGuard, ModelDiff, SAC-m) kept to compare the
  protections against (scored in the bench and the arena), not one of the protections `modelseal demo` shows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from .. import schema
from ..errors import ModelSealError
from ..schema import Spec

if TYPE_CHECKING:
    from ..keys import Key
    from ..suspect import Suspect
    from ..verdict import Verdict


class Method(schema.Configurable):
    """What every method declares; see the module docstring for the hooks."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    access: ClassVar[str] = ""
    verify_params: ClassVar[dict[str, Spec]] = schema.verifier()
    key_params: ClassVar[tuple[str, ...]] = ()
    key_tensors: ClassVar[tuple[str, ...]] = ()
    score_is_match_rate: ClassVar[bool] = False
    peer_baseline: ClassVar[bool] = False
    shared_init_is_derived: ClassVar[bool] = False
    evidence_not_proved: ClassVar[tuple[str, ...]] = ()

    # ------------------------------------------------------------------ the verifier's rule
    @classmethod
    def rule(cls, given: dict[str, Any] | None = None, error: type[Exception] = ModelSealError) -> dict[str, Any]:
        """The verifier's rule: the declared defaults overridden by `given`, each value checked, then the
        method's own relations between them (`check_rule`)."""
        return cls.check_rule(schema.rule(cls, given, error, skip=tuple(schema.of_kind(cls, "models"))), error)

    @staticmethod
    def check_rule(rule: dict[str, Any], error: type[Exception] = ModelSealError) -> dict[str, Any]:
        """Relations between verifier parameters (default: none)."""
        return rule

    # ------------------------------------------------------------------ commitments and evidence
    @staticmethod
    def check_secrets(key: Key) -> None:
        return None

    @staticmethod
    def check_opened(opened: dict[str, Any], nonce: bytes, public: dict[str, Any]) -> list[str]:
        return []

    @staticmethod
    def commitment_extra(key: Key) -> dict[str, Any] | None:
        return None

    @staticmethod
    def check_commitment_extra(key: Key, public: dict[str, Any]) -> list[str]:
        return []

    @staticmethod
    def evidence_open(key: Key, transcript: dict[str, Any]) -> dict[str, Any] | None:
        return None

    @staticmethod
    def evidence_check(opened: dict[str, Any], public: dict[str, Any]) -> bool:
        return False

    @staticmethod
    def recheck(opened: dict[str, Any], transcript: dict[str, Any], public: dict[str, Any],
                rule: dict[str, Any] | None = None) -> dict[str, Any]:
        raise ModelSealError("this method's verdicts cannot be re-checked, so it writes no evidence")

    @staticmethod
    def reanswer(suspect: Suspect, opened: dict[str, Any], transcript: dict[str, Any], public: dict[str, Any]) -> Any:
        raise ModelSealError("this method's evidence cannot be re-queried")

    @classmethod
    def writes_evidence(cls) -> bool:
        return cls.recheck is not Method.recheck


class Judging(Method):
    """A method with a judge verb: the shared start, then `decide`."""

    def judge(self, suspect: Any, key: Key, **given: Any) -> Verdict:
        """Judge `suspect` with `key` under the verifier's parameters `given` (alpha and `verify_params`)."""
        from ..suspect import as_suspect

        rule = self.rule(given)
        s = as_suspect(suspect)
        self.check_suspect(s, key)
        return self.decide(s, key, rule)

    def check_suspect(self, suspect: Suspect, key: Key) -> None:
        """Refuse a suspect this key cannot judge: the access the method needs, then the key's signature."""
        if self.access == "white-box":
            suspect.require_module(self.name)
        elif self.access == "outputs":
            suspect.require_outputs(self.name)
        key.check_signature(suspect.input_shape, suspect.output_size())

    def decide(self, suspect: Suspect, key: Key, rule: dict[str, Any]) -> Verdict:  # pragma: no cover - interface
        raise NotImplementedError


class Watermark(Judging):
    """`embed(model, data, progress) -> (marked, Key)`; `verify(suspect, key, **rule) -> Verdict`."""

    family: ClassVar[str] = "watermark"

    def embed(self, model: Any, data: Any, progress: Any = None) -> tuple[Any, Key]:  # pragma: no cover
        raise NotImplementedError

    def verify(self, suspect: Any, key: Key, **rule: Any) -> Verdict:
        return self.judge(suspect, key, **rule)


class Fingerprint(Judging):
    """`extract(model, input_spec, progress) -> Key`; `verify(suspect, key, **rule) -> Verdict`."""

    family: ClassVar[str] = "fingerprint"

    def extract(self, model: Any, input_spec: Any, progress: Any = None) -> Key:  # pragma: no cover
        raise NotImplementedError

    def verify(self, suspect: Any, key: Key, **rule: Any) -> Verdict:
        return self.judge(suspect, key, **rule)


class PerUser(Judging):
    """`distribute(model, data, progress) -> (copies, Key)`; `trace(suspect, key, **rule) -> Verdict` (the
    accused users are in the Verdict)."""

    family: ClassVar[str] = "per-user"

    def distribute(self, model: Any, data: Any, progress: Any = None) -> tuple[list[Any], Key]:  # pragma: no cover
        raise NotImplementedError

    def trace(self, suspect: Any, key: Key, **rule: Any) -> Verdict:
        return self.judge(suspect, key, **rule)

    @classmethod
    def collusion_bound(cls, key_params: dict[str, Any]) -> int | None:
        """The most colluders whose average the method guarantees to trace, from a key's parameters (None:
        no guarantee stated). Consumers (the bench's outcomes) ask this instead of reading a method's keys."""
        bound = key_params.get("max_colluders")
        return int(bound) if isinstance(bound, int) else None


class Lock(Method):
    """`lock(model, data, progress) -> (locked, Key)`; `unlock(locked, key) -> model`; no judge verb."""

    family: ClassVar[str] = "lock"
    verify_params: ClassVar[dict[str, Spec]] = {}

    def lock(self, model: Any, data: Any, progress: Any = None) -> tuple[Any, Key]:  # pragma: no cover
        raise NotImplementedError

    def unlock(self, locked: Any, key: Key) -> Any:  # pragma: no cover
        raise NotImplementedError


BASES: dict[str, type[Method]] = {"watermark": Watermark, "fingerprint": Fingerprint, "per-user": PerUser,
                                  "lock": Lock}

__all__ = ["Method", "Judging", "Watermark", "Fingerprint", "PerUser", "Lock", "BASES"]
