"""Registry of protection methods and the one protocol per family.

A method registers itself with `@register(name, family=..., access=...)`. Its family fixes its verbs:

- `watermark`: `embed(model, data, progress) -> (model, Key)`; judge `verify(suspect, key, alpha=..) -> Verdict`
- `fingerprint`: `extract(model, input_spec, progress) -> Key`; judge `verify(suspect, key, alpha=..) -> Verdict`
- `per-user`: `distribute(model, data, progress) -> (models, Key)`; judge `trace(suspect, key, alpha=..) -> Verdict`
  (the accused users are in the Verdict)
- `lock`: `lock(model, data, progress) -> (model, Key)`; no judge verb: `unlock(locked, key) -> model` restores it

`access` says what the judge verb needs of a suspect: `labels`, `outputs` or `white-box` weights.
Consumers (CLI, bench, demo, report) call `protect`, `judge`, `restore` and `commit` below, which follow
the declared family; nothing branches on a method's name. A method subclasses its family's base class in
`methods.base` (which declares every optional hook with its default: commitment fields, evidence
recheck/reanswer, capabilities) and declares its parameters once with `modelseal.schema` (its verifier
parameters in `verify_params`, which always come from the caller, never from a key). `key_params` and
`key_tensors` declare what a key of the method must hold: `judge`, `restore` and `commit` check them first,
so a key of another method relabelled as this one ends in one clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from ..errors import ModelSealError, RegistryError
from ..registry import Registry
from .base import BASES, Fingerprint, Judging, Lock, Method, PerUser, Watermark

FAMILIES: dict[str, tuple[str, str | None]] = {
    "watermark": ("embed", "verify"),
    "fingerprint": ("extract", "verify"),
    "per-user": ("distribute", "trace"),
    "lock": ("lock", None),
}
ACCESS = ("labels", "outputs", "white-box")
# the CLI command that runs each family's protect verb, for error messages that name the right command
# (`modelseal protect MODEL --method NAME` runs any of them)
COMMANDS = {"watermark": "modelseal watermark embed", "fingerprint": "modelseal fingerprint extract",
            "per-user": "modelseal deepmarks distribute", "lock": "modelseal lock"}
# the method each family's protect command uses when none is named: consumers ask `default(family)`, so no
# consumer spells a method's name
DEFAULTS = {"watermark": "trigger-set", "fingerprint": "tafa", "per-user": "deepmarks", "lock": "advparams"}
# the CLI command that uses each family's key, for errors about a key handed to the wrong command
KEY_COMMANDS = {"watermark": "modelseal verify KEY SUSPECT", "fingerprint": "modelseal verify KEY SUSPECT",
                "per-user": "modelseal trace KEY SUSPECT", "lock": "modelseal unlock LOCKED KEY --out RESTORED"}

# Where each known method lives: imported on first use so that `import modelseal` stays light.
_MODULES = {
    "trigger-set": "modelseal.methods.trigger_set",
    "deepmarks": "modelseal.methods.deepmarks",
    "c-examples": "modelseal.methods.characteristic",
    "tafa": "modelseal.methods.tafa",
    "advparams": "modelseal.methods.advparams",
    "akh": "modelseal.methods.akh",
    "ipguard": "modelseal.methods.ipguard",
    "modeldiff": "modelseal.methods.modeldiff",
    "sac": "modelseal.methods.sac",
    "lineage": "modelseal.methods.lineage_ref",
}
_TABLE: Registry[type[Method]] = Registry(_MODULES, kind="method", package="modelseal.methods",
                                                 group="modelseal.methods")
_REGISTRY, _BUILTIN = _TABLE.classes, _TABLE.builtin  # the registered classes; the names that ship with modelseal


@dataclass(frozen=True)
class MethodInfo:
    """What a consumer needs to know about a method without branching on its name."""

    name: str
    family: str
    access: str
    cls: type[Method]

    @property
    def protect_verb(self) -> str:
        return FAMILIES[self.family][0]

    @property
    def judge_verb(self) -> str | None:
        return FAMILIES[self.family][1]

    @property
    def judges(self) -> bool:
        return self.judge_verb is not None

    @property
    def command(self) -> str:
        return COMMANDS[self.family]


def register(name: str, *, family: str, access: str):
    """Class decorator: register a method under `name` with its family and the access its judge needs."""
    if family not in FAMILIES:
        raise RegistryError(f"unknown family '{family}'; use one of {', '.join(FAMILIES)}")
    if access not in ACCESS:
        raise RegistryError(f"unknown access '{access}'; use one of {', '.join(ACCESS)}")

    def deco(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, BASES[family])):
            raise RegistryError(f"method '{name}' of family '{family}' must subclass "
                                f"modelseal.methods.base.{BASES[family].__name__}")
        protect = FAMILIES[family][0]
        if getattr(cls, protect) is getattr(BASES[family], protect) or \
                (family != "lock" and cls.decide is BASES[family].decide):  # type: ignore[attr-defined]
            raise RegistryError(f"method '{name}' of family '{family}' does not implement "
                                f"{protect}{'' if family == 'lock' else ' and decide'}")
        cls.name, cls.access = name, access
        _TABLE.add(name, cls)
        return cls

    return deco


# the registry's own lookups: unregister (forget a plugin's method; the built-in ones stay), _available (name ->
# module, without importing), get (the class, its module imported on first use)
unregister, _available, get = _TABLE.remove, _TABLE.available, _TABLE.get


def info(name: str) -> MethodInfo:
    """Family, access and class of the method registered as `name`."""
    cls = get(name)
    return MethodInfo(name, cls.family, cls.access, cls)


def default(family: str) -> str:
    """The method a family's protect command uses when the user names none."""
    if family not in DEFAULTS:
        raise RegistryError(f"unknown family '{family}'; use one of {', '.join(FAMILIES)}")
    return DEFAULTS[family]


def names(family: str | None = None) -> list[str]:
    """Registered method names, optionally only those of one family."""
    return _TABLE.names(family)


def require_family(name: str, family: str, verb: str) -> MethodInfo:
    """The method's info, or one clear error naming the command that fits its family."""
    mi = info(name)
    if mi.family != family:
        if verb in COMMANDS.values():  # a protect command: name the one that makes this method's keys
            raise ModelSealError(f"'{name}' is a {mi.family} method, so `{verb}` does not apply to it; "
                                 f"use `{mi.command} --method {name}`")
        # a command handed a key: name the command that takes this key
        raise ModelSealError(f"this is a '{name}' key ({mi.family}), so `{verb}` does not apply to it; "
                             f"use it with `{KEY_COMMANDS[mi.family]}`")
    return mi


@dataclass
class Protected:
    """What every protect verb gives: the protected model(s) (one per user for per-user methods), the Key,
    and the key's public commitment (made at the same moment)."""

    models: list[Any]
    key: Any
    commitment: dict[str, Any] | None = None


def protect(method: Any, model: Any, data: Any = None, input_spec: Any = None, progress: Any = None) -> Protected:
    """Run `method`'s protect verb by its family. `data` is the owner's training data (watermark, per-user,
    lock); `input_spec` the input specification (fingerprint; taken from `data` when omitted)."""
    family = type(method).family
    if family == "fingerprint":
        spec = input_spec
        if spec is None:
            from ..data import meta_of

            spec = meta_of(data) if data is not None else None
        if spec is None:
            raise ModelSealError(f"{type(method).name} needs an input specification (shape, bounds) to extract")
        key = method.extract(model, spec, progress=progress)
        return Protected([model], bind_model(key, model), commit(key))
    if data is None:
        raise ModelSealError(f"{type(method).name} ({family}) needs the owner's training data")
    out, key = getattr(method, FAMILIES[family][0])(model, data, progress=progress)
    models = list(out) if isinstance(out, (list, tuple)) else [out]
    # the model a key was made for: the one it protects (watermark, lock), else the owner's (per-user)
    bind_model(key, models[0] if family in ("watermark", "lock") else model)
    return Protected(models, key, commit(key))


def bind_model(key: Any, model: Any) -> Any:
    """Record the SHA-256 of the model a key was made for in its signature (so in its digest and its public
    commitment), unless the method already did; returns the key."""
    if "model_sha256" not in key.signature and hasattr(model, "state_dict"):
        from ..tensorfile import state_sha256

        key.signature["model_sha256"] = state_sha256(model.state_dict())
    return key


def _require(key: Any, cls: type[Method], secrets: bool = True) -> None:
    """KeyFormatError unless `key` holds what its method declares (`key_params`, `key_tensors`); with `secrets`,
    KeyIntegrityError unless its derivable secrets are the ones its commitment derives (`check_secrets`)."""
    key.require(params=cls.key_params, tensors=cls.key_tensors)
    if secrets:
        cls.check_secrets(key)


def restore(locked: Any, key: Any, **kw: Any) -> Any:
    """Undo a lock with its key (lock family)."""
    mi = require_family(key.method, "lock", "unlock")
    _require(key, mi.cls)
    return cast(Lock, mi.cls()).unlock(locked, key, **kw)


def declared(name: str) -> dict[str, Any]:
    """A method's default verifier parameters (recorded in commitments as the owner's declared ones)."""
    from .. import schema

    return schema.declared_defaults(info(name).cls, skip_kinds=("models", "budget"))


def commit(key: Any) -> dict[str, Any]:
    """The public commitment of `key`: generic digests plus the method's own fields."""
    from .. import commitment

    cls = info(key.method).cls
    _require(key, cls)
    extra = cls.commitment_extra(key)
    return commitment.make(key, declared=declared(key.method), extra=extra)


def commitment_differences(key: Any, public: dict[str, Any]) -> list[str]:
    from .. import commitment

    diff = commitment.differences(key, public)
    cls = info(key.method).cls
    if public.get("method") == key.method:
        diff = diff + cls.check_commitment_extra(key, public)
    return diff


def open_commitment(key: Any, public: dict[str, Any]) -> None:
    """KeyIntegrityError naming what differs unless `key` opens the commitment `public`."""
    from ..errors import KeyIntegrityError

    diff = commitment_differences(key, public)
    if diff:
        raise KeyIntegrityError("the key does not open its commitment: " + "; ".join(diff))


def judge(suspect: Any, key: Any, commitment: Any = None, *, timestamp: Any = None, tsa_certs: Any = None,
          **verifier: Any) -> Any:
    """Judge `suspect` with `key` through the judge verb of the key's method family; returns a Verdict.

    `verifier` holds the verifier's parameters (alpha and the method's `verify_params`); unknown ones are
    refused. With `commitment` (a dict or a path) the key must first open it. `timestamp` (an RFC 3161 token:
    bytes or a path; default: PUBLIC.tsr beside a commitment path) and `tsa_certs` (the verifier's trusted
    TSA certificates: paths or cryptography certificates) decide the verdict's time line
    (`details["time"]`): proven only by a token over the commitment that verifies against them. An OWNED
    fingerprint verdict also carries `details["relatedness"]` (`RELATED`): a fingerprint match shows
    relatedness, not direction.
    """
    from .. import commitment as _commitment
    from .. import timestamp as _timestamp
    from ..verdict import RELATED

    mi = info(key.method)
    if not mi.judges:
        raise ModelSealError(f"'{key.method}' keys do not judge suspects ({mi.family}); "
                             f"use `modelseal unlock` to restore a locked model")
    _require(key, mi.cls, secrets=False)
    allowed = mi.cls.verify_params
    mi.cls.rule(verifier)  # refuses unknown or out-of-range parameters before the commitment is opened
    public = None
    if commitment is not None:
        public = commitment if isinstance(commitment, dict) else _commitment.load(commitment)
        open_commitment(key, public)  # names what differs from the commitment first, then the derivation
    mi.cls.check_secrets(key)
    if timestamp is None and commitment is not None and not isinstance(commitment, dict):
        beside = _timestamp.token_path(commitment)
        timestamp = beside if beside.is_file() else None
    # a bad token fails here, before the suspect is asked
    time = _timestamp.status(public, timestamp, _timestamp.as_certs(tsa_certs))
    v = cast(Judging, mi.cls()).judge(suspect, key, **verifier)
    v.details["commitment_checked"] = public is not None
    v.details["time"] = time
    if v.owned and mi.family == "fingerprint":
        v.details["relatedness"] = RELATED
    if public is not None:
        used = {k: verifier.get(k, allowed[k].default) for k in public.get("declared", {}) if k in allowed}
        differ = {k: {"declared": public["declared"][k], "used": used[k]} for k in used
                  if public["declared"][k] != used[k]}
        if differ:
            v.details["verifier_differs_from_declared"] = differ
    return v


__all__ = ["Method", "Watermark", "Fingerprint", "PerUser", "Lock",
           "FAMILIES", "ACCESS", "MethodInfo", "Protected", "register", "get", "info", "names", "protect", "judge",
           "unregister", "restore", "commit", "open_commitment", "commitment_differences", "declared", "require_family",
           "bind_model"]
