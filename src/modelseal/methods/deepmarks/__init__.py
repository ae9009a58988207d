"""DeepMarks: per-user fingerprints in the weights with BIBD anti-collusion codes, and colluder tracing.

Chen, Rouhani, Koushanfar, "DeepMarks: A Digital Fingerprinting Framework for Deep Neural Networks"
(2018, ICMR 2019).

Where modelseal deviates, and why:
- Each user's copy is the owner model *fine-tuned* with `CE + gamma ||X w - U b_j||^2` (the paper also
  trains from scratch), all users in shared passes (`_train_copies`): the layers the forward pass runs before
  the carrier keep the owner's weights and run once per batch for everyone, the carrier and the layers after
  it are stacked over users under `torch.func.vmap` (one Adam step for all; every user sees the same batch
  order; the model in eval mode). 31 users on the zoo CNN (mnist5k) cost 3.5 epochs of plain training of
  2,048 images, where one fine-tune per user cost about one each (benchmarks/scale.py). A copy keeps training (up
  to `max_epochs`) until it is traced to exactly its user with p <= 1e-12 (six orders of magnitude under
  the default alpha, a margin for attacks) and its code b~ reads back at correlation >= `min_fit`; a copy
  not traced at 1e-6 by then is refused with the numbers, never written as if it worked.
- More projection rows than the code length: `M = max(v, min(64, n // 2))` for a layer with n weights
  per output channel (the paper's U is M x v with M free). The decoder reads the code as `b~ = U^T X w`
  (v numbers) as in the paper, but the p-value is computed in all M dimensions of `X w`: with M = v the
  7-user code (v = 7) has only v - 2 = 5 degrees of freedom and an intact copy read back at correlation
  0.99 still has p ~ 2e-4 after the Bonferroni factor, so it could never be accused at 1e-6.
- Decoding is scale- and offset-free: rather than one fixed threshold on b~ (which pruning or fine-tuning
  shrink), every threshold between consecutive values of b~ is tried, the AND-ACC rule gives a candidate
  coalition at each, and the coalition whose mean code vector, mapped through U, correlates best with
  `X w` is kept.
- Accusations carry a p-value (the paper gives none): for a model independent of the secret projection X,
  `X w` is an isotropic Gaussian vector in R^M (X has i.i.d. N(0, 1) entries), so the Pearson correlation
  r between `X w` and any fixed vector `U c` has the exact null `r sqrt(M-2) / sqrt(1-r^2) ~ t(M-2)`.
  The coalition's p-value is that tail times the number of coalitions of at most k - 1 of the issued
  users (Bonferroni), so an independent model is accused with probability at most alpha. Users are
  accused only if p <= alpha. Code sizes whose p-value could not reach 1e-6 even at a fit of `min_fit` in M dimensions
  (a layer too small for the rows the code needs) are refused before training, with the reason.
- Pruned copies are judged: the key asks only what the projection needs, the carrier layer's inputs per
  output channel (w-bar is the mean over output channels, so a copy with fewer or permuted output
  neurons of the carrier is read as usual; permuting them leaves w-bar unchanged). A copy whose carrier
  has another number of inputs is refused (KeyMismatchError).
- Neuron permutation is undone before decoding (the paper does not consider it): the key holds P = 128
  probe inputs (uniform noise in the owner data's value range, drawn from the seed; no training data)
  and the owner's activations at the carrier layer's input on them (per input unit; a convolution's are
  averaged over space). At trace time the suspect runs the probes, its units are matched to the owner's
  by the correlation of their activations (Hungarian algorithm, scipy's `linear_sum_assignment`, ties
  broken towards the identity; skipped when every owner unit's best match is already itself), and w-bar
  is read in the owner's unit order. The matching uses neither X nor U, so for an independent model the
  aligned w-bar is still independent of X and the null above stays exact. Keys made before this carry no
  probes and are read unaligned.
- The default layer is the first hidden Linear layer with at least 2v inputs (else the last such
  convolution; else the same with at least v inputs), so the code's constraints leave the layer room: on our
  small CNN a Linear layer takes the code with less accuracy loss and faster than a convolution. Any layer
  with a weight matrix can be named (`layer=`).
- Every code size is checked against the model before any training (`plan`): a layer with at least M
  inputs per output channel must exist and the p-value must be able to reach the default alpha at a fit of
  `min_fit` in M rows; when the default M could not reach EMBED_P (a narrow layer), M grows to the fewest
  rows the layer holds that do. A refusal names the largest code the model takes (`largest_users`), computed from
  the model's layers and the given rows/layer/min_fit, never from a list.
- Copies fine-tune at lr 5e-4 (Adam), not 1e-3: on the digits CNN owner (0.911 test accuracy, 361 test
  images) seven plain 1-epoch fine-tunes at 1e-3 with no fingerprint already ranged 0.895-0.920, and the
  7-user copies' worst was -1.11 points; at 5e-4 the worst 7-user copy was 0.00 points (two runs).
- The secret projection X and the orthonormal U are not drawn freely: both derive (`derive_secrets`,
  SECRETS_RULE) from the key's commitment nonce, the code, the carrier layer and the SHA-256 of the owner
  model, and `trace`, `commit` and `check` recompute them and refuse a key whose X or U differs. Drawn freely,
  X could be *solved* after the fact: X plus a rank-1 correction makes any innocent model's w-bar decode to any
  coalition at p ~ 0 (the entries still look Gaussian). Now an owner can only draw new nonces, each a new
  key whose innocent p-value is uniform (benchmarks/grinding.py: about 470 draws a second on digits), and only a
  trusted timestamp older than the suspect shows a key was not drawn that way.
- Seeds of any size work: torch seeds are the given seed reduced mod 2**63 (the CLI draws 62-bit seeds;
  the per-user training seeds derived from them would overflow torch's 64-bit signed seed otherwise).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ... import commitment as _commitment
from ... import stats, validate
from ...data import as_tensors
from ...errors import KeyIntegrityError, KeyMismatchError, ModelError, ModelSealError
from ...keys import Key
from ...methods import register
from ...models import signature_of
from ...schema import batch_param, param, secret_seed_param
from ...suspect import Suspect, as_suspect
from ...tensorfile import state_sha256
from ...verdict import DEFAULT_ALPHA, Verdict
from ..base import PerUser
from .codes import and_acc_accuse, design_for_users

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
PROBES = 128  # probe inputs for neuron alignment
MAX_DEFAULT_ROWS = 64
MAX_USERS = 183  # PG(2, 13), the largest built-in design
EMBED_P = 1e-12  # a copy trains until its own p-value is this far under the default alpha (margin for attacks)
_SEED_MOD = 2**63  # torch seeds are signed 64-bit


def torch_seed(*parts: int) -> int:
    """A torch seed from any integers: `parts[0] * 100_003 + parts[1] + ...` reduced mod 2**63."""
    s = 0
    for p in parts:
        s = s * 100_003 + int(p)
    return s % _SEED_MOD


SECRETS_RULE_ID = "shake256-root-v1"
SECRETS_RULE = ("root = sha256('modelseal-deepmarks-secrets-v1' 0 || nonce[32] || JSON [users, v, k, rows, n, layer, "
                "architecture, model_sha256]); X (rows x n) = standard normals and U = Q of the QR decomposition "
                "(signs making diag R > 0) of a rows x v matrix of standard normals, the normals by Box-Muller "
                "from shake256(root || 'X' or 'U') read as 64-bit little-endian words (top 53 bits)")
_SECRETS_ATOL = 1e-5


def _normals(root: bytes, tag: bytes, count: int) -> np.ndarray:
    """`count` standard normals from the hash stream shake256(root || tag) (Box-Muller on 53-bit uniforms)."""
    pairs = (count + 1) // 2
    words = np.frombuffer(hashlib.shake_256(root + tag).digest(16 * pairs), dtype="<u8")
    u = (words >> np.uint64(11)).astype(np.float64) * 2.0**-53
    u1, u2 = 1.0 - u[0::2], u[1::2]
    r = np.sqrt(-2.0 * np.log(u1))
    z = np.empty(2 * pairs)
    z[0::2], z[1::2] = r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)
    return z[:count]


def secrets_spec(params: dict[str, Any], signature: dict[str, Any]) -> list[Any]:
    """What the projection is derived from besides the nonce: the code, the carrier layer and the model."""
    w = params["weight_shape"]
    return [int(params["users"]), int(params["v"]), int(params["k"]), int(params["rows"]), int(math.prod(w[1:])),
            str(params["layer"]), str(params.get("architecture", "")), str(signature.get("model_sha256", ""))]


def derive_secrets(nonce: bytes, spec: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The secret projection X (rows x n) and orthonormal U (rows x v) that a key's nonce and public
    parameters derive (SECRETS_RULE). Nothing about them is left to choose once the key is committed: an owner
    cannot solve X from an innocent model's weights, only draw new nonces (each a new commitment)."""
    _, v, _, m, n = (int(x) for x in spec[:5])
    root = hashlib.sha256(b"modelseal-deepmarks-secrets-v1\0" + nonce + json.dumps(spec).encode()).digest()
    x = _normals(root, b"X", m * n).reshape(m, n)
    q, r = np.linalg.qr(_normals(root, b"U", m * v).reshape(m, v))
    q = q * np.where(np.diag(r) < 0, -1.0, 1.0)
    return torch.from_numpy(x).float(), torch.from_numpy(np.ascontiguousarray(q)).float()


def _secrets_differ(x: torch.Tensor, u: torch.Tensor, params: dict[str, Any], signature: dict[str, Any],
                    nonce: bytes) -> str | None:
    if params.get("secrets_rule") != SECRETS_RULE_ID:
        return ("this deepmarks key's projection was not derived from its commitment (it was made by an older "
                "modelseal, or by hand), so an owner could have solved it from the suspect's weights; distribute "
                "the copies again")
    try:
        want_x, want_u = derive_secrets(nonce, secrets_spec(params, signature))
    except (KeyError, TypeError, ValueError) as e:
        return f"this deepmarks key's parameters do not derive a projection ({e})"
    for name, got, want in (("X", x, want_x), ("U", u, want_u)):
        if tuple(got.shape) != tuple(want.shape) or not torch.allclose(got.float(), want, atol=_SECRETS_ATOL):
            return (f"this deepmarks key's secret {name} is not the one its committed nonce and parameters derive: "
                    "a projection chosen after the fact (e.g. solved from a suspect's weights) proves nothing")
    return None


def check_secrets(key: Key) -> None:
    """KeyIntegrityError unless the key's X and U are the ones its seed's nonce and parameters derive."""
    bad = _secrets_differ(key.tensors["X"], key.tensors["U"], key.params, key.signature,
                          _commitment.nonce_of(key))
    if bad:
        raise KeyIntegrityError(bad)


def check_opened(opened: dict[str, torch.Tensor], nonce: bytes, public: dict[str, Any]) -> list[str]:
    """For `check`: the opened X and U must be the ones the opened nonce and the public parameters derive."""
    if "X" not in opened or "U" not in opened:
        return ["the evidence does not open the projection X and U"]
    bad = _secrets_differ(opened["X"], opened["U"], public["params"], public["signature"], nonce)
    return [bad] if bad else []


def default_rows(v: int, n: int) -> int:
    """Projection rows M for a code of length v on a layer with n weights per output channel (`plan` adds rows,
    up to n, when these could not reach the margin EMBED_P at a fit of `min_fit`)."""
    return max(v, min(MAX_DEFAULT_ROWS, n // 2))


def _channel_mean(weight: torch.Tensor) -> torch.Tensor:
    """w-bar: the layer's weight averaged over output channels (dim 0), flattened."""
    return weight.float().mean(0).reshape(-1)


def architecture_digest(model: nn.Module) -> str:
    """SHA-256 over the names and shapes of a model's parameters (its layout, not its values)."""
    layout = [[n, list(p.shape)] for n, p in model.named_parameters()]
    return hashlib.sha256(json.dumps(layout).encode()).hexdigest()


def default_layer(model: nn.Module, min_size: int) -> str:
    """The first hidden Linear layer with at least `min_size` inputs, else the last such convolution,
    else the last Linear layer: a hidden layer is changed by the fingerprint without hurting accuracy and
    is not what last-layer fine-tuning (FTLL/RTLL) retrains."""
    mods = list(model.named_modules())
    lins = [n for n, m in mods if isinstance(m, nn.Linear)]
    wide = [n for n, m in mods if isinstance(m, nn.Linear) and m.in_features >= min_size]
    hidden = [n for n in wide if n != lins[-1]]
    if hidden:
        return hidden[0]
    convs = [n for n, m in mods if isinstance(m, _CONV) and math.prod(m.weight.shape[1:]) >= min_size]
    if convs:
        return convs[-1]
    if wide:
        return wide[-1]
    raise ModelError(f"no Linear or convolution layer has at least {min_size} input weights per channel to "
                     "carry the fingerprint; name a larger layer with layer=... or use fewer users")


def _layer_weight(model: nn.Module, name: str, shape: list[int] | None = None,
                  err: type[ModelSealError] = KeyMismatchError) -> torch.Tensor:
    """The weight of layer `name`; with `shape` (the key's), only its inputs per output channel must agree:
    w-bar averages over output channels, so a copy with fewer (pruned) output neurons is still read."""
    mods = dict(model.named_modules())
    mod = mods.get(name)
    weight = getattr(mod, "weight", None) if mod is not None else None
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        have = [n for n, m in mods.items() if isinstance(getattr(m, "weight", None), torch.Tensor)
                and m.weight.dim() >= 2]
        what = ("use the key made for this model's architecture" if err is KeyMismatchError
                else "name one of these with layer=...")
        raise err(f"the model has no layer '{name}' with a weight matrix (layers: "
                  f"{', '.join(have[:12]) or 'none'}); {what}")
    if shape is not None and list(weight.shape[1:]) != list(shape[1:]):
        raise KeyMismatchError(
            f"layer '{name}' has weight shape {tuple(weight.shape)}: inputs {tuple(weight.shape[1:])} per output "
            f"channel, but the key was made for {tuple(shape[1:])} (weight shape {tuple(shape)}); the "
            "fingerprint is read from the layer's inputs, so use the key made for this model's architecture")
    return weight


def _unit_activations(model: nn.Module, layer: str, probes: torch.Tensor) -> torch.Tensor:
    """The input of `layer` on `probes`, one column per input unit (P x units; a convolution's input channels
    averaged over space), float64 on the CPU."""
    mod = dict(model.named_modules())[layer]
    got: list[torch.Tensor] = []
    hook = mod.register_forward_pre_hook(lambda m, inp: got.append(inp[0].detach()))
    p = next(model.parameters(), None)
    dev = p.device if p is not None else torch.device("cpu")
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(probes.to(dev))
    except Exception as e:  # noqa: BLE001 - a user model's forward may raise anything
        raise ModelError(f"the suspect's forward pass failed on the alignment probes: {e}") from None
    finally:
        hook.remove()
        model.train(was)
    if not got:
        raise ModelError(f"layer '{layer}' was not called in the suspect's forward pass")
    x = got[0].double().cpu()
    return x if x.dim() == 2 else x.flatten(2).mean(2)


def align_units(owner_acts: torch.Tensor, acts: torch.Tensor) -> tuple[np.ndarray, dict[str, Any]]:
    """For each owner unit i the suspect unit perm[i] whose activations on the probes correlate best, under a
    one-to-one matching (Hungarian; ties broken towards the identity). Returns perm and a summary."""
    from scipy.optimize import linear_sum_assignment

    def standard(a: torch.Tensor) -> np.ndarray:
        a = a.numpy() - a.numpy().mean(0, keepdims=True)
        sd = np.linalg.norm(a, axis=0, keepdims=True)
        return np.where(sd > 1e-12, a / np.where(sd > 1e-12, sd, 1.0), 0.0)

    corr = standard(owner_acts).T @ standard(acts)
    units = corr.shape[0]
    corr = corr + 1e-9 * np.eye(units)  # among equal matches (e.g. units silent on every probe) keep identity
    if (corr.argmax(1) == np.arange(units)).all():
        perm = np.arange(units)  # every row's maximum on the diagonal: the identity is optimal
    else:
        _, perm = linear_sum_assignment(-corr)
    match = corr[np.arange(units), perm]
    silent = int((np.abs(standard(acts)).sum(0) == 0).sum())
    return perm, {"units": int(units), "moved": int((perm != np.arange(units)).sum()),
                  "mean_match": float(match.mean()), "silent_units": silent}


def _log_p(p: float) -> float:
    return -math.log10(max(float(p), 1e-300))


def _p_value(r: float, m: int, users: int, k: int) -> float:
    """The coalition p-value at fit r in M = m dimensions: t tail times the coalitions of <= k - 1 users."""
    log_p = stats.correlation_log_tail(r, m) + stats.log_count_subsets(users, k - 1)
    return float(min(1.0, math.exp(min(0.0, log_p))))


def _project(key: Key, wbar: torch.Tensor) -> np.ndarray:
    """y = X w-bar (M numbers)."""
    x_proj = key.tensors["X"].double()
    if x_proj.shape[1] != wbar.numel():
        raise KeyMismatchError(f"the key projects {x_proj.shape[1]} weights per channel but the layer has "
                               f"{wbar.numel()}; use the key made for this model")
    return (x_proj @ wbar.double()).numpy()


def decide(y: np.ndarray, key: Key, alpha: float) -> dict[str, Any]:
    """AND-ACC decoding of the projection `y = X w-bar` and the coalition test."""
    codebook = key.tensors["codebook"].numpy().astype(np.int64)
    return decide_projection(y, key.tensors["U"].double().numpy(), codebook, key.params, alpha)


def decide_projection(y: np.ndarray, u: np.ndarray, codebook: np.ndarray, params: dict[str, Any],
                      alpha: float) -> dict[str, Any]:
    """Read the code b~ = U^T y, decode a coalition at every threshold (AND-ACC) and keep the one whose mean
    code through U correlates best with y; its p-value is stats.correlation_log_tail in M = len(y)
    dimensions with a Bonferroni factor over every coalition of at most k - 1 users."""
    codebook = np.asarray(codebook).astype(np.int64)
    users, v, k = codebook.shape[0], int(params["v"]), int(params["k"])
    m = int(y.shape[0])
    codes = 2.0 * codebook - 1.0
    targets = codes @ u.T  # users x M: U b_j
    b = u.T @ y
    scores = [stats.pearson(y, targets[j]) for j in range(users)]
    best = int(np.argmax(scores))
    single_p = min(1.0, users * math.exp(stats.correlation_log_tail(scores[best], m)))

    # Every threshold between consecutive values of b~ gives a decoding; keep the best-fitting coalition.
    order = np.sort(b)
    best_fit, cut, bits = -2.0, float("nan"), np.ones(v, dtype=np.int64)
    cands: list[int] = []
    for i in range(v - 1):
        t = 0.5 * (order[i] + order[i + 1])
        dec = (b >= t).astype(np.int64)
        acc = and_acc_accuse(dec, codebook)
        if not 1 <= len(acc) <= k - 1:
            continue
        r = stats.pearson(y, targets[acc].mean(0))
        if r > best_fit + 1e-12 or (abs(r - best_fit) <= 1e-12 and len(acc) < len(cands)):
            best_fit, cands, cut, bits = r, acc, float(t), dec
    p_value = _p_value(best_fit, m, users, k) if cands else 1.0
    accused = [int(j) for j in cands] if p_value <= alpha else []
    return {"accused": accused, "p_value": p_value, "p_values": {str(j): p_value for j in accused},
            "scores": scores, "best_user": best, "single_p_value": single_p,
            "fit": float(best_fit) if cands else 0.0, "candidates": [int(j) for j in cands],
            "bits": [int(x) for x in bits], "extracted": [float(x) for x in b], "cut": cut, "users": users,
            "rows": m, "max_colluders": k - 1, "layer": params["layer"],
            "norm": float(np.linalg.norm(b) / math.sqrt(v))}


def recheck(opened: dict[str, torch.Tensor], transcript: dict[str, Any], public: dict[str, Any],
            rule: dict[str, Any] | None = None) -> dict[str, Any]:
    """Recompute the trace from an evidence transcript (the suspect's channel means) and the opened key,
    under the recorded alpha (rule=None) or a checker's rule."""
    key = _opened_key(opened, public)
    given = rule if rule is not None else {"alpha": transcript["verifier"].get("alpha")}
    try:
        alpha = DeepMarks.rule(given)["alpha"]
    except ModelSealError as e:
        if rule is not None:
            raise
        raise ValueError(str(e)) from None  # the file's own alpha is malformed: the evidence is invalid
    res = decide(_project(key, torch.as_tensor(transcript["answers"]).double()), key, alpha)
    return {"score": _log_p(res["p_value"]), "p_value": res["p_value"], "owned": bool(res["accused"]),
            "accused": res["accused"]}


def _opened_key(opened: dict[str, torch.Tensor], public: dict[str, Any]) -> Key:
    return Key("deepmarks", params=public["params"], signature=public["signature"], tensors=opened,
               created=public["created"])


def reanswer(suspect: Suspect, opened: dict[str, torch.Tensor], transcript: dict[str, Any],
             public: dict[str, Any]) -> torch.Tensor:
    """The suspect's channel means, read again from its weights (for `check --suspect`)."""
    return DeepMarks().channel_means(suspect, _opened_key(opened, public))


@register("deepmarks", family="per-user", access="white-box")
@dataclass
class DeepMarks(PerUser):
    """Per-user weight fingerprints with AND-ACC codes: `distribute` copies, `trace` a suspect to its users.

    A copy keeps training (up to `max_epochs`) until it is traced to exactly its user at alpha 1e-6 and the
    code b~ read back from it correlates with its user's code by at least `min_fit`, so small data sets or
    layers still get a readable fingerprint.
    """

    users: int = param(31, "copies to make (the smallest projective plane with that many codewords)", lo=1,
                       hi=MAX_USERS)
    layer: str | None = param(None, "module name of the layer that carries the fingerprint (none: see "
                              "`default_layer`)", max_len=256)
    gamma: float = param(1.0, "weight of the embedding loss", lo=0, hi=1e6, lo_open=True)
    rows: int | None = param(None, "projection rows M (none: max(v, min(64, n // 2)) for the code length v and the "
                             "layer's n weights per output channel)", lo=1, hi=validate.MAX_COUNT)
    epochs: int = param(1, "fine-tuning epochs of each copy before its fit is checked", lo=1, hi=validate.MAX_EPOCHS)
    # 80: in shared passes the slowest of 31 users on the digits MLP needed 55 epochs (seed 0); 40 refused it
    max_epochs: int = param(80, "most fine-tuning epochs of one copy while its code fit stays below min_fit", lo=1,
                            hi=validate.MAX_EPOCHS)
    min_fit: float = param(0.99, "correlation the code read back from a copy must reach with its user's code",
                           lo=0, hi=1, lo_open=True)
    lr: float = param(5e-4, "learning rate of each copy's fine-tuning (Adam)", lo=0, hi=10, lo_open=True)
    batch_size: int = batch_param()
    seed: int = secret_seed_param("random seed of the secrets, probes and per-user training (any size: torch seeds are "
                           "derived from it)", hi=2**256 - 1)

    key_params = ("layer", "weight_shape", "v", "k")
    key_tensors = ("X", "U", "codebook")
    recheck = staticmethod(recheck)
    reanswer = staticmethod(reanswer)
    check_secrets = staticmethod(check_secrets)
    check_opened = staticmethod(check_opened)

    @classmethod
    def collusion_bound(cls, key_params: dict[str, Any]) -> int | None:
        """AND-ACC codes of a (v, k, 1)-BIBD trace any coalition of at most k - 1 users."""
        k = key_params.get("k")
        return int(k) - 1 if isinstance(k, int) else None

    def _probes(self, data: Dataset, shape: tuple[int, ...]) -> torch.Tensor:
        """Uniform noise in the owner data's value range (two numbers of it; no data point is stored)."""
        x, _ = as_tensors(data)
        lo, hi = float(x.min()), float(x.max())
        if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
            lo, hi = 0.0, 1.0
        gen = torch.Generator().manual_seed(torch_seed(self.seed, 7, 1))
        return (lo + (hi - lo) * torch.rand(PROBES, *shape, generator=gen)).float()

    def plan(self, model: nn.Module, users: int) -> tuple[str, int, int]:
        """Carrier layer, its inputs per output channel n and the projection rows M for a code of `users`
        users on `model`, checked before any training; raises ModelSealError with the reason when the code
        cannot work there (no layer with room for the rows, or a p-value that could not reach the default
        alpha even at a code fit of `min_fit`)."""
        design = design_for_users(users)
        v, k = design.v, design.k
        if self.rows is not None and int(self.rows) < v:
            raise ModelSealError(f"rows (projection rows M) must be at least the code length {v}, got {self.rows}")
        if self.layer is not None:
            layer = self.layer
        elif self.rows is not None:
            layer = default_layer(model, int(self.rows))
        else:
            try:  # room for the code: a layer with at least 2v inputs, else one with at least v
                layer = default_layer(model, 2 * v)
            except ModelError:
                layer = default_layer(model, v)
        weight = _layer_weight(model, layer, err=ModelError)
        n = math.prod(weight.shape[1:])
        m = default_rows(v, n) if self.rows is None else int(self.rows)
        if n < m:
            raise ModelError(f"layer '{layer}' has {n} weights per output channel, fewer than the {m} "
                             f"projection rows the {users}-user code needs; pick a larger layer")
        if self.rows is None:  # too few default rows for this code: the fewest the layer holds that reach alpha
            for target in (EMBED_P, DEFAULT_ALPHA):
                enough = next((r for r in range(m, n + 1) if _p_value(self.min_fit, r, users, k) <= target), None)
                if enough is not None:
                    m = enough
                    break
        reach = _p_value(self.min_fit, m, users, k)
        if reach > DEFAULT_ALPHA:
            coalitions = math.exp(stats.log_count_subsets(users, k - 1))
            raise ModelSealError(
                f"{users} users cannot be traced at alpha {DEFAULT_ALPHA:g} on layer '{layer}': with {m} "
                f"projection rows even a copy read back at correlation {self.min_fit} has p = {reach:.2g} "
                f"(t test with {m - 2} degrees of freedom, times {coalitions:.0f} possible coalitions); give "
                "more rows (rows=...) on a layer with that many inputs (layer=...)")
        return layer, n, m

    def largest_users(self, model: nn.Module) -> int:
        """The largest number of users (at most MAX_USERS) whose code `plan` accepts on `model`; 0 if none."""
        for users in range(MAX_USERS, 0, -1):
            try:
                self.plan(model, users)
            except ModelSealError:
                continue
            return users
        return 0

    def distribute(self, model: nn.Module, data: Dataset, progress: Any = None,
                   input_shape: tuple[int, ...] | None = None) -> tuple[list[nn.Module], Key]:
        """One fingerprinted copy per user (fine-tuned from `model`, which is left untouched) and the key."""
        design = design_for_users(self.users)
        v, k = design.v, design.k
        try:
            layer, n, m = self.plan(model, self.users)
        except ModelSealError as e:
            if self.layer is not None and self.layer not in dict(model.named_modules()):
                raise
            best = self.largest_users(model)
            given = ", ".join(f"{name}={getattr(self, name)}" for name in ("layer", "rows")
                              if getattr(self, name) is not None)
            hint = (f"the largest code this model takes is {best} users" if best else "no code size fits this model")
            hint += f" (with {given})" if given else ""
            raise type(e)(f"{e}; {hint}") from None
        weight = _layer_weight(model, layer, err=ModelError)
        codebook = design.codebook(self.users)
        signature = {**signature_of(model, input_shape), "model_sha256": state_sha256(model.state_dict())}
        architecture = architecture_digest(model)
        x_proj, u = derive_secrets(
            _commitment.nonce_for("deepmarks", int(self.seed)),
            secrets_spec({"users": self.users, "v": v, "k": k, "rows": m, "weight_shape": list(weight.shape),
                          "layer": layer, "architecture": architecture}, signature))
        probes = self._probes(data, tuple(signature["input_shape"]))
        probe_acts = _unit_activations(model, layer, probes).float()
        meta = {"layer": layer, "v": v, "k": k}
        codes = 2.0 * codebook.astype(np.float64) - 1.0
        targets = torch.stack([u @ (2.0 * torch.from_numpy(codebook[j]).float() - 1.0) for j in range(self.users)])

        def embedded(j: int, wbar: torch.Tensor) -> dict[str, Any] | None:
            """User j's reading when its copy is traced to exactly j at EMBED_P with a code fit of min_fit."""
            y = (x_proj.double() @ wbar.double()).numpy()
            res = decide_projection(y, u.double().numpy(), codebook, meta, DEFAULT_ALPHA)
            res["code_fit"] = stats.pearson(res["extracted"], codes[j])
            ok = res["accused"] == [j] and res["p_value"] <= EMBED_P and res["code_fit"] >= self.min_fit
            return res if ok else {**res, "failed": True}

        copies = _train_copies(model, data, layer, x_proj, targets, embedded, gamma=float(self.gamma),
                               epochs=int(self.epochs), max_epochs=max(self.epochs, self.max_epochs), lr=float(self.lr),
                               batch_size=int(self.batch_size), seed=torch_seed(self.seed, 1), progress=progress)
        params = {"users": int(self.users), "q": design.q, "v": v, "k": k, "rows": m, "layer": layer,
                  "weight_shape": list(weight.shape), "gamma": float(self.gamma), "epochs": int(self.epochs),
                  "max_epochs": int(self.max_epochs), "min_fit": float(self.min_fit),
                  "lr": float(self.lr), "seed": int(self.seed),
                  "architecture": architecture, "secrets_rule": SECRETS_RULE_ID}
        key = Key("deepmarks", params=params, signature=signature,
                  tensors={"X": x_proj, "U": u, "codebook": torch.from_numpy(codebook),
                           "probes": probes, "probe_acts": probe_acts})
        return copies, key

    def aligned_channel_means(self, suspect: Suspect | nn.Module, key: Key) -> tuple[torch.Tensor, dict[str, Any]]:
        """w-bar of the suspect's fingerprinted layer (white-box), its input units put in the owner's order
        (see `align_units`; keys without probes are read unaligned), and the alignment summary."""
        suspect = as_suspect(suspect)
        self.check_suspect(suspect, key)
        return self._aligned(suspect, key)

    def _aligned(self, suspect: Suspect, key: Key) -> tuple[torch.Tensor, dict[str, Any]]:
        module = suspect.require_module("deepmarks")
        p = key.params
        weight = _layer_weight(module, p["layer"], p["weight_shape"])
        with torch.no_grad():
            wbar = _channel_mean(weight.detach().cpu()).double()
        if not torch.isfinite(wbar).all():
            raise ModelError(f"layer '{p['layer']}' of the suspect holds NaN or infinite weights")
        info: dict[str, Any] = {"aligned": False}
        if "probes" in key.tensors and "probe_acts" in key.tensors:
            owner_acts = key.tensors["probe_acts"].double()
            acts = _unit_activations(module, p["layer"], key.tensors["probes"].float())
            if acts.shape[1] != owner_acts.shape[1] or wbar.numel() % acts.shape[1]:
                raise KeyMismatchError(f"layer '{p['layer']}' of the suspect takes {acts.shape[1]} input units, "
                                       f"the key's owner {owner_acts.shape[1]}; use the key made for this model")
            perm, info = align_units(owner_acts, acts)
            wbar = wbar.reshape(acts.shape[1], -1)[torch.from_numpy(perm)].reshape(-1)
            info["aligned"] = True
        return wbar, info

    def channel_means(self, suspect: Suspect | nn.Module, key: Key) -> torch.Tensor:
        """w-bar of the suspect's fingerprinted layer, averaged over output channels and aligned (white-box)."""
        return self.aligned_channel_means(suspect, key)[0]

    def decode(self, suspect: Suspect | nn.Module, key: Key) -> np.ndarray:
        """b~ = U^T X w-bar of the suspect's fingerprinted layer (white-box): the code read from its weights."""
        return key.tensors["U"].double().numpy().T @ _project(key, self.channel_means(suspect, key))

    def decide(self, suspect: Suspect, key: Key, rule: dict[str, Any]) -> Verdict:
        """Accuse the users whose copies the suspect was made from (one copy, or an average of several).

        The Verdict's `accused` lists them (0-based, the copy's index in `distribute`'s list); `owned` is
        true iff anyone is accused; `score` is -log10 p and `threshold` -log10 alpha, so one scale serves
        every user. `details` holds the per-user p-values, the single-copy correlations (`scores`), the
        best single user and its p-value, the decoded coalition (`candidates`, also when not accused), the
        coalition fit, the decoded code and the neuron alignment.
        """
        if key.method != "deepmarks":
            raise KeyMismatchError(f"trace takes a deepmarks key, got a '{key.method}' key")
        alpha = rule["alpha"]
        wbar, info = self._aligned(suspect, key)
        res = decide(_project(key, wbar), key, alpha)
        return Verdict("deepmarks", owned=bool(res["accused"]), score=_log_p(res["p_value"]),
                       threshold=_log_p(alpha), p_value=res["p_value"], alpha=alpha, queries=0,
                       accused=list(res["accused"]),
                       details={**{k: v for k, v in res.items() if k != "accused"}, "alignment": info},
                       transcript={"verifier": {"alpha": alpha}, "answers": wbar.float()})


def _call_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of the modules with parameters of their own, in the order the forward pass first calls them."""
    order: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda _m, _i, n=n: order.append(n) if n not in order else None)
             for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return order


def _train_copies(model: nn.Module, data: Dataset, layer: str, x_proj: torch.Tensor, targets: torch.Tensor,
                  embedded: Callable[[int, torch.Tensor], dict[str, Any] | None], *, gamma: float, epochs: int,
                  max_epochs: int, lr: float, batch_size: int, seed: int, progress: Any) -> list[nn.Module]:
    """Fine-tune one copy per user (targets: users x M) in shared passes: the layers the forward pass runs before
    the carrier keep the owner's weights and run once per batch for every user; the carrier and every layer
    after it are stacked over users and run under `torch.func.vmap`, and one Adam step updates every user
    (Adam is elementwise, so each user's slice moves as it would alone). Every user sees the same seeded batch
    order and the model runs in eval mode (normalisation statistics and dropout as at inference). After
    `epochs` epochs, each epoch ends with every user's reading; a user's copy is its weights at the first epoch
    it passes `embedded`; ModelError names the first user still failing after `max_epochs`."""
    from torch.func import functional_call, vmap

    from ...runtime import model_device
    from ...train import task_of

    x_all, y_all = as_tensors(data)
    if len(x_all) == 0:
        raise ModelSealError("deepmarks.distribute was given an empty data set")
    task = task_of(data, y_all)
    users = len(targets)
    dev = model_device(model)
    base = copy.deepcopy(model).eval()
    order = _call_order(base, x_all[:1].to(dev))
    tail_mods = set(order[order.index(layer):]) if layer in order else set(order)
    named = dict(base.named_parameters())
    tail = [n for n in named if n.rpartition(".")[0] in tail_mods or (n.rpartition(".")[0] == "" and "" in tail_mods)]
    shared = {n: p.detach() for n, p in named.items() if n not in tail}
    buffers = {n: b.detach() for n, b in base.named_buffers()}
    stacked = {n: named[n].detach().unsqueeze(0).repeat(users, *([1] * named[n].dim())).clone().requires_grad_(True)
               for n in tail}
    carrier = f"{layer}.weight"
    x_proj_d, targets_d = x_proj.to(dev), targets.to(dev)
    opt = torch.optim.Adam(list(stacked.values()), lr=lr)

    def forward(user_params: dict[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
        return functional_call(base, {**shared, **buffers, **user_params}, (xb,))

    batched = vmap(forward, in_dims=(0, None), randomness="different")
    # nn.MultiheadAttention's fused inference path has no derivative, and under vmap it cannot tell that the
    # stacked weights need one: the plain path for these passes.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        return _shared_passes(model, base, batched, stacked, carrier, x_all, y_all, task, users, x_proj_d, targets_d,
                              embedded, opt, gamma=gamma, epochs=epochs, max_epochs=max_epochs, batch_size=batch_size,
                              seed=seed, progress=progress)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _shared_passes(model: nn.Module, base: nn.Module, batched: Callable[..., torch.Tensor],
                   stacked: dict[str, torch.Tensor], carrier: str, x_all: torch.Tensor, y_all: torch.Tensor, task: str,
                   users: int, x_proj_d: torch.Tensor, targets_d: torch.Tensor,
                   embedded: Callable[[int, torch.Tensor], dict[str, Any] | None], opt: torch.optim.Optimizer, *,
                   gamma: float, epochs: int, max_epochs: int, batch_size: int, seed: int,
                   progress: Any) -> list[nn.Module]:
    """The epochs of `_train_copies`: shared passes, each user's reading after every epoch from `epochs` on, and
    the copies built from each user's weights at its first passing epoch."""
    from ...runtime import model_device, track
    from ...train import CLASSIFICATION

    dev = model_device(base)
    gen = torch.Generator().manual_seed(seed)
    n = len(x_all)
    steps = (n + batch_size - 1) // batch_size
    done: dict[int, dict[str, torch.Tensor]] = {}
    readings: dict[int, dict[str, Any]] = {}
    with track(progress, max_epochs * steps, f"deepmarks {users} users") as bar:
        for epoch in range(max_epochs):
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, batch_size):
                idx = perm[i : i + batch_size]
                xb, yb = x_all[idx].to(dev), y_all[idx].to(dev)
                out = batched(stacked, xb)  # users x batch x outputs
                flat, ys = out.flatten(0, 1).float(), yb.repeat(users)
                loss = users * (F.cross_entropy(flat, ys) if task == CLASSIFICATION  # the sum of the users' losses
                                else F.mse_loss(flat.reshape(ys.shape), ys.float()))
                wbar = stacked[carrier].float().mean(1).reshape(users, -1)
                r = wbar @ x_proj_d.T - targets_d
                loss = loss + gamma * (r * r).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.advance()
            if epoch + 1 < epochs:
                continue
            with torch.no_grad():
                wbars = stacked[carrier].detach().float().mean(1).reshape(users, -1).cpu()
            for j in range(users):
                if j in done:
                    continue
                res = embedded(j, wbars[j])
                readings[j] = res or {}
                if res is not None and not res.get("failed"):
                    done[j] = {name: t[j].detach().clone() for name, t in stacked.items()}
            bar.update(bar.done, info=f"epoch {epoch + 1}: {len(done)}/{users} users fingerprinted")
            if len(done) == users:
                break
    missing = [j for j in range(users) if j not in done]
    if missing:
        j = missing[0]
        reading = readings.get(j, {})
        raise ModelError(
            f"user {j}'s copy was not fingerprinted within max_epochs={max_epochs}: it is traced with p = "
            f"{reading.get('p_value', 1.0):.2g} (accused {reading.get('accused')}, alpha {DEFAULT_ALPHA:g}; code "
            f"read back at correlation {reading.get('code_fit', 0.0):.3f}); raise gamma or max_epochs, or give "
            "more training data")
    copies = []
    for j in range(users):
        copy_j = copy.deepcopy(model)
        params = dict(copy_j.named_parameters())
        with torch.no_grad():
            for name, value in done[j].items():
                params[name].copy_(value)
        copy_j.eval()
        copies.append(copy_j)
    return copies
