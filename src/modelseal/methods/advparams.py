"""AdvParams parameter locking: Xue, Wu, Wang, Zhang, Liu, "AdvParams: An Active DNN Intellectual Property
Protection Technique via Adversarial Perturbation Based Parameter Encryption", IEEE TETC 2022
(arXiv 2105.13697).

The owner perturbs a handful of weights in the loss-increasing direction until the model is useless, and
keeps their positions and original values as the key; with the key the model is restored bit-for-bit.

Where modelseal deviates from the paper, and why:

- Batched greedy passes: each pass computes one loss gradient and moves the free weights whose move (`eps` x
  their layer's max - min, towards higher loss, clipped) raises the loss most to first order, taken from every
  layer's own top-k and merged: pass p moves up to 64 x 4^p weights, and the pass that reaches the target is
  bisected (at most 4 forward checks) to a short prefix that still does. The paper also perturbs several
  parameters per iteration (FGSM-like); the former one-weight-a-pass greedy step cost one backward pass per
  weight (ResNet-18 on 3x32x32: 9.2 epochs of training for 50 weights, not locked), the batched one 0.68 epoch
  (0.917 -> 0.495, chance 0.5, 128 weights; `benchmarks/scale.py`). `max_params="auto"` (the default) bounds
  the lock by `max_passes` instead of a count; the choice is deterministic for a seed.
- Every move is clipped inside the layer's ORIGINAL [min, max], so no locked value is an outlier of its
  layer (the paper's stealthiness constraint); a weight already at that edge in the wanted direction
  cannot move and is skipped, and every weight is chosen at most once.
- The gradient is taken on one seeded batch of `batch_size` examples of the given data, and accuracy is
  checked after every pass on a second, disjoint seeded batch of the same size (the same batch when the
  data are too small for two), so the stop criterion is not measured on the examples the gradient
  overfits. The paper uses a small clean set too; its sizes and split are not fixed here.
- A classifier that answers one class for the whole check batch counts as locked whatever its accuracy:
  that accuracy is only the class's share of the batch (0.14 on a digits batch, above a 0.1 target), and
  a model that always answers the same is useless. The key records `collapsed` when this stopped it.
- Hidden lock (`hide_rank` > 0, a modelseal extension): the greedy step leaves every moved weight at the top
  of the locked model's |loss gradient| (ranks 0-24 of 22,154 on a digits CNN) and, with a large `eps`, at
  its layer's edges, so a key-free attacker who knows the method resets or fine-tunes those weights and gets
  the model back (0.85 with 7 images, where training from scratch on them reaches 0.40). With `hide_rank`,
  each step draws `candidates` moves (seeded) from the best first-order ones, tries them in order of the loss
  they cause, and keeps the first after which every moved weight is still outside the top `hide_rank`
  gradients on the check batch (else the least visible one; the key counts those as `unhidden_steps`). The
  new value is read from the layer's own sorted values at a seeded level of the far half beyond the weight
  (interpolated, at most `eps` x the range away), so moved weights neither pile up at the edges nor copy a
  value exactly. Measured (`benchmarks/advparams.py --quick`, digits CNN, owner 0.939, attackers: fine-tune
  grid, pruning, reset-outliers, standouts, largest-gradient reset / sparse fine-tune, edge and tail sparse
  fine-tune): with `hide_rank=100, eps=1.0, max_params=300` the best key-free recovery is 0.424 / 0.814 /
  0.914 with 1 / 10 / 25 % of the data against 0.404 / 0.848 / 0.942 from scratch (within +5 points: it
  holds), where the greedy lock gives 0.853 / 0.950 / 0.961. Its cost: 300 weights (1.35 % of the model, not
  the paper's 0.0002 % nor the 0.01 % goal), a locked accuracy of 0.274 (the 0.1 target is missed at that
  budget: not near chance) and 368 s against 2.1 s for the greedy lock on a loaded machine. With
  `max_params=500` (2.26 %) it locks to 0.183 and still holds (0.393 / 0.806 / 0.925). It is off by default
  for those reasons.
- The key stores the original values in the tensors' own dtype (exact bits, so unlock is a write-back,
  not `w + d - d`) and SHA-256 digests of the whole original and locked state dicts: unlock refuses a
  model that is not the one this key locked, and checks that the restored state is the original.
"""

from __future__ import annotations

import copy
import hashlib
import json
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from .. import validate
from ..data import as_tensors
from ..errors import (
    DataError,
    KeyFormatError,
    KeyIntegrityError,
    KeyMismatchError,
    ModelError,
    ModelSealError,
    WeakProtection,
)
from ..keys import Key
from ..models import signature_of
from ..runtime import model_device, track
from ..schema import param, secret_seed_param
from ..train import CLASSIFICATION, task_of
from . import register
from .base import Lock

_EDGE_MARGIN = 0.01
_FIRST_PASS = 64  # weights moved by the first batched pass; each later pass moves _GROWTH x as many
_GROWTH = 4
_TRIM_STEPS = 4  # halvings of the pass that reaches the target
_HIDDEN_AUTO = 300  # max_params="auto" for the hidden lock (one weight a pass): the budget measured to hold
_POOL = 32  # with hide_rank, candidates are drawn from the _POOL x candidates best first-order moves (the
# `candidates` meaning says 32: the CLI reads meanings without importing, so they are plain strings)
_PERTURBABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def state_digest(model: nn.Module | dict[str, torch.Tensor]) -> str:
    """SHA-256 over every state-dict tensor in sorted name order: name, dtype, shape and raw bytes."""
    sd = model.state_dict() if isinstance(model, nn.Module) else model
    h = hashlib.sha256()
    for name in sorted(sd):
        t = sd[name].detach().contiguous().cpu()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes())
    return h.hexdigest()


@register("advparams", family="lock", access="white-box")
@dataclass
class AdvParams(Lock):
    """Lock a model by adversarially perturbing at most `max_params` weights; unlock it with the key."""

    max_params: int | str = param("auto", "most weights perturbed (auto: no fixed count; every pass moves 4x as many "
                                  "as the last until the target is reached or max_passes are spent; 300 for the "
                                  "hidden lock, which moves one weight a pass)")
    max_passes: int = param(8, "most gradient passes (each one forward and backward pass on batch_size examples, the "
                            "lock's cost): pass p moves up to 64 x 4^p weights, the one that reaches the target is "
                            "bisected to a short prefix that still does", lo=1, hi=64)
    eps: float = param(0.5, "step as a fraction of the layer's value range", lo=0, hi=1e3, lo_open=True)
    target_accuracy: float = param(0.1, "stop once accuracy on the check batch is at or below this", lo=0, hi=1)
    batch_size: int = param(256, "examples in the gradient batch and in the separate check batch", lo=1,
                            hi=validate.MAX_BATCH)
    hide_rank: int = param(0, "keep every perturbed weight out of the top hide_rank of the locked model's "
                           "|loss gradient| on the check batch, where a key-free attacker looks (0: off, the "
                           "batched greedy passes)", lo=0, hi=validate.MAX_COUNT)
    candidates: int = param(16, "with hide_rank: moves tried per step, a seeded sample of the 32 x as many "
                            "with the largest first-order loss increase", lo=1, hi=1024)
    layers: list[str] | None = param(None, "module or parameter names that may be perturbed (none: every "
                                     "Conv/Linear weight)")
    seed: int = secret_seed_param("random seed of the gradient and check batches")

    def check(self) -> None:
        if self.max_params != "auto":
            if isinstance(self.max_params, str):
                raise ModelSealError(f"advparams: max_params takes a count or 'auto', got {self.max_params!r}")
            self.max_params = validate.count("max_params", self.max_params, 1, validate.MAX_COUNT)
        if isinstance(self.layers, str):
            self.layers = [self.layers]
        if self.layers is not None and (not isinstance(self.layers, (list, tuple)) or not self.layers
                                        or not all(isinstance(s, str) for s in self.layers)):
            raise ModelSealError("advparams: layers must be a non-empty list of module or parameter names "
                                 "(or None for every Conv/Linear weight)")

    # ------------------------------------------------------------------ lock
    def _targets(self, model: nn.Module) -> list[str]:
        params = dict(model.named_parameters())
        if self.layers is None:
            names = [f"{n}.weight" if n else "weight" for n, m in model.named_modules()
                     if isinstance(m, _PERTURBABLE)]
            if not names:
                raise ModelError("advparams found no Conv or Linear layer to perturb; name the tensors "
                                 "with layers=[...]")
            return names
        modules = dict(model.named_modules())
        names = []
        for want in self.layers:
            if want in params:
                names.append(want)
            elif want in modules and isinstance(getattr(modules[want], "weight", None), nn.Parameter):
                names.append(f"{want}.weight" if want else "weight")
            else:
                raise ModelError(f"advparams: layer '{want}' is neither a parameter nor a module with a "
                                 f"weight in this model; pick from {', '.join(list(params)[:8])}, ...")
        names = list(dict.fromkeys(names))
        for n in names:
            if not torch.is_floating_point(params[n]):
                raise ModelError(f"advparams: parameter '{n}' is not a floating tensor and cannot be "
                                 "perturbed; leave it out of layers")
        return names

    def lock(self, model: nn.Module, data: Dataset, progress: Any = None) -> tuple[nn.Module, Key]:
        """A locked copy of `model` and the Key that unlocks it. No retraining; `model` is left untouched.

        Warns with `WeakProtection` (a UserWarning) when the check batch's accuracy stays above
        `target_accuracy`: the lock is returned with `target_reached` false in its key, and a caller that must
        not keep a useless lock (the CLI) turns that warning into an error."""
        if not isinstance(model, nn.Module):
            raise ModelError(f"advparams.lock needs a torch nn.Module, got {type(model).__name__}")
        from ..models.io import check_finite

        check_finite(model, "advparams.lock: the model to lock")  # NaN weights would "lock" with 0 changes
        try:
            x_all, y_all = as_tensors(data)
        except ModelSealError:
            raise
        except Exception as e:
            raise DataError(f"advparams.lock needs a data set of (x, y) pairs "
                            f"({e.__class__.__name__}: {e})") from None
        if len(x_all) == 0:
            raise DataError("advparams.lock was given an empty data set; pass a few hundred clean examples")
        signature = signature_of(model, tuple(x_all.shape[1:]))
        original_digest = state_digest(model)
        locked = copy.deepcopy(model)
        locked.eval()
        run = _Run(self, locked, x_all, y_all, task_of(data, y_all))
        budget = self.budget()
        with track(progress, budget if self.hide_rank else int(self.max_passes), "advparams lock") as bar:
            if self.hide_rank:
                run.hidden(budget, bar)
            else:
                run.batched(budget, bar)
        reached = run.reached()
        if not reached:
            warnings.warn(WeakProtection(
                f"advparams stopped at accuracy {run.acc:.3f} on the check batch after {run.changed} parameters "
                f"changed ({run.passes} gradient passes), above the target {self.target_accuracy:g}: it missed its "
                f"target, so the locked model would still work; raise max_params (now {self.max_params}), "
                f"max_passes (now {self.max_passes}) or eps (now {self.eps:g}), or accept a weaker lock with "
                f"target_accuracy={min(1.0, round(run.acc + 0.005, 2)):g}"), stacklevel=2)
        n_total = sum(p.numel() for p in locked.parameters())
        key = Key(
            method="advparams",
            params={
                **run.key_params(),
                "total_params": int(n_total),
                "max_params": self.max_params if self.max_params == "auto" else int(self.max_params),
                "max_passes": int(self.max_passes), "eps": float(self.eps),
                "target_accuracy": float(self.target_accuracy), "batch_size": int(self.batch_size),
                "seed": int(self.seed), "hide_rank": int(self.hide_rank), "candidates": int(self.candidates),
                "target_reached": bool(reached),
                "original_digest": original_digest,
                "locked_digest": state_digest(locked),
            },
            tensors=run.key_tensors(),
            signature=signature,
        )
        return locked, key

    def budget(self) -> int:
        """The most weights this lock may move: `max_params`, or with "auto" the schedule's sum over
        `max_passes` batched passes (`_HIDDEN_AUTO` for the hidden lock, which moves one weight a pass)."""
        if self.max_params != "auto":
            return int(self.max_params)
        if self.hide_rank:
            return _HIDDEN_AUTO
        return sum(_FIRST_PASS * _GROWTH**p for p in range(int(self.max_passes)))

    # ------------------------------------------------------------------ unlock
    def unlock(self, locked: nn.Module, key: Key) -> nn.Module:
        """A copy of `locked` with every perturbed weight restored bit-for-bit; `locked` is left untouched."""
        if not isinstance(key, Key):
            raise KeyFormatError(f"advparams.unlock needs a modelseal Key, got {type(key).__name__}")
        if key.method != "advparams":
            raise KeyFormatError(f"this is a '{key.method}' key; unlock takes an advparams key")
        if not isinstance(locked, nn.Module):
            raise ModelError(f"advparams.unlock needs a torch nn.Module, got {type(locked).__name__}")
        p = key.params
        names = p.get("tensors")
        want_locked, want_orig = p.get("locked_digest"), p.get("original_digest")
        if (not isinstance(names, list) or not all(isinstance(n, str) for n in names)
                or not isinstance(want_locked, str) or not isinstance(want_orig, str)):
            raise KeyFormatError("advparams key is malformed: it lacks the tensor names or the digests")
        if state_digest(locked) != want_locked:
            raise KeyMismatchError("this advparams key belongs to another model, or the locked model was "
                                   "modified after locking; use the key made when this model was locked")
        out = copy.deepcopy(locked)
        sd = out.state_dict()
        with torch.no_grad():
            for k, name in enumerate(names):
                pos, orig = key.tensors.get(f"position.{k}"), key.tensors.get(f"original.{k}")
                if name not in sd or pos is None or orig is None:
                    raise KeyFormatError(f"advparams key is malformed: entry {k} ('{name}') is incomplete")
                t = sd[name]
                if (pos.dtype != torch.int64 or pos.dim() != 1 or orig.shape != pos.shape
                        or orig.dtype != t.dtype or (len(pos) and (pos.min() < 0 or pos.max() >= t.numel()))):
                    raise KeyFormatError(f"advparams key is malformed: positions/values of '{name}' do not "
                                         "fit the model")
                flat = t.detach().reshape(-1).clone()
                flat[pos.to(flat.device)] = orig.to(flat.device)
                t.copy_(flat.view_as(t))
        if state_digest(out) != want_orig:
            raise KeyIntegrityError("unlocking did not reproduce the original weights (digest differs): "
                                    "the key's values have been altered; use the original key file")
        return out


Moves = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # tensor index, flat position, new value (float64)


class _Run:
    """One lock in progress: the locked copy's Conv/Linear weights, their original ranges and values, the
    gradient and check batches, and the moves made so far (`chosen`)."""

    def __init__(self, cfg: AdvParams, locked: nn.Module, x_all: torch.Tensor, y_all: torch.Tensor, task: str):
        self.cfg, self.model, self.task = cfg, locked, task
        dev = model_device(locked)
        self.gen = torch.Generator().manual_seed(int(cfg.seed))
        perm = torch.randperm(len(x_all), generator=self.gen)
        b = int(cfg.batch_size)
        grad_idx = perm[:b]
        check_idx = perm[b : 2 * b] if len(perm) >= 2 * b else grad_idx
        self.xg, self.yg = x_all[grad_idx].to(dev), y_all[grad_idx].to(dev)
        self.xc, self.yc = x_all[check_idx].to(dev), y_all[check_idx].to(dev)
        self.names = cfg._targets(locked)
        params = dict(locked.named_parameters())
        self.tensors = [params[n] for n in self.names]
        self.lo = [t.detach().min() for t in self.tensors]
        self.hi = [t.detach().max() for t in self.tensors]
        self.chosen = [torch.zeros(t.shape, dtype=torch.bool, device=t.device) for t in self.tensors]
        self.originals = [t.detach().clone() for t in self.tensors]
        self.collapsed = False
        self.changed = self.passes = self.unhidden = 0
        self.rank_after: int | None = None
        self.acc_before = self.acc = self.score()

    # ------------------------------------------------------------------ measures
    def score(self) -> float:
        """Accuracy (R^2 for regression) on the check batch; sets `collapsed` when one class answers all."""
        with torch.no_grad():
            out = self.model(self.xc)
            if self.task == CLASSIFICATION:
                pred = out.argmax(1)
                self.collapsed = len(self.xc) > 1 and bool((pred == pred[0]).all())
                return float((pred == self.yc).float().mean())
            self.collapsed = False
            y = self.yc.float().reshape(out.shape)
            ss_tot = ((y - y.mean()) ** 2).sum().clamp_min(1e-12)
            return float(1.0 - ((out.float() - y) ** 2).sum() / ss_tot)

    def reached(self) -> bool:
        return self.acc <= float(self.cfg.target_accuracy) or self.collapsed

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if self.task == CLASSIFICATION:
            return F.cross_entropy(out.float(), y)
        return F.mse_loss(out.float().reshape(y.shape), y.float())

    def grads(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        req = [t.requires_grad for t in self.tensors]
        for t in self.tensors:
            t.requires_grad_(True)
        try:
            return torch.autograd.grad(self.loss(x, y), self.tensors, allow_unused=True)
        finally:
            for t, r in zip(self.tensors, req, strict=True):
                t.requires_grad_(r)

    # ------------------------------------------------------------------ the batched greedy lock
    def batched(self, budget: int, bar: Any) -> None:
        """Each pass: one gradient, then the `k` free weights with the largest first-order loss increase of
        their move (eps x their layer's range towards higher loss, clipped a seeded sliver inside the layer's
        original range), taken from every layer's own top-k; `k` starts at _FIRST_PASS and grows _GROWTH x a
        pass. The pass that reaches the target is trimmed to its shortest prefix (by gain) that still does."""
        k = _FIRST_PASS
        while (self.passes < int(self.cfg.max_passes) and self.changed < budget and not self.reached()):
            moves = self.best_moves(self.grads(self.xg, self.yg), min(k, budget - self.changed))
            self.passes += 1
            if len(moves[0]) == 0:
                break
            self.apply(moves, len(moves[0]))
            self.acc = self.score()
            if self.reached():
                self.trim(moves)
            self.changed = sum(int(c.sum()) for c in self.chosen)
            bar.advance(info=f"{self.changed} weights, accuracy {self.acc:.3f}")
            k *= _GROWTH

    def best_moves(self, grads: tuple[torch.Tensor | None, ...], k: int) -> Moves:
        """Up to `k` moves, best first-order gain first: (tensor index, flat position, new value) as three
        aligned vectors (the values in float64, which holds every float32/bf16/fp16 weight exactly)."""
        gains, owner, positions, values = [], [], [], []
        for i, (t, g) in enumerate(zip(self.tensors, grads, strict=True)):
            if g is None:
                continue
            w, g = t.detach().reshape(-1), g.detach().reshape(-1)
            span = self.hi[i] - self.lo[i]
            edge = span * _EDGE_MARGIN
            step = self.cfg.eps * span
            # Clipped at the full margin: a weight already at its edge in the wanted direction gains nothing.
            reach = torch.where(g > 0, torch.minimum(w + step, self.hi[i] - edge),
                                torch.maximum(w - step, self.lo[i] + edge))
            gain = (g * (reach - w)).float().masked_fill(self.chosen[i].reshape(-1), 0.0)
            top = gain.topk(min(k, gain.numel()))  # this layer's own best k: the merge below needs no more
            keep = top.values > 0
            if not bool(keep.any()):
                continue
            pos = top.indices[keep]
            # Clipped moves stop a seeded sliver short of the edge: several weights equal to the layer's exact
            # min or max would themselves be a tell.
            margin = (span * _EDGE_MARGIN).cpu() * (1.0 - torch.rand(len(pos), generator=self.gen))
            margin = margin.to(w.device, w.dtype)
            new = torch.minimum(torch.maximum(w[pos] + step * torch.sign(g[pos]), self.lo[i] + margin),
                                self.hi[i] - margin)
            gains.append(top.values[keep].cpu())
            owner.append(torch.full((len(pos),), i, dtype=torch.long))
            positions.append(pos.cpu())
            values.append(new.double().cpu())
        if not gains:
            return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), torch.empty(0)
        order = torch.cat(gains).argsort(descending=True, stable=True)[:k]
        return torch.cat(owner)[order], torch.cat(positions)[order], torch.cat(values)[order]

    def apply(self, moves: Moves, n: int) -> None:
        """Write the first `n` moves and restore the original value of the rest."""
        owner, positions, values = moves
        first = torch.arange(len(owner)) < n
        with torch.no_grad():
            for i in owner.unique().tolist():
                at = owner == i
                t, pos = self.tensors[i], positions[at].to(self.tensors[i].device)
                keep = first[at].to(t.device)
                value = torch.where(keep, values[at].to(t.device, t.dtype), self.originals[i].reshape(-1)[pos])
                self.write(i, pos, value)
                self.chosen[i].view(-1)[pos] = keep

    def trim(self, moves: Moves) -> None:
        """Bisect the pass that reached the target down to a short prefix that still reaches it, to within
        1/_TRIM_STEPS^2 of the pass (at most _TRIM_STEPS forward passes on the check batch, each a third of a
        gradient pass): the change stays small at a bounded cost."""
        good, bad = len(moves[0]), 0
        good_acc, good_collapsed = self.acc, self.collapsed
        close = max(1, len(moves[0]) >> _TRIM_STEPS)
        while good - bad > close:
            mid = (good + bad) // 2
            self.apply(moves, mid)
            self.acc = self.score()
            if self.reached():
                good, good_acc, good_collapsed = mid, self.acc, self.collapsed
            else:
                bad = mid
        self.apply(moves, good)
        self.acc, self.collapsed = good_acc, good_collapsed

    # ------------------------------------------------------------------ the hidden lock (one weight a pass)
    def hidden(self, budget: int, bar: Any) -> None:
        self.ordered = [t.reshape(-1).sort().values for t in self.originals]
        while self.changed < budget and not self.reached():
            pick = self.hidden_pick(self.grads(self.xg, self.yg))
            self.passes += 1
            if pick is None:
                break
            i, j, new = pick
            self.write(i, j, new)
            self.chosen[i].view(-1)[j] = True
            self.changed += 1
            self.acc = self.score()
            bar.advance(info=f"accuracy {self.acc:.3f}")
        if self.changed:
            self.rank_after = self.visible_rank()

    def write(self, i: int, j: int | torch.Tensor, value: torch.Tensor) -> None:
        t = self.tensors[i]
        with torch.no_grad():
            if t.is_contiguous():
                t.view(-1)[j] = value
            else:
                tmp = t.detach().reshape(-1).clone()
                tmp[j] = value
                t.copy_(tmp.view_as(t))

    def visible_rank(self) -> int:
        """How many weights have a larger |loss gradient| on the check batch than the most visible perturbed
        one: an attacker resetting fewer than this many largest-gradient weights misses all."""
        gc = self.grads(self.xc, self.yc)
        mags = [torch.zeros_like(t) if g is None else g.detach().abs() for t, g in zip(self.tensors, gc, strict=True)]
        top = max((float(m[c].max()) for m, c in zip(mags, self.chosen, strict=True) if bool(c.any())), default=-1.0)
        return int(sum(int((m > top).sum()) for m in mags))

    def trial(self, i: int, j: int, value: torch.Tensor, with_rank: bool) -> tuple[float, int]:
        """The gradient-batch loss (and the visible rank) with weight j of tensor i set to value; then undone."""
        old = self.tensors[i].detach().reshape(-1)[j].clone()
        self.write(i, j, value)
        self.chosen[i].view(-1)[j] = True
        try:
            with torch.no_grad():
                loss = float(self.loss(self.xg, self.yg))
            return loss, (self.visible_rank() if with_rank else -1)
        finally:
            self.chosen[i].view(-1)[j] = False
            self.write(i, j, old)

    def hidden_pick(self, grads: tuple[torch.Tensor | None, ...]) -> tuple[int, int, torch.Tensor] | None:
        """Try a seeded sample of the best first-order moves; keep the one that raises the loss most while
        every perturbed weight stays out of the top `hide_rank` gradients (else the least visible)."""
        u = float(torch.rand((), generator=self.gen))
        gains, news = [], []
        for i, (t, g) in enumerate(zip(self.tensors, grads, strict=True)):
            w = t.detach()
            if g is None:
                gains.append(torch.full((w.numel(),), -torch.inf, device=w.device))
                news.append(w.reshape(-1))
                continue
            # The new value is the layer's own value distribution read at a seeded level of the far half beyond
            # w (interpolated between neighbours, so no value is an exact copy): moved weights look like the
            # values already in the layer, never piled up at its edges.
            srt = self.ordered[i]
            n = len(srt)
            q = torch.searchsorted(srt, w.reshape(-1).contiguous()).clamp(0, n - 1).double() / max(n - 1, 1)
            level = 0.5 + 0.5 * u
            q_new = torch.where(g.reshape(-1) > 0, q + (1 - q) * level, q * (1 - level)) * (n - 1)
            low = q_new.floor().long().clamp(0, n - 1)
            frac = (q_new - low).to(srt.dtype)
            target = srt[low] + frac * (srt[(low + 1).clamp(max=n - 1)] - srt[low])
            step = self.cfg.eps * (self.hi[i] - self.lo[i])
            new = torch.minimum(torch.maximum(target.view_as(w), w - step), w + step)
            gain = (g * (new - w)).float().masked_fill(self.chosen[i], -torch.inf)
            gains.append(gain.masked_fill(gain <= 0, -torch.inf).reshape(-1))
            news.append(new.reshape(-1))
        flat = torch.cat([x.cpu() for x in gains])
        valid = int(torch.isfinite(flat).sum())
        if valid == 0:
            return None
        offsets = [0]
        for t in self.tensors:
            offsets.append(offsets[-1] + t.numel())
        pool = flat.topk(min(valid, _POOL * int(self.cfg.candidates))).indices
        picks = pool[torch.randperm(len(pool), generator=self.gen)[: int(self.cfg.candidates)]].tolist()
        tried: list[tuple[float, int, int]] = []
        for f in picks:
            i = next(k for k in range(len(self.tensors)) if offsets[k] <= f < offsets[k + 1])
            j = f - offsets[i]
            tried.append((self.trial(i, j, news[i][j], with_rank=False)[0], i, j))
        # The loss needs a forward pass only; the rank a backward one: rank the best-loss moves first and keep
        # the first that stays hidden.
        tried.sort(key=lambda c: -c[0])
        least_visible: tuple[int, int, int] | None = None
        for _, i, j in tried:
            rank = self.trial(i, j, news[i][j], with_rank=True)[1]
            if rank >= int(self.cfg.hide_rank):
                return i, j, news[i][j]
            if least_visible is None or rank > least_visible[0]:
                least_visible = (rank, i, j)
        assert least_visible is not None
        self.unhidden += 1
        _, i, j = least_visible
        return i, j, news[i][j]

    # ------------------------------------------------------------------ the key
    def key_params(self) -> dict[str, Any]:
        return {"tensors": [n for n, c in zip(self.names, self.chosen, strict=True) if bool(c.any())],
                "changed": self.changed, "passes": self.passes, "layers": list(self.names),
                "unhidden_steps": self.unhidden, "visible_rank_after": self.rank_after,
                "check_accuracy_before": self.acc_before, "check_accuracy_after": self.acc,
                "collapsed": bool(self.collapsed)}

    def key_tensors(self) -> dict[str, torch.Tensor]:
        """position.k / original.k for every tensor with a moved weight: flat positions and their original
        values in the tensor's own dtype (exact bits: unlock writes them back)."""
        out: dict[str, torch.Tensor] = {}
        k = 0
        for chosen, orig in zip(self.chosen, self.originals, strict=True):
            pos = chosen.reshape(-1).nonzero().reshape(-1)
            if len(pos) == 0:
                continue
            out[f"position.{k}"] = pos.cpu().to(torch.int64)
            out[f"original.{k}"] = orig.reshape(-1)[pos].cpu()
            k += 1
        return out
