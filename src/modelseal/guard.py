"""API watermark: a keyed change to a small fraction of a prediction API's answers, logged per client, so a
model trained on one client's answers can be found and the client named.

Szyller, Atli, Marchal, Asokan, "DAWN: Dynamic Adversarial Watermarking of Neural Networks" (ACM MM 2021).
A model stolen through an API keeps none of the owner's weights, so no weight or fingerprint test finds it
(measured on digits: 0 of 13 extraction students found at 1e-6 by any other method). DAWN changes the
answers of a keyed subset of queries; a student trained on the answers inherits the changed ones.

How modelseal does it:
- A `GuardKey` holds a 32-byte secret from the OS, the change rate r (default 0.5 %), the class count C and
  the quantisation step of the canonical input. Its public commitment is the SHA-256 of the secret and the
  parameters.
- Each input is put in a canonical form (clipped to the input box and rounded to `levels` steps per unit, so
  near-duplicates of one input get one decision) and HMAC-SHA256'd with the secret: the answer is changed iff
  the first 64 bits fall below r * 2^64, and the changed label is drawn by the next 128 bits uniformly from
  the C - 1 classes other than the model's own answer. The same input always gets the same answer. A label
  answer becomes the keyed label; a score answer gets the scores of its top class and the keyed label
  swapped (the served top-1 is the keyed label; the scores stay a valid distribution).
- Per client (the SHA-256 of its bearer token, never the token): every changed answer is appended, once per
  canonical input, to the client's log (JSON lines, float32 inputs in base64), each entry hash-chained to the
  previous (`hash = SHA-256(prev || canonical entry)`); the head is rewritten atomically after each append
  (`CLIENT.head.json`), so an owner can commit and timestamp it (`modelseal timestamp`).
- `verify(suspect, key, log)` re-derives every logged entry from the secret (an entry the key would not have
  changed, or with another keyed label, is refused), checks the chain (and the head, when given), asks the
  suspect the logged inputs and counts how often it answers the keyed label. Under the null (a model that
  never saw this client's changed answers) each match has probability at most 1/(C - 1): the keyed label is
  uniform over the classes other than the owner model's answer and independent of everything the suspect
  learned, so the p-value is the exact binomial tail P[Binom(n, 1/(C - 1)) >= matches].

Deviations from DAWN: the decision is keyed on a quantised canonical input (DAWN hashes the raw query), so
augmented near-duplicates cannot be voted away; the log is hash-chained per client; the p-value is exact
instead of DAWN's confidence bound; score outputs swap two scores instead of returning a label only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import stats, validate
from .errors import KeyFormatError, KeyIntegrityError, ModelSealError
from .keys import Key
from .safeio import read_file, write_atomic
from .verdict import DEFAULT_ALPHA, Verdict

METHOD = "api-guard"
DEFAULT_RATE = 0.005
DEFAULT_LEVELS = 64
MAX_LOG_BYTES = 256 * 1024 * 1024
MAX_INPUT_VALUES = 1_000_000
GENESIS = "0" * 64


@dataclass(frozen=True)
class GuardKey:
    """The guard's secret and rule: change rate, class count, input box and quantisation."""

    secret: bytes
    classes: int
    rate: float = DEFAULT_RATE
    levels: int = DEFAULT_LEVELS
    lo: float = 0.0
    hi: float = 1.0

    def __post_init__(self) -> None:
        if len(self.secret) != 32:
            raise KeyFormatError("a guard secret has 32 bytes")
        validate.number("classes", self.classes, 2, 1_000_000, integer=True)
        validate.number("rate", self.rate, 0, 0.5, lo_open=True)
        validate.number("levels", self.levels, 1, 1_000_000, integer=True)
        if not (np.isfinite(self.lo) and np.isfinite(self.hi) and self.hi > self.lo):
            raise ModelSealError(f"the guard's input box must be finite with lo < hi, got [{self.lo}, {self.hi}]")

    @classmethod
    def new(cls, classes: int, rate: float = DEFAULT_RATE, levels: int = DEFAULT_LEVELS,
            bounds: tuple[float, float] = (0.0, 1.0)) -> GuardKey:
        """A fresh key: the secret comes from the OS."""
        return cls(secrets.token_bytes(32), int(classes), float(rate), int(levels), float(bounds[0]),
                   float(bounds[1]))

    def params(self) -> dict[str, Any]:
        return {"classes": self.classes, "rate": self.rate, "levels": self.levels, "lo": self.lo, "hi": self.hi}

    def to_key(self) -> Key:
        import torch

        return Key(METHOD, params=self.params(), signature={"output_size": self.classes},
                   tensors={"secret": torch.frombuffer(bytearray(self.secret), dtype=torch.uint8).clone()})

    @classmethod
    def from_key(cls, key: Key) -> GuardKey:
        if key.method != METHOD:
            raise KeyFormatError(f"expected an {METHOD} key, got a '{key.method}' key")
        key.require(params=("classes", "rate", "levels", "lo", "hi"), tensors=("secret",))
        p = key.params
        return cls(bytes(key.tensors["secret"].numpy().tobytes()), int(p["classes"]), float(p["rate"]),
                   int(p["levels"]), float(p["lo"]), float(p["hi"]))

    def save(self, path: str | os.PathLike, force: bool = False) -> Path:
        return self.to_key().save(path, force=force)

    @classmethod
    def load(cls, path: str | os.PathLike) -> GuardKey:
        return cls.from_key(Key.load(path, method=METHOD))

    def commitment(self) -> dict[str, Any]:
        """The public part: the rule and the SHA-256 of the secret (safe to publish and timestamp)."""
        return {"type": "modelseal-guard-commitment", "method": METHOD, **self.params(),
                "secret_sha256": hashlib.sha256(b"modelseal-guard\0" + self.secret).hexdigest()}

    # -------------------------------------------------------------------------------------- the rule
    def canonical(self, x: np.ndarray) -> bytes:
        """One input in canonical form: clipped to the box, rounded to `levels` steps per unit, with its shape."""
        x = np.asarray(x, dtype=np.float64)
        q = np.rint((np.clip(x, self.lo, self.hi) - self.lo) * self.levels).astype("<i4")
        return json.dumps(list(x.shape)).encode() + b"\0" + q.tobytes()

    def _mac(self, tag: bytes, canon: bytes) -> bytes:
        return hmac.new(self.secret, tag + b"\0" + canon, hashlib.sha256).digest()

    def changes(self, canon: bytes) -> bool:
        return int.from_bytes(self._mac(b"decide", canon)[:8], "big") < int(self.rate * 2**64)

    def keyed_label(self, canon: bytes, answer: int) -> int:
        """Uniform over the classes other than `answer` (128 hash bits: bias below 2^-100)."""
        k = int.from_bytes(self._mac(b"label", canon)[:16], "big") % (self.classes - 1)
        return k if k < answer else k + 1


# ------------------------------------------------------------------------------------------ the log
def _entry_hash(prev: str, entry: dict[str, Any]) -> str:
    body = json.dumps({k: v for k, v in entry.items() if k != "hash"}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(bytes.fromhex(prev) + body.encode()).hexdigest()


def client_id(token: str | None) -> str:
    """A client's name in the logs: the SHA-256 of its bearer token (first 16 hex digits), never the token."""
    if not token:
        return "anonymous"
    return hashlib.sha256(b"modelseal-client\0" + token.encode()).hexdigest()[:16]


class Guard:
    """The guard a server runs: `answer(x, out, client) -> out'` changes the keyed answers and logs them."""

    def __init__(self, key: GuardKey, log_dir: str | os.PathLike, label_only: bool = True) -> None:
        self.key = key
        self.dir = Path(log_dir)
        if not self.dir.is_dir():
            raise ModelSealError(f"the guard's log folder {self.dir} does not exist; create it first")
        self.label_only = label_only
        self._lock = threading.Lock()
        self._heads: dict[str, tuple[str, int]] = {}
        self._seen: dict[str, set[str]] = {}
        self.changed = 0

    def log_path(self, client: str) -> Path:
        return self.dir / f"{client}.log.jsonl"

    def head_path(self, client: str) -> Path:
        return self.dir / f"{client}.head.json"

    def _state(self, client: str) -> tuple[str, int]:
        if client not in self._heads:
            path = self.log_path(client)
            entries = read_log(path) if path.exists() else []
            check_chain(entries)
            self._heads[client] = (entries[-1]["hash"], len(entries)) if entries else (GENESIS, 0)
            self._seen[client] = {e["canon"] for e in entries}
        return self._heads[client]

    def answer(self, x: np.ndarray, out: np.ndarray, client: str) -> np.ndarray:
        """The served answers: `out` (labels [n] or scores [n, C]) with the keyed ones changed and logged."""
        out = np.array(out, copy=True)
        labels = out.reshape(len(out), -1).argmax(1) if out.ndim > 1 else out.astype(np.int64)
        new: list[dict[str, Any]] = []
        for i in range(len(x)):
            canon = self.key.canonical(x[i])
            if not self.key.changes(canon):
                continue
            keyed = self.key.keyed_label(canon, int(labels[i]))
            if out.ndim > 1:
                row = out[i].reshape(-1)
                top = int(labels[i])
                row[top], row[keyed] = row[keyed], row[top]
                out[i] = row.reshape(out[i].shape)
            else:
                out[i] = keyed
            digest = hashlib.sha256(canon).hexdigest()
            new.append({"canon": digest, "label": keyed, "answer": int(labels[i]),
                        "x": base64.b64encode(np.ascontiguousarray(x[i], dtype="<f4").tobytes()).decode(),
                        "shape": list(np.asarray(x[i]).shape)})
        if new:
            with self._lock:
                self._append(client, new)
        return out

    def serve_hook(self, x: np.ndarray, out: np.ndarray, bearer: str | None) -> np.ndarray:
        """For `modelseal.suspect.serve.make_app(answer_hook=...)`: the client is named by its bearer token."""
        return self.answer(x, out, client_id(bearer))

    def _append(self, client: str, new: list[dict[str, Any]]) -> None:
        head, count = self._state(client)
        seen = self._seen[client]
        lines = []
        for e in new:
            if e["canon"] in seen:
                continue  # the same canonical input was logged before: it gets the same answer
            seen.add(e["canon"])
            e = {"i": count, "prev": head, **e}
            e["hash"] = head = _entry_hash(head, e)
            count += 1
            lines.append(json.dumps(e, sort_keys=True, separators=(",", ":")))
            self.changed += 1
        if not lines:
            return
        with open(self.log_path(client), "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        self._heads[client] = (head, count)
        write_atomic(self.head_path(client), json.dumps({"type": "modelseal-guard-head", "client": client,
                                                         "entries": count, "head": head}) + "\n", force=True)


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """A client's log, each line checked for its fields (KeyFormatError on a malformed one)."""
    raw = read_file(Path(path), KeyFormatError, "guard log", MAX_LOG_BYTES)
    out = []
    for n, line in enumerate(raw.decode("utf-8", errors="replace").splitlines()):
        if not line.strip():
            continue
        try:
            e = json.loads(line)
        except ValueError:
            raise KeyFormatError(f"{path}: line {n + 1} is not JSON") from None
        if not (isinstance(e, dict) and isinstance(e.get("i"), int) and isinstance(e.get("label"), int)
                and isinstance(e.get("x"), str) and isinstance(e.get("shape"), list)
                and all(isinstance(s, int) and 0 < s <= MAX_INPUT_VALUES for s in e["shape"])
                and isinstance(e.get("hash"), str) and isinstance(e.get("prev"), str)):
            raise KeyFormatError(f"{path}: line {n + 1} is not a guard log entry")
        out.append(e)
    return out


def check_chain(entries: list[dict[str, Any]], head: dict[str, Any] | None = None) -> None:
    """KeyIntegrityError unless the entries are the hash chain from the genesis, in order, ending at `head`."""
    prev = GENESIS
    for n, e in enumerate(entries):
        if e["i"] != n or e["prev"] != prev:
            raise KeyIntegrityError(f"guard log entry {n} is out of order or its predecessor was removed or edited")
        if _entry_hash(prev, e) != e["hash"]:
            raise KeyIntegrityError(f"guard log entry {n} was edited after it was logged (its hash differs)")
        prev = e["hash"]
    if head is not None:
        if head.get("head") != prev or head.get("entries") != len(entries):
            raise KeyIntegrityError(f"the guard log ends at entry {len(entries)} ({prev[:12]}...), but the committed "
                                    f"head is {head.get('entries')} entries ({str(head.get('head'))[:12]}...): "
                                    "entries were removed, added or reordered")


def _input(e: dict[str, Any]) -> np.ndarray:
    try:
        raw = base64.b64decode(e["x"], validate=True)
    except ValueError:
        raise KeyFormatError(f"guard log entry {e['i']}: its input is not base64") from None
    shape = tuple(e["shape"])
    if len(raw) != 4 * int(np.prod(shape)):
        raise KeyFormatError(f"guard log entry {e['i']}: its input does not have the shape it names")
    return np.frombuffer(raw, dtype="<f4").reshape(shape).copy()


def verify(suspect: Any, key: GuardKey | Key | str | os.PathLike, log: str | os.PathLike, *,
           head: dict[str, Any] | str | os.PathLike | None = None, alpha: float = DEFAULT_ALPHA) -> Verdict:
    """Judge whether `suspect` was trained on the answers logged for one client: exact binomial p-value of its
    matches with the keyed labels (null match rate at most 1/(C - 1))."""
    from .suspect import as_suspect

    alpha = validate.alpha(alpha)
    gk = key if isinstance(key, GuardKey) else GuardKey.from_key(key if isinstance(key, Key) else Key.load(key))
    entries = read_log(log)
    if isinstance(head, (str, os.PathLike)):
        from .safeio import read_json

        head = read_json(head, KeyFormatError, "guard head", 1 << 20)
    check_chain(entries, head if isinstance(head, dict) else None)
    if not entries:
        raise ModelSealError(f"{log} holds no changed answers: nothing to judge a suspect on")
    xs = np.stack([_input(e) for e in entries])
    for e, x in zip(entries, xs, strict=True):
        canon = gk.canonical(x)
        if not gk.changes(canon) or gk.keyed_label(canon, int(e.get("answer", -1))) != e["label"]:
            raise KeyIntegrityError(f"guard log entry {e['i']} is not one this key changed (its decision or keyed "
                                    "label does not follow from the secret): the log was forged or is another key's")
    import torch

    s = as_suspect(suspect)
    got = s.labels(torch.from_numpy(xs)).numpy().astype(np.int64)
    want = np.array([e["label"] for e in entries], dtype=np.int64)
    n, matches = len(entries), int((got == want).sum())
    p0 = 1.0 / (gk.classes - 1)
    p = float(stats.binomial_tail(matches, n, p0))
    client = Path(log).name.removesuffix(".log.jsonl")
    return Verdict(METHOD, owned=p <= alpha, score=matches / n, threshold=p0, p_value=p, alpha=alpha, queries=n,
                   details={"client": client, "entries": n, "matches": matches, "null_rate": p0,
                            "rule": "P[Binom(n, 1/(C-1)) >= matches]",
                            "time": {"proven": False, "line": "time not proven: commit and timestamp the "
                                     "client's log head (modelseal timestamp) to show when it was logged"}})


# ------------------------------------------------------------------------------ attacks aimed at the guard
class GuardedAPI(nn.Module):
    """A guarded prediction API as a module: softmax scores of `model`, changed and logged by `guard` for
    `client` (`modelseal.guard.Guard.answer`). For benchmarks and tests: a real server does the same
    through `make_app(answer_hook=guard.serve_hook)`."""

    def __init__(self, model: nn.Module, guard: Any, client: str) -> None:
        super().__init__()
        self.model, self.guard, self.client = model, guard, client

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            p = torch.softmax(self.model(x).float(), 1)
        return torch.from_numpy(self.guard.answer(x.detach().cpu().numpy(), p.cpu().numpy(), self.client))


ATTACKS: dict[str, dict[str, Any]] = {
    "knockoff": {},  # the baseline the guard is built to find
    "vote": {"copies_per_input": 5, "sigma": 0.05},
    "smooth-labels": {"smoothing": 0.3},
    "ensemble-distill": {},
    "adv-student": {"eps": 0.05, "steps": 1},
}


def attack_benchmark(data: Any, owner: nn.Module, other: nn.Module, *, rate: float, queries: int, alpha: float,
              epochs: int, archs: tuple[str, ...] = ("mlp", "cnn"), seed: int = 0, lr: float = 2e-3,
              label_only: bool = True) -> dict[str, Any]:
    """Each attack of ATTACKS run by its own client of a guarded `owner` (ensemble-distill: the guarded owner
    and the unguarded `other`), on `queries` inputs: the attacker and test splits topped up with small-noise
    variants; the guarded API answers labels (`label_only`, DAWN's setting) or scores. The baseline `knockoff`
    says whether students trained this long fit their answers well enough to be found at all. A student
    escapes when `guard.verify` does not find it at `alpha` on its client's log."""
    import tempfile

    from .attacks import get
    from .data import TensorData
    from .suspect import Suspect
    from .train import evaluate

    gen = torch.Generator().manual_seed(seed)
    pool = torch.cat([data.attacker.x, data.test.x])
    if queries > len(pool):
        base = pool[torch.randint(0, len(pool), (queries - len(pool),), generator=gen)]
        pool = torch.cat([pool, (base + 0.1 * torch.randn(base.shape, generator=gen)).clamp(0, 1)])
    attacker = TensorData(pool, torch.zeros(len(pool), dtype=torch.long), data.meta)
    key = GuardKey.new(data.meta.num_classes, rate=rate)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        guard = Guard(key, tmp)
        for name, kw in ATTACKS.items():
            for arch in archs:
                client = f"{name}-{arch}"
                api = Suspect(GuardedAPI(owner, guard, client), input_shape=tuple(data.meta.input_shape),
                              label_only=label_only)
                cls: Any = get(name)
                attack: Any = cls(queries=queries, student=arch, epochs=epochs, lr=lr, seed=seed, **kw)
                if name == "ensemble-distill":
                    run = attack.run_many([api, Suspect(other, input_shape=tuple(data.meta.input_shape))],
                                          attacker)
                else:
                    run = attack.run(api, attacker)
                student = run.model.eval()
                path = guard.log_path(client)
                row: dict[str, Any] = {"attack": name, "arch": arch, "params": kw,
                                       "cost": {k: (round(v, 2) if isinstance(v, float) else v)
                                                for k, v in run.cost.items()},
                                       "test_acc": evaluate(student, data.test)}
                if path.exists():
                    v = verify(student, key, path, alpha=alpha)
                    row.update(entries=v.details["entries"], matches=v.details["matches"], p=float(v.p_value),
                               found=bool(v.owned))
                else:
                    row.update(entries=0, matches=0, p=1.0, found=False)
                row["escapes"] = not row["found"]
                rows.append(row)
    beats = sorted({r["attack"] for r in rows if r["escapes"] and r["attack"] != "knockoff"})
    return {"rate": rate, "queries": queries, "epochs": epochs, "lr": lr, "label_only": label_only, "alpha": alpha,
            "owner_test_acc": evaluate(owner, data.test), "rows": rows, "beat_the_guard": beats,
            "baseline_knockoff_found": all(r["found"] for r in rows if r["attack"] == "knockoff"),
            "note": "escapes = the student was not found on its client's log at alpha; compare test_acc with the "
                    "owner's: an escape that costs the student its accuracy is a weaker one"}


__all__ = ["GuardKey", "Guard", "verify", "read_log", "check_chain", "client_id", "METHOD", "GuardedAPI",
           "attack_benchmark"]
