"""Top-level verbs that dispatch on the key's method family: `verify`, `trace`, `unlock`, and
`protect_and_save`, which protects a model and writes the protected model(s), the key and its commitment.

`verify` judges one suspect with one key, or with several keys at once (one fused verdict).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, cast

from torch import nn

from . import methods, validate
from .errors import ModelSealError
from .keys import Key
from .suspect import Suspect, as_suspect
from .verdict import DEFAULT_ALPHA, Verdict, fuse

FUSION_RULE = "Holm-Bonferroni (valid under any dependence between the tests)"


def _key(key: Key | str | os.PathLike) -> Key:
    return key if isinstance(key, Key) else Key.load(key)


KeyLike = Key | str | os.PathLike


def verify(suspect: Suspect | nn.Module | str, key: KeyLike | Sequence[KeyLike], *,
           commitment: Any = None, evidence: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
           force: bool = False, timestamp: Any = None, tsa_certs: Any = None, **verifier: Any) -> Verdict:
    """Judge `suspect` with `key` through the judge verb of its method's family. Returns a Verdict.

    `verifier` holds the verifier's rule: `alpha` (default 1e-6) and the method's own test parameters
    (`modelseal methods NAME` lists them); a key never sets them. `commitment` (dict or path) must be
    opened by the key first. `evidence` writes the transcript a third party re-checks with
    `modelseal check` (refuses to overwrite without `force`). `timestamp` (an RFC 3161 token over the
    commitment; default PUBLIC.tsr beside a commitment path) and `tsa_certs` (the TSA certificates the
    verifier trusts) give the verdict its time line (`details["time"]`, `Verdict.notes()`).

    Given a list of keys, every key judges the suspect and the result is one fused Verdict (method
    "fused") whose p-value is the Holm-Bonferroni minimum over the keys' p-values; `details["verdicts"]`
    holds each key's verdict. `commitment` and `evidence` are then lists, one entry per key (or None).
    """
    if isinstance(key, (list, tuple)):
        return _fused(suspect, list(key), commitment, evidence, force, verifier, timestamp, tsa_certs)
    s = as_suspect(suspect)
    k = _key(cast("Key | str | os.PathLike", key))  # a list or tuple of keys went to _fused above
    v = methods.judge(s, k, commitment=commitment, timestamp=timestamp, tsa_certs=tsa_certs, **verifier)
    if evidence is not None:
        from . import evidence as _evidence

        _evidence.write(cast("str | os.PathLike", evidence), v, k, s, force=force)
        v.details["evidence"] = str(evidence)
    return v


def _fused(suspect: Any, keys: list, commitments: Any, evidences: Any, force: bool,
           verifier: dict[str, Any], timestamps: Any = None, tsa_certs: Any = None) -> Verdict:
    if not keys:
        raise ModelSealError("verify needs at least one key")
    n = len(keys)
    commitments = list(commitments) if isinstance(commitments, (list, tuple)) else [commitments] * n
    evidences = list(evidences) if isinstance(evidences, (list, tuple)) else [None] * n
    timestamps = list(timestamps) if isinstance(timestamps, (list, tuple)) else [None] * n
    if len(commitments) != n or len(evidences) != n or len(timestamps) != n:
        raise ModelSealError("give one commitment and one evidence path per key (or none)")
    alpha = validate.alpha(verifier.get("alpha", DEFAULT_ALPHA))
    s = as_suspect(suspect)
    loaded = [_key(k) for k in keys]
    verdicts = []
    for k, c, e, t in zip(loaded, commitments, evidences, timestamps, strict=True):
        # each key is judged at the fused alpha; its own method's other parameters pass through when it takes them
        params = {p: v for p, v in verifier.items() if p in cast(Any, methods.info(k.method).cls).verify_params}
        verdicts.append(verify(s, k, commitment=c, evidence=e, force=force, timestamp=t, tsa_certs=tsa_certs,
                               **params))
    return fuse(verdicts, alpha, method="fused", rule=FUSION_RULE,
                none_judged="none of the keys could judge this suspect", keys=n)


def trace(suspect: Suspect | nn.Module | str, key: Key | str, **kw: Any) -> Verdict:
    """Name the users whose fingerprinted copies a suspect came from (per-user methods: DeepMarks)."""
    key = _key(key)
    methods.require_family(key.method, "per-user", "trace")
    return verify(suspect, key, **kw)


def unlock(locked: nn.Module, key: Key | str | os.PathLike, **kw: Any) -> nn.Module:
    """Restore a locked model bit-exactly with its key (lock methods: AdvParams)."""
    return methods.restore(locked, _key(key), **kw)


class Saved(NamedTuple):
    """What `protect_and_save` did: the test metric of the model before and after protection, and the key."""

    before: float
    after: float
    key: Key


def save_protection(done: methods.Protected, key_path: str | os.PathLike, *,
                    files: Sequence[tuple[str | os.PathLike, bytes | str, str]] = (), force: bool = False,
                    inputs: Mapping[str, str | os.PathLike | None] | None = None) -> list[Path]:
    """Write `files` (path, content, label: protected models, a manifest), the key of `done` (mode 0600) and
    its public commitment (`safeio.commitment_path(key_path)`) as one unit: all of them or none. Nothing
    existing is overwritten without `force`, and no output may be one of `inputs` (label -> path)."""
    from . import commitment as commitment_mod
    from .safeio import commitment_path, write_files

    public = done.commitment if done.commitment is not None else methods.commit(done.key)
    items = [(p, content) for p, content, _ in files]
    items += [(key_path, done.key.to_bytes()), (commitment_path(key_path), commitment_mod.dumps(public))]
    names = [label for _, _, label in files] + ["--key", "commitment"]
    return write_files(items, force, private=[key_path], inputs=inputs, names=names)


def protect_and_save(method: Any, model: nn.Module, data: Any, out_path: str | os.PathLike,
                     key_path: str | os.PathLike, *, arch: str | None = None, force: bool = False,
                     again: Callable[[Any, Key], Any] | None = None, progress: Any = None,
                     inputs: Mapping[str, str | os.PathLike | None] | None = None) -> Saved:
    """Protect `model` through `methods.protect` (the family verb of `method`, trained on `data.owner`), then
    write the protected model to `out_path`, the key to `key_path` and its public commitment beside it, as
    one unit (`save_protection`); the test metric on `data.test` is measured before and after. `arch` writes
    the model as a state dict of that user architecture. `again(method, key)`, when given, judges each result
    before anything is written: it returns a method to protect with once more (e.g. a larger budget), None to
    accept, or raises to refuse (nothing written)."""
    from . import train
    from .models.files import model_bytes

    before = train.evaluate(model, data.test)
    done = methods.protect(method, model, data.owner, progress=progress)
    while again is not None and (method := again(method, done.key)) is not None:
        done = methods.protect(method, model, data.owner, progress=progress)
    protected = done.models[0]
    after = train.evaluate(protected, data.test)
    save_protection(done, key_path, files=[(out_path, model_bytes(protected, arch), "--out")], force=force,
                    inputs=inputs)
    return Saved(before, after, done.key)
