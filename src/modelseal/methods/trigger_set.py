"""Trigger-set watermark: Adi et al., "Turning Your Weakness Into a Strength: Watermarking Deep Neural
Networks by Backdooring", USENIX Security 2018.

The owner trains the model to give secret, uniformly random labels to N abstract images (k of them
appended to every batch, cycling), commits to every trigger with `SHA-256(nonce ‖ image ‖ label)`, and
later proves ownership by opening the commitments and showing that the suspect reproduces the labels far
more often than the chance rate 1/C of an independent model.

Where modelseal deviates from the paper, and why:

- Trigger images are generated from the seed (low-resolution uniform noise upsampled bilinearly, mixed
  with random sinusoids, matched to the input shape and bounds) instead of the paper's hand-picked
  abstract pictures, so a key needs no image files; a user's own folder works too (`image_folder`).
- The nonces are drawn from the seed as well, so the same seed gives the same key and the same digest.
  They hide the images inside the public commitments only as long as the seed stays secret: use a large
  random seed for a real key (the default seed 0 is for reproducible experiments).
- The paper appends 2 triggers to every batch of 100 on CIFAR-10's 50,000 images, so each trigger is
  seen about 10 times an epoch. On small data sets that rate would show each trigger less than once an
  epoch, so by default `k_per_batch` is chosen to show every trigger about 4 times an epoch (at least 2
  per batch; 13 per batch of 64 for 100 triggers and 2,000 images), which costs about 20 % more per step.
- `pretrained` mode fine-tunes at lr 3e-3 (Adam) for at most 10 epochs and stops once every trigger is
  learned plus `extra_epochs` (default 1, which helps the mark survive fine-tuning); `scratch` mode
  re-initialises the model and trains for all `epochs` (default 5, lr 1e-3), since stopping a
  from-scratch run at the first epoch with 100 % trigger accuracy would leave it under-trained.
- Verification is sequential (the paper queries all triggers at once): triggers are asked in looks of
  `batch`, in a seeded order. The reported p-value is the exact min-p adjustment over the planned looks:
  `p = P_null[min over looks of the nominal binomial tail <= the smallest one observed so far]`, computed
  by dynamic programming over the match counts. It is a valid p-value at any stopping time, so stopping as
  soon as `p <= alpha` (owned) or as soon as alpha is out of reach keeps the chance of accusing an
  independent model at most alpha, while costing far less than Bonferroni (an intact mark at 10 classes
  and alpha = 1e-6 is proved in 10 queries with looks of 5; the fixed-sample minimum is 6).
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from .. import stats, validate
from ..data import as_tensors, meta_of
from ..errors import DataError, KeyFormatError, KeyIntegrityError, ModelError, ModelSealError
from ..keys import Key
from ..models import reinit, signature_of, spec_of
from ..suspect import Suspect, as_suspect
from ..train import fit, predict
from ..verdict import DEFAULT_ALPHA, Verdict
from . import register

METHOD = "trigger-set"
MODES = ("pretrained", "scratch")
COMMITMENT_HASH = "sha256(nonce[32] || image float32 little-endian C-order || label int64 little-endian)"
NONCE_BYTES = 32
VIEWS_PER_EPOCH = 4  # default k shows every trigger about this often per epoch
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


# ---------------------------------------------------------------------------------------------- method
@register(METHOD, family="watermark", access="labels")
@dataclass
class TriggerSet:
    """Trigger-set watermark. `embed(model, data) -> (marked, key)`; `verify(suspect, key) -> Verdict`."""

    n: int = 100  # number of trigger images in the key
    mode: str = "pretrained"  # pretrained: fine-tune the given model; scratch: re-initialise it, then train
    k_per_batch: int | None = None  # trigger images appended to every batch (None: each trigger about 4 times an epoch)
    epochs: int | None = None  # most training epochs (None: 10 when pretrained, 5 from scratch)
    extra_epochs: int = 1  # epochs trained on after every trigger is learned (helps the mark survive fine-tuning)
    lr: float | None = None  # learning rate of the embedding (None: 3e-3 pretrained, 1e-3 scratch; Adam)
    batch_size: int = 64
    seed: int = 0
    image_folder: str | None = None  # folder of your own trigger images (None: images generated from the seed)
    device: str | None = None

    # what the verifier sets (never read from a key): name -> (default, meaning)
    key_tensors = ("images", "labels", "nonces")
    verify_params = {
        "alpha": (DEFAULT_ALPHA, "false-accusation rate accepted (0 < alpha < 1)"),
        "batch": (5, "triggers asked per look of the sequential test"),
        "max_queries": (None, "most triggers to ask (default: all of them)"),
    }

    # ------------------------------------------------------------------------------------ embed
    def embed(self, model: nn.Module, data: Dataset, progress: Any = None) -> tuple[nn.Module, Key]:
        """Train the triggers into a copy of `model` (or into a freshly initialised one in `scratch` mode)."""
        self._check_params()
        if not isinstance(model, nn.Module):
            raise ModelError(f"trigger-set embeds into an nn.Module, got {type(model).__name__}")
        x_data, _ = as_tensors(data)
        meta = meta_of(data)
        input_shape = tuple(int(s) for s in x_data.shape[1:])
        sig = signature_of(model, input_shape)
        if list(sig["input_shape"]) != list(input_shape):
            raise DataError(f"the data has inputs of shape {input_shape} but the model takes "
                            f"{tuple(sig['input_shape'])}; give the data the model was trained on")
        classes = int(sig["output_size"])
        if (meta is not None and meta.task != "classification") or classes < 2:
            raise ModelError("trigger-set watermarks classifiers (2 or more classes); this model is not one")
        bounds = _bounds_of(model, meta)
        images = (load_trigger_folder(self.image_folder, self.n, input_shape, bounds, self.seed)
                  if self.image_folder else make_triggers(self.n, input_shape, bounds, self.seed))
        labels = _rng(self.seed, 2).integers(0, classes, size=self.n).astype(np.int64)
        nonces = _rng(self.seed, 3).integers(0, 256, size=(self.n, NONCE_BYTES), dtype=np.uint8)
        labels_t = torch.from_numpy(labels)

        marked = copy.deepcopy(model)
        if self.mode == "scratch":
            reinit(marked, self.seed)
        cycle = torch.from_numpy(_rng(self.seed, 4).permutation(self.n))
        steps = -(-len(x_data) // self.batch_size)
        k = self.k_per_batch or max(2, math.ceil(VIEWS_PER_EPOCH * self.n / steps))

        def extra_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            idx = cycle[(torch.arange(k) + step * k) % self.n]
            return images[idx], labels_t[idx]

        learned_at: list[int] = []

        def stop(m: nn.Module, epoch: int) -> bool:
            if self.mode != "pretrained":
                return False
            if not learned_at and trigger_accuracy(m, images, labels_t) >= 1.0:
                learned_at.append(epoch)
            return bool(learned_at) and epoch >= learned_at[0] + self.extra_epochs

        epochs = self.epochs if self.epochs is not None else (10 if self.mode == "pretrained" else 5)
        lr = self.lr if self.lr is not None else (3e-3 if self.mode == "pretrained" else 1e-3)
        fit(marked, data, epochs=epochs, lr=lr, batch_size=self.batch_size, seed=self.seed,
            device=self.device, extra_batch=extra_batch, stop=stop, progress=progress,
            description="embed trigger-set")
        params = {"n": self.n, "mode": self.mode, "k_per_batch": k, "seed": self.seed,
                  "num_classes": classes, "source": "folder" if self.image_folder else "abstract"}
        key = Key(METHOD, params=params, signature={"input_shape": list(input_shape), "output_size": classes},
                  tensors={"images": images, "labels": labels_t, "nonces": torch.from_numpy(nonces)})
        return marked, key

    # ------------------------------------------------------------------------------------ verify
    def verify(self, suspect: Suspect | nn.Module | str, key: Key, alpha: float = DEFAULT_ALPHA,
               max_queries: int | None = None, batch: int = 5) -> Verdict:
        """Query the triggers sequentially and judge whether `suspect` carries the watermark.

        alpha, batch (the look size) and max_queries are the verifier's; the key's parameters never set them.
        """
        images, labels, _ = key_tensors(key)
        alpha = validate.alpha(alpha)
        batch = validate.count("batch", batch)
        if max_queries is not None:
            max_queries = validate.count("max_queries", max_queries)
        suspect = as_suspect(suspect)
        key.check_signature(suspect.input_shape, suspect.output_size())
        classes = int(key.signature["output_size"])
        n = len(labels)
        budget = min(x for x in (n, max_queries, suspect.remaining()) if x is not None)
        order = torch.from_numpy(_rng(int(key.params.get("seed", 0)), 5).permutation(n))
        start_queries = suspect.queries
        asked: list[int] = []
        answers: list[int] = []

        def answer(lo: int, hi: int) -> np.ndarray:
            idx = order[lo:hi]
            got = suspect.labels(images[idx]).reshape(-1).long()
            asked.extend(int(i) for i in idx)
            answers.extend(int(a) for a in got)
            return (got == labels[idx]).numpy()

        res = stats.sequential_test(answer, budget, 1.0 / classes, alpha, batch)
        details = {**res, "null_rate": 1.0 / classes, "triggers": n}
        verifier = {"alpha": alpha, "batch": batch, "max_queries": max_queries, "budget": budget}
        if not res["reachable"]:
            details["not_judged"] = (
                f"a budget of {budget} queries cannot reach alpha = {alpha:g} even if every trigger matched "
                f"(key: {n} triggers, max_queries: {max_queries}, suspect allows: {suspect.remaining()}); "
                "allow more queries or use a key with more triggers")
        return Verdict(METHOD, owned=res["owned"], score=res["score"], threshold=res["threshold"],
                       p_value=res["p_value"], alpha=alpha, queries=suspect.queries - start_queries,
                       details=details, judged=res["reachable"],
                       transcript={"verifier": verifier, "asked": asked, "answers": answers})

    # ------------------------------------------------------------------------------------ helpers
    def _check_params(self) -> None:
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 1:
            raise ModelSealError(f"n (number of triggers) must be a positive integer, got {self.n!r}")
        if self.mode not in MODES:
            raise ModelSealError(f"unknown trigger-set mode '{self.mode}'; use 'pretrained' or 'scratch'")
        if self.k_per_batch is not None and (not isinstance(self.k_per_batch, int) or self.k_per_batch < 1):
            raise ModelSealError(f"k_per_batch must be a positive integer, got {self.k_per_batch!r}")
        if self.epochs is not None and (not isinstance(self.epochs, int) or self.epochs < 1):
            raise ModelSealError(f"epochs must be a positive integer, got {self.epochs!r}")
        if not isinstance(self.extra_epochs, int) or self.extra_epochs < 0:
            raise ModelSealError(f"extra_epochs must be a non-negative integer, got {self.extra_epochs!r}")
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr)
                                        and self.lr > 0):
            raise ModelSealError(f"lr must be a positive number, got {self.lr!r}")



def trigger_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of triggers the model labels as the key says."""
    return float((predict(model, images).argmax(1) == labels).float().mean())


def key_tensors(key: Key) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images float32, labels int64, nonces uint8) of a trigger-set key, checked for consistency."""
    if key.method != METHOD:
        raise KeyFormatError(f"this is a '{key.method}' key, not a trigger-set key")
    try:
        images, labels, nonces = key.tensors["images"], key.tensors["labels"], key.tensors["nonces"]
    except KeyError as e:
        raise KeyFormatError(f"trigger-set key lacks the tensor {e}; use a key made by trigger-set "
                             "embed") from None
    n = len(labels)
    shape = list(key.signature.get("input_shape", images.shape[1:]))
    classes = key.signature.get("output_size")
    if (images.dtype != torch.float32 or labels.dtype != torch.int64 or nonces.dtype != torch.uint8
            or labels.dim() != 1 or n < 1 or len(images) != n or list(images.shape[1:]) != shape
            or tuple(nonces.shape) != (n, NONCE_BYTES)):
        raise KeyFormatError("trigger-set key has inconsistent tensors (shapes or dtypes of images, labels "
                             "or nonces)")
    if not isinstance(classes, int) or classes < 2 or int(labels.min()) < 0 or int(labels.max()) >= classes:
        raise KeyFormatError("trigger-set key has labels outside the model's classes")
    return images, labels, nonces


# ---------------------------------------------------------------------------------------------- triggers
def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) % 2**63, stream])


def _bounds_of(model: nn.Module, meta: Any) -> tuple[float, float]:
    spec = spec_of(model)
    if spec and spec.get("bounds"):
        return float(spec["bounds"][0]), float(spec["bounds"][1])
    if meta is not None and getattr(meta, "bounds", None):
        return float(meta.bounds[0]), float(meta.bounds[1])
    return 0.0, 1.0


def make_triggers(n: int, input_shape: Sequence[int], bounds: tuple[float, float], seed: int) -> torch.Tensor:
    """n abstract images of `input_shape` in `bounds`: smooth noise mixed with random sinusoids."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 1:
        chans, spatial = 1, shape
    elif len(shape) == 2:
        chans, spatial = 1, shape
    else:
        chans, spatial = shape[0], (shape[1:] if len(shape) == 3 else (math.prod(shape[1:]),))
    rng = _rng(seed, 1)
    low = tuple(max(2, s // 6) for s in spatial)
    noise = torch.from_numpy(rng.random((n, chans, *low), dtype=np.float32))
    mode = "bilinear" if len(spatial) == 2 else "linear"
    noise = F.interpolate(noise, size=spatial, mode=mode, align_corners=False)
    coords = torch.meshgrid(*[torch.linspace(0, 1, s) for s in spatial], indexing="ij")
    waves = torch.zeros(n, chans, *spatial)
    for _ in range(3):
        freq = torch.from_numpy(rng.uniform(0.5, 4.0, (n, chans, len(spatial))).astype(np.float32))
        sign = torch.from_numpy(rng.choice([-1.0, 1.0], (n, chans, len(spatial))).astype(np.float32))
        phase = torch.from_numpy(rng.uniform(0, 2 * math.pi, (n, chans)).astype(np.float32))
        amp = torch.from_numpy(rng.uniform(0.3, 1.0, (n, chans)).astype(np.float32))
        arg = sum((freq * sign)[..., d].reshape(n, chans, *[1] * len(spatial)) * coords[d]
                  for d in range(len(spatial)))
        pad = [1] * len(spatial)
        waves += amp.reshape(n, chans, *pad) * torch.sin(2 * math.pi * arg + phase.reshape(n, chans, *pad))
    mix = torch.from_numpy(rng.uniform(0.3, 0.7, (n, 1, *[1] * len(spatial))).astype(np.float32))
    img = mix * noise + (1 - mix) * (waves - waves.amin(dim=tuple(range(2, waves.dim())), keepdim=True))
    flat = img.reshape(n, -1)
    lo_v, hi_v = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    flat = (flat - lo_v) / (hi_v - lo_v).clamp_min(1e-8)
    lo, hi = bounds
    return (lo + (hi - lo) * flat).reshape(n, *shape).float().contiguous()


def load_trigger_folder(folder: str | os.PathLike, n: int, input_shape: Sequence[int],
                        bounds: tuple[float, float], seed: int) -> torch.Tensor:
    """n images from a user's folder (a seeded choice when it holds more), resized to `input_shape`."""
    from PIL import Image, UnidentifiedImageError

    path = Path(folder)
    if not path.is_dir():
        raise DataError(f"trigger image folder {path} does not exist or is not a folder")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
    if len(files) < n:
        raise DataError(f"{path} holds {len(files)} images but n = {n} triggers were asked for; "
                        f"add images or pass n={len(files)}")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3 and shape[0] in (1, 3):
        chans, (h, w) = shape[0], shape[1:]
    elif len(shape) == 2:
        chans, (h, w) = 1, shape
    else:
        raise DataError(f"trigger images from a folder need an image input (C,H,W) with 1 or 3 channels, "
                        f"but the model takes {shape}; use the generated abstract triggers")
    pick = sorted(_rng(seed, 1).permutation(len(files))[:n].tolist())
    out = []
    for i in pick:
        try:
            with Image.open(files[i]) as im:
                im = im.convert("L" if chans == 1 else "RGB").resize((w, h), Image.BILINEAR)
                arr = np.asarray(im, dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"cannot read trigger image {files[i]}: {e}") from None
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        out.append(arr)
    lo, hi = bounds
    return torch.from_numpy(lo + (hi - lo) * np.stack(out)).reshape(n, *shape).float().contiguous()


def evidence_open(key: Key, transcript: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The secret part an evidence file reveals: only the asked triggers (image, label, nonce), each of
    which opens its own public commitment."""
    images, labels, nonces = key_tensors(key)
    idx = torch.tensor(transcript["asked"], dtype=torch.int64)
    return {"index": idx, "images": images[idx], "labels": labels[idx], "nonces": nonces[idx]}


def evidence_check(opened: dict[str, torch.Tensor], public: dict[str, Any]) -> None:
    """Every opened trigger must open its commitment (KeyIntegrityError naming the first that does not)."""
    com = public.get("commitments")
    if not isinstance(com, list):
        raise KeyIntegrityError("the commitment has no per-trigger commitments; it is not a trigger-set one")
    idx, imgs = opened["index"].tolist(), opened["images"].numpy()
    labs, nons = opened["labels"].numpy(), opened["nonces"].numpy()
    for j, i in enumerate(idx):
        if not 0 <= i < len(com) or _trigger_digest(nons[j], imgs[j], int(labs[j])) != com[i]:
            raise KeyIntegrityError(f"opened trigger {i} does not match its commitment: its image, label or "
                                    "nonce was changed")


def recheck(opened: dict[str, torch.Tensor], transcript: dict[str, Any], public: dict[str, Any]
            ) -> dict[str, Any]:
    """Recompute the sequential test from an evidence transcript and the opened triggers."""
    v = transcript["verifier"]
    if opened["index"].tolist() != list(transcript["asked"]):
        raise ValueError("the opened triggers are not the ones the transcript says were asked")
    labels = opened["labels"].tolist()
    answers = transcript["answers"]
    if len(answers) != len(labels):
        raise ValueError(f"{len(answers)} answers for {len(labels)} opened triggers")
    hits = [int(a) == int(b) for a, b in zip(answers, labels, strict=True)]
    p0 = 1.0 / int(public["signature"]["output_size"])
    return stats.sequential_replay(hits, int(v["budget"]), p0, float(v["alpha"]), int(v["batch"]))


# ---------------------------------------------------------------------------------------------- commitments
def _trigger_digest(nonce: np.ndarray, image: np.ndarray, label: int) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(nonce, dtype=np.uint8).tobytes())
    h.update(np.ascontiguousarray(image, dtype="<f4").tobytes())
    h.update(np.asarray(label, dtype="<i8").tobytes())
    return h.hexdigest()


def commitment_extra(key: Key) -> dict[str, Any]:
    """Trigger-set's addition to the generic commitment: one SHA-256 commitment per trigger, so a verifier
    can be shown only the triggers that were asked."""
    images, labels, nonces = key_tensors(key)
    imgs, labs, nons = images.numpy(), labels.numpy(), nonces.numpy()
    return {"trigger_hash": COMMITMENT_HASH,
            "commitments": [_trigger_digest(nons[i], imgs[i], int(labs[i])) for i in range(len(labs))]}


def check_commitment_extra(key: Key, public: dict[str, Any]) -> list[str]:
    """Open the key's triggers against the per-trigger commitments; what differs (empty if none)."""
    com = public.get("commitments")
    if not isinstance(com, list):
        return ["the commitment has no per-trigger commitments"]
    images, labels, nonces = key_tensors(key)
    if len(com) != len(labels):
        return [f"the key opens {len(labels)} triggers but {len(com)} were committed"]
    imgs, labs, nons = images.numpy(), labels.numpy(), nonces.numpy()
    for i, c in enumerate(com):
        if _trigger_digest(nons[i], imgs[i], int(labs[i])) != c:
            return [f"trigger {i} of the key does not match its commitment (its image, label or nonce was "
                    "changed after committing)"]
    return []


TriggerSet.commitment_extra = staticmethod(commitment_extra)
TriggerSet.check_commitment_extra = staticmethod(check_commitment_extra)
TriggerSet.evidence_open = staticmethod(evidence_open)
TriggerSet.evidence_check = staticmethod(evidence_check)
TriggerSet.recheck = staticmethod(recheck)
