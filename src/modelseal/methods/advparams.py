"""AdvParams parameter locking: Xue, Wu, Wang, Zhang, Liu, "AdvParams: An Active DNN Intellectual Property
Protection Technique via Adversarial Perturbation Based Parameter Encryption", IEEE TETC 2022
(arXiv 2105.13697).

The owner perturbs a handful of weights in the loss-increasing direction until the model is useless, and
keeps their positions and original values as the key; with the key the model is restored bit-for-bit.

Where modelseal deviates from the paper, and why:

- Greedy single-parameter steps: each step recomputes the loss gradient and moves the one not-yet-chosen
  weight with the largest |gradient| by `eps` x (its layer's max - min) towards higher loss. The paper
  perturbs a few parameters per iteration with an FGSM-like step; one at a time spends the budget where
  the current (already perturbed) model is weakest and makes the choice deterministic for a seed.
- Every move is clipped inside the layer's ORIGINAL [min, max], so no locked value is an outlier of its
  layer (the paper's stealthiness constraint); a weight already at that edge in the wanted direction
  cannot move and is skipped, and every weight is chosen at most once.
- The gradient is taken on one seeded batch of `batch_size` examples of the given data, and accuracy is
  checked after every step on a second, disjoint seeded batch of the same size (the same batch when the
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

import contextlib
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
)
from ..keys import Key
from ..models import signature_of
from ..runtime import model_device, track
from ..schema import param, secret_seed_param
from ..train import CLASSIFICATION, task_of
from . import register
from .base import Lock

_EDGE_MARGIN = 0.01
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

    max_params: int = param(50, "most weights perturbed (the CLI grows it when not set and the target is missed)",
                            lo=1, hi=validate.MAX_COUNT)
    eps: float = param(0.5, "step as a fraction of the layer's value range", lo=0, hi=1e3, lo_open=True)
    target_accuracy: float = param(0.1, "stop once accuracy on the check batch is at or below this", lo=0, hi=1)
    batch_size: int = param(256, "examples in the gradient batch and in the separate check batch", lo=1,
                            hi=validate.MAX_BATCH)
    hide_rank: int = param(0, "keep every perturbed weight out of the top hide_rank of the locked model's "
                           "|loss gradient| on the check batch, where a key-free attacker looks (0: off, the "
                           "paper's greedy step)", lo=0, hi=validate.MAX_COUNT)
    candidates: int = param(16, "with hide_rank: moves tried per step, a seeded sample of the 32 x as many "
                            "with the largest first-order loss increase", lo=1, hi=1024)
    layers: list[str] | None = param(None, "module or parameter names that may be perturbed (none: every "
                                     "Conv/Linear weight)")
    seed: int = secret_seed_param("random seed of the gradient and check batches")

    def check(self) -> None:
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
        """A locked copy of `model` and the Key that unlocks it. No retraining; `model` is left untouched."""
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
        task = task_of(data, y_all)
        signature = signature_of(model, tuple(x_all.shape[1:]))
        original_digest = state_digest(model)

        locked = copy.deepcopy(model)
        locked.eval()
        dev = model_device(locked)
        gen = torch.Generator().manual_seed(int(self.seed))
        perm = torch.randperm(len(x_all), generator=gen)
        b = int(self.batch_size)
        grad_idx = perm[:b]
        check_idx = perm[b : 2 * b] if len(perm) >= 2 * b else grad_idx
        xg, yg = x_all[grad_idx].to(dev), y_all[grad_idx].to(dev)
        xc, yc = x_all[check_idx].to(dev), y_all[check_idx].to(dev)

        names = self._targets(locked)
        params = dict(locked.named_parameters())
        tensors = [params[n] for n in names]
        lo = [t.detach().min() for t in tensors]
        hi = [t.detach().max() for t in tensors]
        chosen = [torch.zeros(t.shape, dtype=torch.bool, device=t.device) for t in tensors]
        originals = [t.detach().clone() for t in tensors]
        ordered = [t.reshape(-1).sort().values for t in originals] if self.hide_rank else []

        collapsed = False

        def score() -> float:
            nonlocal collapsed
            with torch.no_grad():
                out = locked(xc)
                if task == CLASSIFICATION:
                    pred = out.argmax(1)
                    collapsed = len(xc) > 1 and bool((pred == pred[0]).all())
                    return float((pred == yc).float().mean())
                y = yc.float().reshape(out.shape)
                ss_tot = ((y - y.mean()) ** 2).sum().clamp_min(1e-12)
                return float(1.0 - ((out.float() - y) ** 2).sum() / ss_tot)

        def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            if task == CLASSIFICATION:
                return F.cross_entropy(out.float(), y)
            return F.mse_loss(out.float().reshape(y.shape), y.float())

        def write(t: torch.Tensor, j: int, value: torch.Tensor) -> None:
            with torch.no_grad():
                if t.is_contiguous():
                    t.view(-1)[j] = value
                else:
                    tmp = t.detach().reshape(-1).clone()
                    tmp[j] = value
                    t.copy_(tmp.view_as(t))

        def greedy_pick(grads: tuple[torch.Tensor | None, ...]) -> tuple[int, int, torch.Tensor] | None:
            """The paper's step: the free weight with the largest |gradient|, moved eps x its layer's range."""
            best: tuple[float, int, int] | None = None
            for i, (t, g) in enumerate(zip(tensors, grads, strict=True)):
                if g is None:
                    continue
                w = t.detach()
                # A weight at its layer's edge in the loss-increasing direction cannot move: skip it.
                edge = (hi[i] - lo[i]) * _EDGE_MARGIN
                stuck = ((g > 0) & (w >= hi[i] - edge)) | ((g < 0) & (w <= lo[i] + edge)) | (g == 0)
                s = g.abs().masked_fill(chosen[i] | stuck, -1.0)
                j = int(s.reshape(-1).argmax())
                v = float(s.reshape(-1)[j])
                if v > 0 and (best is None or v > best[0]):
                    best = (v, i, j)
            if best is None:
                return None
            _, i, j = best
            g_ij = grads[i].reshape(-1)[j]  # type: ignore[union-attr]
            step = self.eps * (hi[i] - lo[i]) * torch.sign(g_ij)
            cur = tensors[i].detach().reshape(-1)[j]
            # Clipped moves stop a seeded sliver short of the edge: several weights equal to the
            # layer's exact min or max would themselves be a tell.
            margin = (hi[i] - lo[i]) * _EDGE_MARGIN * (1.0 - float(torch.rand((), generator=gen)))
            new = torch.minimum(torch.maximum(cur + step.to(cur.dtype), lo[i] + margin), hi[i] - margin)
            return i, j, new

        sizes = [t.numel() for t in tensors]
        offsets = [0]
        for n in sizes:
            offsets.append(offsets[-1] + n)

        def visible_rank() -> int:
            """How many weights have a larger |loss gradient| on the check batch than the most visible
            perturbed one: an attacker resetting fewer than this many largest-gradient weights misses all."""
            gc = torch.autograd.grad(loss_fn(locked(xc), yc), tensors, allow_unused=True)
            mags = [torch.zeros_like(t) if g is None else g.detach().abs() for t, g in zip(tensors, gc, strict=True)]
            top = max((float(m[c].max()) for m, c in zip(mags, chosen, strict=True) if bool(c.any())), default=-1.0)
            return int(sum(int((m > top).sum()) for m in mags))

        unhidden = 0

        def trial(i: int, j: int, value: torch.Tensor, with_rank: bool) -> tuple[float, int]:
            """The gradient-batch loss (and the visible rank) with weight j of tensor i set to value; then undone."""
            t = tensors[i]
            old = t.detach().reshape(-1)[j].clone()
            write(t, j, value)
            chosen[i].view(-1)[j] = True
            try:
                with torch.no_grad():
                    loss = float(loss_fn(locked(xg), yg))
                return loss, (visible_rank() if with_rank else -1)
            finally:
                chosen[i].view(-1)[j] = False
                write(t, j, old)

        def hidden_pick(grads: tuple[torch.Tensor | None, ...]) -> tuple[int, int, torch.Tensor] | None:
            """Try a seeded sample of the best first-order moves; keep the one that raises the loss most
            while every perturbed weight stays out of the top `hide_rank` gradients (else the least visible)."""
            nonlocal unhidden
            u = float(torch.rand((), generator=gen))
            gains, news = [], []
            for i, (t, g) in enumerate(zip(tensors, grads, strict=True)):
                w = t.detach()
                if g is None:
                    gains.append(torch.full((w.numel(),), -torch.inf, device=w.device))
                    news.append(w.reshape(-1))
                    continue
                # The new value is the layer's own value distribution read at a seeded level of the far half
                # beyond w (interpolated between neighbours, so no value is an exact copy): moved weights look
                # like the values already in the layer, never piled up at its edges.
                srt = ordered[i]
                n = len(srt)
                q = torch.searchsorted(srt, w.reshape(-1).contiguous()).clamp(0, n - 1).double() / max(n - 1, 1)
                level = 0.5 + 0.5 * u
                q_new = torch.where(g.reshape(-1) > 0, q + (1 - q) * level, q * (1 - level)) * (n - 1)
                low = q_new.floor().long().clamp(0, n - 1)
                frac = (q_new - low).to(srt.dtype)
                target = srt[low] + frac * (srt[(low + 1).clamp(max=n - 1)] - srt[low])
                span = hi[i] - lo[i]
                step = self.eps * span
                new = torch.minimum(torch.maximum(target.view_as(w), w - step), w + step)
                gain = (g * (new - w)).float().masked_fill(chosen[i], -torch.inf)
                gains.append(gain.masked_fill(gain <= 0, -torch.inf).reshape(-1))
                news.append(new.reshape(-1))
            flat = torch.cat([x.cpu() for x in gains])
            valid = int(torch.isfinite(flat).sum())
            if valid == 0:
                return None
            pool = flat.topk(min(valid, _POOL * int(self.candidates))).indices
            picks = pool[torch.randperm(len(pool), generator=gen)[: int(self.candidates)]].tolist()
            tried: list[tuple[float, int, int]] = []
            for f in picks:
                i = next(k for k in range(len(tensors)) if offsets[k] <= f < offsets[k + 1])
                j = f - offsets[i]
                tried.append((trial(i, j, news[i][j], with_rank=False)[0], i, j))
            # The loss needs a forward pass only; the rank a backward one: rank the best-loss moves first
            # and keep the first that stays hidden.
            tried.sort(key=lambda c: -c[0])
            least_visible: tuple[int, int, int] | None = None
            for _, i, j in tried:
                rank = trial(i, j, news[i][j], with_rank=True)[1]
                if rank >= int(self.hide_rank):
                    return i, j, news[i][j]
                if least_visible is None or rank > least_visible[0]:
                    least_visible = (rank, i, j)
            assert least_visible is not None
            unhidden += 1
            _, i, j = least_visible
            return i, j, news[i][j]

        acc_before = score()
        acc = acc_before
        steps: list[float] = []
        req = [t.requires_grad for t in tensors]
        for t in tensors:
            t.requires_grad_(True)
        stack = contextlib.ExitStack()
        bar = stack.enter_context(track(progress, int(self.max_params), "advparams lock"))
        rank_after: int | None = None
        try:
            while len(steps) < int(self.max_params) and acc > float(self.target_accuracy) and not collapsed:
                grads = torch.autograd.grad(loss_fn(locked(xg), yg), tensors, allow_unused=True)
                pick = hidden_pick(grads) if self.hide_rank else greedy_pick(grads)
                if pick is None:
                    break
                i, j, new = pick
                write(tensors[i], j, new)
                chosen[i].view(-1)[j] = True
                acc = score()
                steps.append(acc)
                bar.advance(info=f"accuracy {acc:.3f}")
            if self.hide_rank and steps:
                rank_after = visible_rank()
        finally:
            for t, r in zip(tensors, req, strict=True):
                t.requires_grad_(r)
            stack.close()

        key_tensors: dict[str, torch.Tensor] = {}
        used: list[str] = []
        for i, name in enumerate(names):
            pos = chosen[i].reshape(-1).nonzero().reshape(-1).cpu()
            if len(pos) == 0:
                continue
            k = len(used)
            used.append(name)
            key_tensors[f"position.{k}"] = pos.to(torch.int64)
            key_tensors[f"original.{k}"] = originals[i].reshape(-1)[pos.to(originals[i].device)].cpu()
        reached = acc <= float(self.target_accuracy) or collapsed
        if not reached:
            warnings.warn(f"advparams stopped at accuracy {acc:.3f} on the check batch after {len(steps)} "
                          f"parameters, above the target {self.target_accuracy}; raise max_params or eps",
                          stacklevel=2)
        n_total = sum(p.numel() for p in locked.parameters())
        key = Key(
            method="advparams",
            params={
                "tensors": used,
                "changed": len(steps),
                "total_params": int(n_total),
                "max_params": int(self.max_params), "eps": float(self.eps),
                "target_accuracy": float(self.target_accuracy), "batch_size": b, "seed": int(self.seed),
                "layers": list(names), "hide_rank": int(self.hide_rank), "candidates": int(self.candidates),
                "unhidden_steps": unhidden, "visible_rank_after": rank_after,
                "check_accuracy_before": acc_before, "check_accuracy_after": acc,
                "target_reached": bool(reached), "collapsed": bool(collapsed),
                "original_digest": original_digest,
                "locked_digest": state_digest(locked),
            },
            tensors=key_tensors,
            signature=signature,
        )
        return locked, key

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
