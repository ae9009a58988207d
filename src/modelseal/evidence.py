"""Evidence files: the transcript of a verdict that a third party re-checks without the model or the key.

`write(path, verdict, key, suspect)` records the suspect's identity (SHA-256 of its file or tensors, or the
URL and the model metadata it served), the verifier's parameters, the secret part of the key needed to
recompute the statistic (opened: for trigger-set only the asked triggers, each opening its own
commitment; for the other methods the committed key tensors and the commitment nonce), every query input
(the opened inputs) and every answer, the statistic, the p-value, and the library version.

`check(path, commitment)` re-opens the secret part against the public commitment, recomputes the statistic
and p-value from the transcript alone (through the method's `recheck`) and says whether they agree with
what the file claims. A changed answer, query, opened tensor or parameter changes the recomputation or
fails to open the commitment, and is reported.

Deviation: trigger-set asks its triggers in an order derived from the secret seed; the evidence shows which
triggers were asked but a third party cannot re-derive that order without the seed.
"""

from __future__ import annotations

import base64
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import commitment as _commitment
from . import methods
from ._version import __version__
from .errors import KeyFormatError, KeyIntegrityError, ModelSealError
from .keys import Key
from .tensorfile import write_atomic
from .verdict import Verdict, jsonable

TYPE = "modelseal-evidence"
FORMAT = 1
MAX_BYTES = 512 * 1024 * 1024
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "int64": torch.int64, "uint8": torch.uint8,
           "int32": torch.int32}


def _enc(t: torch.Tensor) -> dict[str, Any]:
    t = t.detach().cpu().contiguous()
    name = str(t.dtype).replace("torch.", "")
    if name not in _DTYPES:
        t, name = t.float(), "float32"
    return {"dtype": name, "shape": list(t.shape), "data": base64.b64encode(t.numpy().tobytes()).decode()}


def _dec(d: Any, where: str) -> torch.Tensor:
    if not isinstance(d, dict) or d.get("dtype") not in _DTYPES or not isinstance(d.get("shape"), list) \
            or not isinstance(d.get("data"), str):
        raise KeyFormatError(f"evidence: {where} is not an encoded tensor")
    shape = d["shape"]
    if len(shape) > 8 or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= 10**9
                                 for s in shape):
        raise KeyFormatError(f"evidence: {where} has a bad shape")
    try:
        raw = base64.b64decode(d["data"], validate=True)
    except ValueError:
        raise KeyFormatError(f"evidence: {where} is not valid base64") from None
    dt = _DTYPES[d["dtype"]]
    itemsize = torch.empty(0, dtype=dt).element_size()
    if len(raw) != math.prod(shape) * itemsize:
        raise KeyFormatError(f"evidence: {where} holds {len(raw)} bytes, not what its shape says")
    arr = np.frombuffer(raw, dtype=str(dt).replace("torch.", "")).reshape(shape)
    return torch.from_numpy(arr.copy())


def _enc_value(v: Any) -> Any:
    return _enc(v) if isinstance(v, torch.Tensor) else jsonable(v)


def make(verdict: Verdict, key: Key, suspect: Any) -> dict[str, Any]:
    """The evidence of `verdict` (judged by `key` on `suspect`) as a JSON-able dict."""
    mi = methods.info(key.method)
    cls = mi.cls
    if not getattr(cls, "recheck", None):
        raise ModelSealError(f"'{key.method}' verdicts cannot be re-checked, so no evidence file is written")
    if verdict.transcript is None:
        raise ModelSealError("this verdict holds no transcript (it was not made by verify); no evidence")
    tr = verdict.transcript
    if getattr(cls, "evidence_open", None):
        opened = cls.evidence_open(key, tr)
        nonce = None
    else:
        opened = dict(key.tensors)
        nonce = _commitment.nonce_of(key)
    result = {"score": verdict.score, "p_value": verdict.p_value, "owned": verdict.owned,
              "alpha": verdict.alpha, "judged": verdict.judged, "queries": verdict.queries}
    if verdict.accused is not None:
        result["accused"] = list(verdict.accused)
    return {"type": TYPE, "format": FORMAT, "modelseal_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "method": key.method,
            "suspect": suspect.identity(), "commitment": methods.commit(key),
            "nonce": nonce.hex() if nonce is not None else None,
            "opened": {k: _enc(v) for k, v in opened.items()},
            "transcript": {k: _enc_value(v) for k, v in tr.items()},
            "result": jsonable(result)}


def write(path: str | os.PathLike, verdict: Verdict, key: Key, suspect: Any, force: bool = False) -> Path:
    """Write the evidence file of a verdict (refuses to overwrite without force)."""
    return write_atomic(path, json.dumps(make(verdict, key, suspect), separators=(",", ":")) + "\n", force)


def load(path: str | os.PathLike) -> dict[str, Any]:
    ev = _commitment.read_json_file(path, "evidence file", MAX_BYTES)
    _validate(ev, str(path))
    return ev


def _validate(ev: Any, source: str) -> None:
    def bad(what: str) -> KeyFormatError:
        return KeyFormatError(f"{source} is not a modelseal evidence file: {what}")

    if not isinstance(ev, dict) or ev.get("type") != TYPE:
        raise bad(f"'type' must be '{TYPE}'")
    if ev.get("format") != FORMAT:
        raise bad(f"unsupported format {ev.get('format')!r} (this modelseal reads {FORMAT})")
    for field, kind in (("method", str), ("opened", dict), ("transcript", dict), ("result", dict),
                        ("commitment", dict), ("suspect", dict)):
        if not isinstance(ev.get(field), kind):
            raise bad(f"'{field}' must be a {kind.__name__}")
    if not isinstance(ev["transcript"].get("verifier"), dict):
        raise bad("the transcript lacks the verifier's parameters")
    _commitment.validate(ev["commitment"], f"{source} (its commitment)")


def check(evidence: str | os.PathLike | dict[str, Any], public: str | os.PathLike | dict[str, Any]
          ) -> dict[str, Any]:
    """Re-check an evidence file against the owner's public commitment. Returns a report with `agrees`
    (True when the opened secrets open the commitment and the recomputed statistic, p-value and decision
    equal the recorded ones) and `problems` (what failed)."""
    ev = evidence if isinstance(evidence, dict) else load(evidence)
    if isinstance(evidence, dict):
        _validate(ev, "evidence")
    pub = public if isinstance(public, dict) else _commitment.load(public)  # load validates a file
    if isinstance(public, dict):
        _commitment.validate(pub, "commitment")
    problems: list[str] = []
    method = ev["method"]
    cls = methods.info(method).cls
    if pub["method"] != method:
        raise KeyIntegrityError(f"the commitment is for '{pub['method']}', the evidence for '{method}'")
    if not getattr(cls, "recheck", None):
        raise ModelSealError(f"'{method}' verdicts cannot be re-checked")
    opened = {k: _dec(v, f"opened tensor '{k}'") for k, v in ev["opened"].items()}
    try:
        if getattr(cls, "evidence_check", None):
            cls.evidence_check(opened, pub)
        else:
            nonce_hex = ev.get("nonce")
            if not isinstance(nonce_hex, str) or len(nonce_hex) != 64:
                raise KeyIntegrityError("the evidence does not open the commitment nonce")
            _commitment.check_tensors(opened, bytes.fromhex(nonce_hex), pub)
            missing = sorted(set(pub.get("tensors", {})) - set(opened))
            if missing:
                raise KeyIntegrityError(f"the evidence does not open the committed tensor(s) {', '.join(missing)}")
    except KeyIntegrityError as e:
        problems.append(str(e))
    tr = dict(ev["transcript"])
    if isinstance(tr.get("answers"), dict):
        tr["answers"] = _dec(tr["answers"], "answers")
    result = ev["result"]
    verifier = tr["verifier"]
    recomputed: dict[str, Any] = {}
    if verifier.get("alpha") != result.get("alpha"):
        problems.append(f"the verifier's alpha ({verifier.get('alpha')!r}) differs from the verdict's "
                        f"({result.get('alpha')!r})")
    try:
        recomputed = cls.recheck(opened, tr, pub)
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as e:
        problems.append(f"the transcript cannot be replayed: {type(e).__name__}: {e}")
    if recomputed:
        for field in ("score", "p_value"):
            a, b = recomputed.get(field), result.get(field)
            if not (isinstance(b, (int, float)) and math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)):
                problems.append(f"recomputed {field} {a!r} differs from the recorded {b!r}")
        if bool(recomputed.get("owned")) != bool(result.get("owned")):
            problems.append(f"recomputed decision owned={recomputed.get('owned')} differs from the recorded "
                            f"owned={result.get('owned')}")
        if "accused" in recomputed and list(recomputed["accused"]) != list(result.get("accused", [])):
            problems.append(f"recomputed accused {recomputed['accused']} differ from the recorded "
                            f"{result.get('accused')}")
    return {"agrees": not problems, "method": method, "problems": problems,
            "recorded": result, "recomputed": jsonable(recomputed), "suspect": ev["suspect"],
            "verifier": verifier, "modelseal_version": ev.get("modelseal_version")}
