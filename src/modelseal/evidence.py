"""Evidence files: the transcript of a verdict that a third party re-checks without the model or the key.

`write(path, verdict, key, suspect)` records the suspect's identity (SHA-256 of its file or tensors, or the
URL and the model metadata it served), the verifier's parameters, the secret part of the key needed to
recompute the statistic (opened: for trigger-set only the asked triggers, each opening its own
commitment; for the other methods the committed key tensors and the commitment nonce), every query input
(the opened inputs) and every answer, the statistic, the p-value, and the library version.

`check(path, commitment, rule, suspect)` re-opens the secret part against the public commitment, checks
that the transcript is what verify records (trigger-set: exactly the prefix of the query order the
commitment fixes, so no trigger can be skipped, repeated or reordered), recomputes the statistic and
p-value from the transcript (through the method's `recheck`) and judges the same answers under the
*checker's* rule (alpha and every test parameter from the checker, defaults = verify's; the file's values
are only compared). What it proves: the arithmetic, the openings and the order. What it does not prove
without `suspect`: which model gave the answers — with `suspect`, every opened input is asked again and
the answers must be the recorded ones.
"""

from __future__ import annotations

import base64
import json
import math
import os
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from . import commitment as _commitment
from . import methods
from ._version import __version__
from .errors import KeyFormatError, KeyIntegrityError, ModelSealError, first_line
from .keys import Key
from .safeio import read_json, write_atomic
from .verdict import Verdict, jsonable

TYPE = "modelseal-evidence"
FORMAT = 2
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
    if not cls.writes_evidence():
        raise ModelSealError(f"'{key.method}' verdicts cannot be re-checked, so no evidence file is written")
    if verdict.transcript is None:
        raise ModelSealError("this verdict holds no transcript (it was not made by verify); no evidence")
    tr = verdict.transcript
    opened = cls.evidence_open(key, tr)
    nonce = None
    if opened is None:  # the default: every key tensor, opened with the commitment's nonce
        opened = dict(key.tensors)
        nonce = _commitment.nonce_of(key)
    result: dict[str, Any] = {"score": verdict.score, "p_value": verdict.p_value, "owned": verdict.owned,
              "alpha": verdict.alpha, "judged": verdict.judged, "queries": verdict.queries}
    if verdict.accused is not None:
        result["accused"] = list(verdict.accused)
    if isinstance(verdict.details.get("relatedness"), str):
        result["relatedness"] = verdict.details["relatedness"]
    return {"type": TYPE, "format": FORMAT, "modelseal_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "method": key.method,
            "suspect": suspect.identity(), "commitment": methods.commit(key),
            "nonce": nonce.hex() if nonce is not None else None,
            "opened": {k: _enc(v) for k, v in opened.items()},
            "transcript": {k: _enc_value(v) for k, v in tr.items()},
            "result": jsonable(result)}


def write(path: str | os.PathLike[str], verdict: Verdict, key: Key, suspect: Any, force: bool = False) -> Path:
    """Write the evidence file of a verdict (refuses to overwrite without force)."""
    return write_atomic(path, json.dumps(make(verdict, key, suspect), separators=(",", ":")) + "\n", force)


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    ev: dict[str, Any] = read_json(path, KeyFormatError, "evidence file", MAX_BYTES)
    _validate(ev, str(path))
    return ev


def _validate(ev: Any, source: str) -> None:
    def bad(what: str) -> KeyFormatError:
        return KeyFormatError(f"{source} is not a modelseal evidence file: {what}")

    if not isinstance(ev, dict) or ev.get("type") != TYPE:
        raise bad(f"'type' must be '{TYPE}'")
    if ev.get("format") != FORMAT:
        raise bad(f"unsupported format {ev.get('format')!r} (this modelseal reads {FORMAT}; older evidence "
                  "recorded less than a checker needs: verify again)")
    for field, kind in (("method", str), ("opened", dict), ("transcript", dict), ("result", dict),
                        ("commitment", dict), ("suspect", dict)):
        if not isinstance(ev.get(field), kind):
            raise bad(f"'{field}' must be a {kind.__name__}")
    if not isinstance(ev["transcript"].get("verifier"), dict):
        raise bad("the transcript lacks the verifier's parameters")
    _commitment.validate(ev["commitment"], f"{source} (its commitment)")


OUTCOMES = {"proven": 0, "does-not-hold": 1, "time-not-proven": 3, "order-not-proven": 4}


def check(evidence: str | os.PathLike[str] | dict[str, Any], public: str | os.PathLike[str] | dict[str, Any],
          rule: dict[str, Any] | None = None, suspect: Any = None, *, timestamp: Any = None,
          tsa_certs: Any = None, suspect_since: Any = None) -> dict[str, Any]:
    """Re-check an evidence file against the owner's public commitment, under the checker's own rule.

    `rule` holds the checker's verifier parameters (alpha and the method's test parameters; every one not
    given takes `verify`'s default), validated as `verify` validates them — the file never sets them. The
    opened secrets must open the commitment, the transcript must be what verify records (for trigger-set:
    the committed order's prefix, no trigger skipped or repeated), the recorded statistic must be what the
    transcript gives under the recorded parameters, and the claimed decision must hold under the checker's
    rule. With `suspect` (a Suspect, module, path or URL) the suspect is asked the opened inputs again and
    every answer must equal the recorded one; without it, nothing shows which model gave the answers.

    Time: `timestamp` (an RFC 3161 token over the commitment; default PUBLIC.tsr beside a commitment path),
    verified offline against `tsa_certs` (the checker's trusted TSA certificates), proves when the commitment
    existed; `suspect_since` (a date or datetime: when the suspect was first seen) must come after it. The
    claim holds (`outcome` "proven") only when the answers hold, the time is proven and precedes
    `suspect_since`; otherwise `outcome` is "does-not-hold", "time-not-proven" (the answers hold, but nothing
    shows the key existed before the suspect: a key ground after seeing it would look the same) or
    "order-not-proven" (stamped, but not before `suspect_since`, or no `suspect_since` given). `OUTCOMES` maps
    each to `modelseal check`'s exit code.

    Returns a report: `agrees` (the answers, openings and arithmetic hold), `outcome`, `time`, `problems`,
    `recorded`, `recomputed` (under the recorded parameters), `checker` (the verdict under the checker's rule),
    `rule`, and `not_proved` (what this check cannot show)."""
    from . import timestamp as _timestamp

    ev = evidence if isinstance(evidence, dict) else load(evidence)
    if isinstance(evidence, dict):
        _validate(ev, "evidence")
    pub = public if isinstance(public, dict) else _commitment.load(public)  # load validates a file
    if isinstance(public, dict):
        _commitment.validate(pub, "commitment")
    problems: list[str] = []
    method = ev["method"]
    cls: Any = methods.info(method).cls
    if pub["method"] != method:
        raise KeyIntegrityError(f"the commitment is for '{pub['method']}', the evidence for '{method}'")
    if not cls.writes_evidence():
        raise ModelSealError(f"'{method}' verdicts cannot be re-checked")
    checker_rule = _checker_rule(cls, rule)
    opened = {k: _dec(v, f"opened tensor '{k}'") for k, v in ev["opened"].items()}
    try:
        if not cls.evidence_check(opened, pub):
            nonce_hex = ev.get("nonce")
            if not isinstance(nonce_hex, str) or len(nonce_hex) != 64:
                raise KeyIntegrityError("the evidence does not open the commitment nonce")
            try:
                nonce = bytes.fromhex(nonce_hex)
            except ValueError:
                raise KeyIntegrityError("the evidence's commitment nonce is not hex") from None
            _commitment.check_tensors(opened, nonce, pub)
            missing = sorted(set(pub.get("tensors", {})) - set(opened))
            if missing:
                raise KeyIntegrityError(f"the evidence does not open the committed tensor(s) {', '.join(missing)}")
            problems += cls.check_opened(opened, nonce, pub)
    except KeyIntegrityError as e:
        problems.append(str(e))
    tr = dict(ev["transcript"])
    if isinstance(tr.get("answers"), dict):
        tr["answers"] = _dec(tr["answers"], "answers")
    result = ev["result"]
    verifier = tr["verifier"]
    recomputed: dict[str, Any] = {}
    mine: dict[str, Any] = {}
    if verifier.get("alpha") != result.get("alpha"):
        problems.append(f"the verifier's alpha ({verifier.get('alpha')!r}) differs from the verdict's "
                        f"({result.get('alpha')!r})")
    replayable = (KeyError, ValueError, TypeError, IndexError, RuntimeError, ModelSealError)
    try:
        recomputed = cls.recheck(opened, tr, pub)
    except replayable as e:
        problems.append(f"the transcript is not one verify records: {first_line(e)}")
    if recomputed:
        for field in ("score", "p_value"):
            a, b = cast(Any, recomputed.get(field)), result.get(field)
            if not (isinstance(b, (int, float)) and math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)):
                problems.append(f"recomputed {field} {a!r} differs from the recorded {b!r}")
        if bool(recomputed.get("owned")) != bool(result.get("owned")):
            problems.append(f"recomputed decision owned={recomputed.get('owned')} differs from the recorded "
                            f"owned={result.get('owned')}")
        if "accused" in recomputed and list(recomputed["accused"]) != list(result.get("accused", [])):
            problems.append(f"recomputed accused {recomputed['accused']} differ from the recorded "
                            f"{result.get('accused')}")
        try:
            mine = cls.recheck(opened, tr, pub, rule=checker_rule)
        except replayable as e:
            problems.append(f"the transcript cannot be judged under the checker's rule: {first_line(e)}")
    if mine:
        if bool(result.get("owned")) and not bool(mine.get("owned")):
            problems.append(f"the evidence claims OWNED (alpha {result.get('alpha')!r}), but under the checker's "
                            f"rule ({rule_text(checker_rule)}) it is not owned: p = {mine.get('p_value'):.3g}")
        if "accused" in mine and sorted(result.get("accused", [])) != sorted(mine["accused"]):
            problems.append(f"the evidence accuses {result.get('accused')}, the checker's rule "
                            f"{mine['accused']}")
    not_proved = list(cls.evidence_not_proved)
    if methods.info(method).family == "fingerprint" and (mine or recomputed).get("owned"):
        from .verdict import RELATED

        not_proved.append(RELATED)
    if suspect is None:
        not_proved.insert(0, "which model gave these answers: this checked the arithmetic from the transcript and "
                             "the commitment; pass the suspect (check --suspect) to re-query it")
    else:
        problems += _requery(cls, suspect, opened, tr, pub, ev["suspect"])
    if timestamp is None and not isinstance(public, dict):
        beside = _timestamp.token_path(public)
        timestamp = beside if beside.is_file() else None
    time = _timestamp.status(pub, timestamp, _timestamp.as_certs(tsa_certs))
    since = _timestamp.parse_since(suspect_since) if isinstance(suspect_since, str) else suspect_since
    order = _order(time, since)
    outcome = ("does-not-hold" if problems else "time-not-proven" if not time["proven"]
               else "proven" if order["before"] else "order-not-proven")
    return {"agrees": not problems, "outcome": outcome, "time": time, "order": order,
            "method": method, "problems": problems,
            "recorded": result, "recomputed": jsonable(recomputed), "checker": jsonable(mine),
            "rule": jsonable(checker_rule), "not_proved": not_proved, "suspect": ev["suspect"],
            "verifier": verifier, "modelseal_version": ev.get("modelseal_version"),
            "suspect_requeried": suspect is not None}


def _order(time: dict[str, Any], since: Any) -> dict[str, Any]:
    """Whether the proven time precedes the time the suspect was first seen, with its one line."""
    import datetime as _dt

    if since is not None and not isinstance(since, _dt.datetime):
        raise ModelSealError(f"suspect_since must be a datetime or an ISO 8601 text, not {type(since).__name__}")
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=_dt.timezone.utc)
    shown = since.isoformat() if since is not None else None
    if not time.get("proven"):
        return {"before": False, "suspect_since": shown,
                "line": "order not proven: no trusted time shows the key existed before the suspect"}
    stamped = _dt.datetime.fromisoformat(time["time"])
    if since is None:
        return {"before": False, "suspect_since": None,
                "line": "order not proven: give the time the suspect was first seen (--suspect-since) to compare"}
    if stamped < since:
        return {"before": True, "suspect_since": shown,
                "line": f"order: the commitment existed by {stamped.isoformat()}, before the suspect was first "
                        f"seen ({shown})"}
    return {"before": False, "suspect_since": shown,
            "line": f"order not proven: the commitment was stamped at {stamped.isoformat()}, not before the "
                    f"suspect was first seen ({shown}); the key could have been made for the suspect"}


def _checker_rule(cls: Any, rule: dict[str, Any] | None) -> dict[str, Any]:
    """The checker's rule: verify's defaults, overridden by what the checker gave; validated."""
    given = dict(rule or {})
    allowed = {k for k, s in cls.verify_params.items() if s.kind != "models"}
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ModelSealError(f"{cls.name} checks take the parameter(s) {', '.join(sorted(allowed))}, not "
                             f"{', '.join(unknown)}")
    merged = cls.rule(given)
    return {k: v for k, v in merged.items() if k in allowed}


def rule_text(rule: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v!r}" if not isinstance(v, float) else f"{k} {v:g}" for k, v in sorted(rule.items())
                     if v is not None)


def _requery(cls: Any, suspect: Any, opened: dict[str, torch.Tensor], tr: dict[str, Any], pub: dict[str, Any],
             recorded: dict[str, Any]) -> list[str]:
    """Ask the suspect the opened inputs again; what differs from the transcript."""
    from .suspect import as_suspect

    s = as_suspect(suspect)
    out: list[str] = []
    ident = s.identity()
    for field in ("sha256", "sha256_tensors"):
        if field in recorded and field in ident and recorded[field] != ident[field]:
            out.append(f"the evidence names a suspect with {field} {recorded[field][:16]}..., but the suspect given "
                       f"has {ident[field][:16]}...")
    got = cls.reanswer(s, opened, tr, pub)
    want = tr["answers"]
    if isinstance(want, torch.Tensor) or isinstance(got, torch.Tensor):
        a = torch.as_tensor(got).double().reshape(-1)
        b = torch.as_tensor(want).double().reshape(-1)
        if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max().clamp_min(1))):
            diff = float((a - b).abs().max()) if a.shape == b.shape else float("inf")
            out.append(f"re-queried, the suspect's answers differ from the recorded ones (largest difference "
                       f"{diff:.3g}): these answers did not come from this suspect")
    else:
        a, b = [int(x) for x in got], [int(x) for x in want]  # type: ignore[assignment]
        if a != b:
            first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            out.append(f"re-queried, the suspect answers {sum(x != y for x, y in zip(a, b, strict=False))} of "
                       f"{len(b)} recorded queries differently (first: query {first}): these answers did not come "
                       "from this suspect")
    return out
