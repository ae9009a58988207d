"""DeepMarks: per-user fingerprints in the weights with BIBD anti-collusion codes, and colluder tracing.

Chen, Rouhani, Koushanfar, "DeepMarks: A Digital Fingerprinting Framework for Deep Neural Networks"
(2018, ICMR 2019).

Where modelseal deviates, and why:
- Each user's copy is the owner model *fine-tuned* for a few epochs with `CE + gamma ||X w - U b_j||^2`
  (the paper also trains from scratch); distributing 31 copies then costs 31 short fine-tunes.
- `gamma` (default 1.0: one epoch then leaves |b~ - b_j| <= ~0.25 and accuracy within a point) and the
  number of projection rows (`M = v`, so U is square and every code vector is reachable) are chosen
  for our small models, where the entries of U^T X w of a trained layer are ~0.1.
- Decoding is scale- and offset-free: rather than one fixed threshold on b~ (which pruning or fine-tuning
  shrink), every threshold between consecutive values of b~ is tried, the AND-ACC rule gives a candidate
  coalition at each, and the coalition whose mean code vector correlates best with b~ is kept.
- Accusations carry a p-value (the paper gives none): for a model independent of the secret projection X,
  b~ = U^T X w is an isotropic Gaussian vector, so the Pearson correlation r between b~ and any fixed
  code vector has the exact null `r sqrt(v-2) / sqrt(1-r^2) ~ t(v-2)`. The coalition's p-value is that
  tail times the number of coalitions of at most k - 1 of the issued users (Bonferroni), so an
  independent model is accused with probability at most alpha. Users are accused only if p <= alpha.
- The default layer is the first hidden Linear layer with at least M inputs (else the last such
  convolution): on our small CNN it takes the code with less accuracy loss and faster than a
  convolution. Any layer with a weight matrix can be named (`layer=`).
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
from torch import nn
from torch.utils.data import Dataset

from ... import stats, validate
from ...errors import KeyMismatchError, ModelError, ModelSealError
from ...keys import Key
from ...methods import register
from ...models import signature_of
from ...suspect import Suspect, as_suspect
from ...train import fit
from ...verdict import DEFAULT_ALPHA, Verdict
from .codes import and_acc_accuse, design_for_users

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


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
    if shape is not None and list(weight.shape) != list(shape):
        raise KeyMismatchError(f"layer '{name}' has weight shape {tuple(weight.shape)}, but the key was made "
                               f"for {tuple(shape)}; use the key made for this model's architecture")
    return weight


@register("deepmarks", family="per-user", access="white-box")
@dataclass
class DeepMarks:
    """Per-user weight fingerprints with AND-ACC codes: `distribute` copies, `trace` a suspect to its users.

    users: copies to make (picks the smallest projective plane with that many codewords).
    layer: module name of the layer that carries the fingerprint (None: see `default_layer`).
    gamma: weight of the embedding loss. rows: projection rows M (None: the code length v).
    epochs, lr: fine-tuning of each copy; a copy keeps training (up to `max_epochs`) until the code read
    back from it correlates with its user's code by at least `min_fit`, so small data sets or layers
    still get a readable fingerprint. alpha: accusation level. seed: secrets and per-user training.
    """

    users: int = 31
    layer: str | None = None
    gamma: float = 1.0
    rows: int | None = None
    epochs: int = 1  # fine-tuning epochs of each copy before its fit is checked
    max_epochs: int = 20  # most fine-tuning epochs of one copy while its code fit stays below min_fit
    min_fit: float = 0.99  # correlation the code read back from a copy must reach with its user's code
    lr: float = 1e-3  # learning rate of each copy's fine-tuning
    batch_size: int = 64
    seed: int = 0

    # what the verifier sets (never read from a key): name -> (default, meaning)
    key_params = ("layer", "weight_shape", "v", "k")
    key_tensors = ("X", "U", "codebook")
    verify_params = {"alpha": (DEFAULT_ALPHA, "false-accusation rate accepted (0 < alpha < 1)")}

    def _secrets(self, m: int, n: int, v: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(int(self.seed))
        x = torch.randn(m, n, generator=gen)
        u, _ = torch.linalg.qr(torch.randn(m, v, generator=gen))
        return x, u.contiguous()

    def distribute(self, model: nn.Module, data: Dataset, progress: Any = None,
                   input_shape: tuple[int, ...] | None = None) -> tuple[list[nn.Module], Key]:
        """One fingerprinted copy per user (fine-tuned from `model`, which is left untouched) and the key."""
        design = design_for_users(self.users)
        v, k = design.v, design.k
        m = v if self.rows is None else int(self.rows)
        if m < v:
            raise ModelSealError(f"rows (projection rows M) must be at least the code length {v}, got {m}")
        if self.gamma <= 0 or self.epochs < 1:
            raise ModelSealError(f"gamma must be > 0 and epochs >= 1 (got {self.gamma}, {self.epochs})")
        if not 0 < self.min_fit <= 1:
            raise ModelSealError(f"min_fit must lie in (0, 1], got {self.min_fit}")
        layer = self.layer if self.layer is not None else default_layer(model, m)
        weight = _layer_weight(model, layer, err=ModelError)
        n = math.prod(weight.shape[1:])
        if n < m:
            raise ModelError(f"layer '{layer}' has {n} weights per output channel, fewer than the {m} "
                             "projection rows; pick a larger layer")
        x_proj, u = self._secrets(m, n, v)
        codebook = design.codebook(self.users)
        signature = signature_of(model, input_shape)
        copies: list[nn.Module] = []
        for j in range(self.users):
            target = u @ (2.0 * torch.from_numpy(codebook[j]).float() - 1.0)
            copy_j = copy.deepcopy(model)
            loss = self._embedding_loss(layer, x_proj, target)
            code = 2.0 * torch.from_numpy(codebook[j]).double() - 1.0

            def embedded(m: nn.Module, epoch: int, code: torch.Tensor = code) -> bool:
                if epoch + 1 < self.epochs:
                    return False
                with torch.no_grad():
                    b = u.T.double() @ (x_proj.double() @ _channel_mean(_layer_weight(m, layer).cpu()).double())
                return float(torch.corrcoef(torch.stack([b, code]))[0, 1]) >= self.min_fit

            fit(copy_j, data, epochs=max(self.epochs, self.max_epochs), lr=self.lr, batch_size=self.batch_size,
                seed=int(self.seed) * 100_003 + j + 1, extra_loss=loss, stop=embedded, progress=progress,
                description=f"deepmarks user {j + 1}/{self.users}")
            copies.append(copy_j)
        params = {"users": int(self.users), "q": design.q, "v": v, "k": k, "rows": m, "layer": layer,
                  "weight_shape": list(weight.shape), "gamma": float(self.gamma), "epochs": int(self.epochs),
                  "max_epochs": int(self.max_epochs), "min_fit": float(self.min_fit),
                  "lr": float(self.lr), "seed": int(self.seed),
                  "architecture": architecture_digest(model)}
        key = Key("deepmarks", params=params, signature=signature,
                  tensors={"X": x_proj, "U": u, "codebook": torch.from_numpy(codebook)})
        return copies, key

    def _embedding_loss(self, layer: str, x_proj: torch.Tensor, target: torch.Tensor
                        ) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
        gamma = float(self.gamma)
        cache: dict[str, torch.Tensor] = {}

        def loss(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            w = _layer_weight(model, layer)
            if "x" not in cache:
                cache["x"], cache["t"] = x_proj.to(w.device), target.to(w.device)
            # The projection must not run in bf16 (AMP on CUDA): b is read back to a precision of ~0.1.
            with torch.autocast(w.device.type, enabled=False):
                r = cache["x"] @ _channel_mean(w) - cache["t"]
                return gamma * (r * r).sum()

        return loss

    def channel_means(self, suspect: Suspect | nn.Module, key: Key) -> torch.Tensor:
        """w-bar: the suspect's fingerprinted layer averaged over output channels (white-box)."""
        suspect = as_suspect(suspect)
        module = suspect.require_module("deepmarks")
        p = key.params
        key.check_signature(suspect.input_shape, suspect.output_size())
        weight = _layer_weight(module, p["layer"], p["weight_shape"])
        with torch.no_grad():
            wbar = _channel_mean(weight.detach().cpu()).double()
        if not torch.isfinite(wbar).all():
            raise ModelError(f"layer '{p['layer']}' of the suspect holds NaN or infinite weights")
        return wbar

    def decode(self, suspect: Suspect | nn.Module, key: Key) -> np.ndarray:
        """b~ = U^T X w-bar of the suspect's fingerprinted layer (white-box): the code read from its weights."""
        return _project(key, self.channel_means(suspect, key))

    def trace(self, suspect: Suspect | nn.Module, key: Key, alpha: float = DEFAULT_ALPHA) -> Verdict:
        """Accuse the users whose copies the suspect was made from (one copy, or an average of several).

        The Verdict's `accused` lists them (0-based, the copy's index in `distribute`'s list); `owned` is
        true iff anyone is accused; `score` is -log10 p and `threshold` -log10 alpha, so one scale serves
        every user. `details` holds the per-user p-values, the single-copy correlations (`scores`), the
        best single user, the coalition fit and the decoded code.
        """
        if key.method != "deepmarks":
            raise KeyMismatchError(f"trace takes a deepmarks key, got a '{key.method}' key")
        alpha = validate.alpha(alpha)
        wbar = self.channel_means(suspect, key)
        res = decide(_project(key, wbar), key, alpha)
        return Verdict("deepmarks", owned=bool(res["accused"]), score=_log_p(res["p_value"]),
                       threshold=_log_p(alpha), p_value=res["p_value"], alpha=alpha, queries=0,
                       accused=list(res["accused"]), details={k: v for k, v in res.items() if k != "accused"},
                       transcript={"verifier": {"alpha": alpha}, "answers": wbar.float()})


def _log_p(p: float) -> float:
    return -math.log10(max(float(p), 1e-300))


def _project(key: Key, wbar: torch.Tensor) -> np.ndarray:
    x_proj, u = key.tensors["X"].double(), key.tensors["U"].double()
    if x_proj.shape[1] != wbar.numel():
        raise KeyMismatchError(f"the key projects {x_proj.shape[1]} weights per channel but the layer has "
                               f"{wbar.numel()}; use the key made for this model")
    return (u.T @ (x_proj @ wbar.double())).numpy()


def decide(b: np.ndarray, key: Key, alpha: float) -> dict[str, Any]:
    """AND-ACC decoding of the read code `b` and the coalition test (stats.correlation_log_tail with a
    Bonferroni factor over every coalition of at most k - 1 users)."""
    p = key.params
    codebook = key.tensors["codebook"].numpy().astype(np.int64)
    users, v, k = codebook.shape[0], int(p["v"]), int(p["k"])
    codes = 2.0 * codebook - 1.0
    scores = [stats.pearson(b, codes[j]) for j in range(users)]
    best = int(np.argmax(scores))
    single_p = min(1.0, users * math.exp(stats.correlation_log_tail(scores[best], v)))

    # Every threshold between consecutive values of b~ gives a decoding; keep the best-fitting coalition.
    order = np.sort(b)
    best_fit, cands, cut, bits = -2.0, [], float("nan"), np.ones(v, dtype=np.int64)
    for i in range(v - 1):
        t = 0.5 * (order[i] + order[i + 1])
        dec = (b >= t).astype(np.int64)
        acc = and_acc_accuse(dec, codebook)
        if not 1 <= len(acc) <= k - 1:
            continue
        r = stats.pearson(b, codes[acc].mean(0))
        if r > best_fit + 1e-12 or (abs(r - best_fit) <= 1e-12 and len(acc) < len(cands)):
            best_fit, cands, cut, bits = r, acc, float(t), dec
    if cands:
        log_p = stats.correlation_log_tail(best_fit, v) + stats.log_count_subsets(users, k - 1)
        p_value = float(min(1.0, math.exp(min(0.0, log_p))))
    else:
        p_value = 1.0
    accused = [int(j) for j in cands] if p_value <= alpha else []
    return {"accused": accused, "p_value": p_value, "p_values": {str(j): p_value for j in accused},
            "scores": scores, "best_user": best, "single_p_value": single_p,
            "fit": float(best_fit) if cands else 0.0, "candidates": [int(j) for j in cands],
            "bits": [int(x) for x in bits], "extracted": [float(x) for x in b], "cut": cut, "users": users,
            "max_colluders": k - 1, "layer": p["layer"], "norm": float(np.linalg.norm(b) / math.sqrt(v))}


def check_rule(rule: dict[str, Any], error: type[Exception] = ModelSealError) -> dict[str, Any]:
    """The verifier's (or checker's) rule, validated as trace validates it."""
    return {"alpha": validate.alpha(rule.get("alpha", DEFAULT_ALPHA), error=error)}


def recheck(opened: dict[str, torch.Tensor], transcript: dict[str, Any], public: dict[str, Any],
            rule: dict[str, Any] | None = None) -> dict[str, Any]:
    """Recompute the trace from an evidence transcript (the suspect's channel means) and the opened key,
    under the recorded alpha (rule=None) or a checker's rule."""
    key = _opened_key(opened, public)
    alpha = check_rule(rule if rule is not None else transcript["verifier"], error=ValueError)["alpha"]
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


DeepMarks.recheck = staticmethod(recheck)
DeepMarks.check_rule = staticmethod(check_rule)
DeepMarks.reanswer = staticmethod(reanswer)
