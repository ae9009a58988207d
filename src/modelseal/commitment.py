"""Public commitments to secret keys: written the moment a key is made, opened when a verdict is checked.

A commitment is a JSON file anyone may hold. It names the method, the model signature, the key's public
parameters and its creation time, and binds every secret part with SHA-256:

- `tensors[name]` = SHA-256(nonce ‖ [name, dtype, shape, created] ‖ little-endian bytes) for every key
  tensor (for fingerprints: the fingerprint inputs and the owner's outputs; for watermarks the triggers;
  ...), so the creation time is bound too: a commitment whose `created` was edited opens nothing;
- `params_digest` = SHA-256(nonce ‖ canonical JSON of every parameter and the creation time), so an edited
  parameter (the seed, ...) is caught even where it is not shown;
- methods may add their own fields (trigger-set adds one commitment per trigger image, the root its labels
  and query order derive from, and the beacon).

Only the current format is read: older formats bound less (format 1 held no key tensors, so a format-1
commitment made for one TAFA key opened any other; format 2 did not bind the creation time).

The nonce (32 bytes) is derived from the key's seed and method, so the same seed gives the same
commitment; it hides the committed content only as long as the seed is secret (use a large random seed
for a real key). `declared` records the owner's declared verifier parameters for information only: the
verifier always sets its own (see `modelseal.validate`), and a check reports where they differ.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from .errors import KeyFormatError, KeyIntegrityError
from .keys import Key
from .safeio import read_json, write_atomic
from .tensorfile import tensor_bytes

TYPE = "modelseal-commitment"
FORMAT = 3
HASH = "sha256(nonce[32] || JSON [name, dtype, shape, created] || tensor bytes little-endian C-order)"
SECRET_PARAMS = ("seed",)
MAX_BYTES = 64 * 1024 * 1024


def nonce_for(method: str, seed: Any) -> bytes:
    """The 32-byte commitment nonce of a `method` key made with `seed` (also the root secret that methods
    derive their secret projections from, e.g. DeepMarks' X and U)."""
    return hashlib.sha256(b"modelseal-commitment-nonce\0" + method.encode() + b"\0"
                          + json.dumps(seed).encode()).digest()


def nonce_of(key: Key) -> bytes:
    """The 32-byte commitment nonce of a key, derived from its seed and method."""
    return nonce_for(key.method, key.params.get("seed", 0))


def tensor_digest(nonce: bytes, name: str, t: torch.Tensor, created: str) -> str:
    """The digest that binds one key tensor, and the key's creation time, to the commitment."""
    h = hashlib.sha256()
    h.update(nonce)
    h.update(json.dumps([name, str(t.dtype), list(t.shape), created]).encode())
    h.update(tensor_bytes(t))
    return h.hexdigest()


def params_digest(nonce: bytes, params: dict[str, Any], created: str) -> str:
    h = hashlib.sha256()
    h.update(nonce)
    h.update(json.dumps({"params": params, "created": created}, sort_keys=True, separators=(",", ":")).encode())
    return h.hexdigest()


def public_params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k not in SECRET_PARAMS}


def make(key: Key, declared: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The public commitment of `key` (a JSON-able dict)."""
    nonce = nonce_of(key)
    out = {"type": TYPE, "format": FORMAT, "method": key.method, "signature": dict(key.signature),
           "created": key.created, "hash": HASH, "params": public_params(key.params),
           "params_digest": params_digest(nonce, key.params, key.created),
           "tensors": {name: tensor_digest(nonce, name, t, key.created) for name, t in sorted(key.tensors.items())},
           "declared": dict(declared or {})}
    out.update(extra or {})
    normal: dict[str, Any] = json.loads(json.dumps(out, default=str))
    return normal


def differences(key: Key, public: dict[str, Any]) -> list[str]:
    """What differs between `key` and the commitment `public` (empty when the key opens it)."""
    validate(public, "commitment")
    out: list[str] = []
    if public["method"] != key.method:
        return [f"method: committed '{public['method']}', the key is '{key.method}'"]
    for field in ("input_shape", "output_size", "model_sha256"):
        if public["signature"].get(field) != key.signature.get(field):
            out.append(f"signature.{field}: committed {public['signature'].get(field)!r}, "
                       f"the key has {key.signature.get(field)!r}")
    if public["created"] != key.created:
        out.append(f"created: committed {public['created']!r}, the key says {key.created!r}")
    nonce = nonce_of(key)
    shown = public.get("params", {})
    mine = public_params(key.params)
    for name in sorted(set(shown) | set(mine)):
        if shown.get(name, "<absent>") != json.loads(json.dumps(mine.get(name, "<absent>"), default=str)):
            out.append(f"params.{name}: committed {shown.get(name, '<absent>')!r}, the key has "
                       f"{mine.get(name, '<absent>')!r}")
    if params_digest(nonce, key.params, key.created) != public["params_digest"] and not any(
            d.startswith(("params.", "created")) for d in out):
        out.append("params: a secret parameter (the seed) differs from the committed one")
    com = public["tensors"]
    for name in sorted(set(com) | set(key.tensors)):
        if name not in key.tensors:
            out.append(f"tensor '{name}': committed but missing from the key")
        elif name not in com:
            out.append(f"tensor '{name}': in the key but not committed")
        elif tensor_digest(nonce, name, key.tensors[name], key.created) != com[name]:
            out.append(f"tensor '{name}': its content differs from the committed one")
    return out


def check_tensors(opened: dict[str, torch.Tensor], nonce: bytes, public: dict[str, Any]) -> None:
    """Every opened tensor must match its committed digest (for evidence files)."""
    com = public.get("tensors")
    if not isinstance(com, dict):
        raise KeyIntegrityError("the commitment holds no tensor digests; it cannot check this")
    for name, t in opened.items():
        if name not in com:
            raise KeyIntegrityError(f"opened tensor '{name}' was never committed")
        if tensor_digest(nonce, name, t, public["created"]) != com[name]:
            raise KeyIntegrityError(f"opened tensor '{name}' does not match its commitment")


# ---------------------------------------------------------------------------------------------- files
def validate(public: Any, source: str) -> None:
    def bad(what: str) -> KeyFormatError:
        return KeyFormatError(f"{source} is not a modelseal commitment: {what}")

    if not isinstance(public, dict):
        raise bad("expected a JSON object")
    if public.get("type") != TYPE:
        raise bad(f"'type' must be '{TYPE}'")
    fmt = public.get("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        raise bad("'format' must be a positive integer")
    if fmt > FORMAT:
        raise KeyFormatError(f"{source} has commitment format {fmt}, newer than this modelseal reads ({FORMAT}); "
                             "upgrade modelseal")
    if fmt < FORMAT:
        # older formats bound less (format 1 no key tensors, format 2 no creation time): accepting them would
        # let a commitment written for one key open another
        raise KeyFormatError(f"{source} has commitment format {fmt}, which binds less than format {FORMAT} and is "
                             "no longer accepted; write it again with `modelseal commit KEY --out FILE`")
    if not isinstance(public.get("method"), str):
        raise bad("'method' must be a string")
    sig = public.get("signature")
    if not isinstance(sig, dict):
        raise bad("'signature' must be an object")
    if not isinstance(public.get("created"), str):
        raise bad("'created' must be a string")
    if not isinstance(public.get("params"), dict) or not isinstance(public.get("params_digest"), str):
        raise bad("'params' and 'params_digest' are required")
    tens = public.get("tensors")
    if not isinstance(tens, dict) or not all(_is_hex(v) for v in tens.values()):
        raise bad("'tensors' must map names to SHA-256 hex digests")
    com = public.get("commitments")
    if com is not None:
        if not isinstance(com, list) or not com or not all(_is_hex(c) for c in com):
            raise bad("'commitments' must be a non-empty list of SHA-256 hex digests")


def _is_hex(c: Any) -> bool:
    return isinstance(c, str) and len(c) == 64 and all(ch in "0123456789abcdef" for ch in c)


def dumps(public: dict[str, Any]) -> str:
    """The text of a commitment file (validated first)."""
    validate(public, "commitment")
    return json.dumps(public, indent=1, sort_keys=True) + "\n"


def save(public: dict[str, Any], path: str | os.PathLike[str], force: bool = False) -> Path:
    return write_atomic(path, dumps(public), force)


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    public: dict[str, Any] = read_json(path, KeyFormatError, "commitment", MAX_BYTES)
    validate(public, str(path))
    return public
