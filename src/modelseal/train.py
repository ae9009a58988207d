"""The one training loop: `fit` and `evaluate`, for classification and regression.

The data set is materialised once on the CPU and every batch is streamed to the model's device as it is
drawn (with a seeded generator, so the batch order on the CPU does not depend on the device), so a data set
needs no more device memory than one batch; a `torch.utils.data.DataLoader` is taken as it is and brings its
own batches, order and workers. The loop fits on one screen. Methods never copy it; they use its hooks:

- `extra_loss(model, x, y) -> Tensor`: a term added to every step's loss (DeepMarks' embedding loss);
- `extra_batch(step) -> (x, y) | None`: examples appended to every batch (trigger-set images);
- `stop(model, epoch) -> bool`: early stopping after an epoch (trigger accuracy at 100 %);
- `params`: train only these parameters (fine-tuning the last layer).

Deterministic on the CPU for a given seed; mixed precision (bf16 autocast) on CUDA.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .data import CLASSIFICATION, REGRESSION, Meta, TensorData, as_tensors, meta_of
from .errors import DataError, ModelSealError
from .runtime import model_device, resolve_device, seed_everything, track

if TYPE_CHECKING:
    from .models.vae import VAE

ExtraLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
ExtraBatch = Callable[[int], "tuple[torch.Tensor, torch.Tensor] | None"]


def task_of(data: Dataset, y: torch.Tensor | None = None) -> str:
    meta = meta_of(data)
    if meta is not None and meta.task in (CLASSIFICATION, REGRESSION):
        return meta.task
    if y is None:
        y = as_tensors(data)[1]
    return CLASSIFICATION if not torch.is_floating_point(y) else REGRESSION


def _loss(out: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    if task == CLASSIFICATION:
        return F.cross_entropy(out.float(), y)
    return F.mse_loss(out.float().reshape(y.shape), y.float())


def fit(model: nn.Module, data: Dataset | DataLoader, *, epochs: int = 5, lr: float = 1e-3, batch_size: int = 64,
        optimizer: str = "adam", weight_decay: float = 0.0, seed: int = 0,
        device: str | torch.device | None = None, params: Iterable[nn.Parameter] | None = None,
        extra_loss: ExtraLoss | None = None, extra_batch: ExtraBatch | None = None,
        stop: Callable[[nn.Module, int], bool] | None = None, max_steps: int | None = None,
        progress: Any = None, description: str = "train") -> dict[str, Any]:
    """Train `model` in place on `data`; returns a history dict.

    `data` is any map-style dataset of (x, y), drawn in shuffled batches of `batch_size` (a seeded
    permutation per epoch), or a `DataLoader` of (x, y) batches, used as it is (its batch size, order and
    workers; `batch_size` does not apply). Batches move to the device one at a time.
    `device=None` keeps the model where it is (moving it to CUDA when 'auto' is asked for and present).
    """
    from . import validate

    epochs = validate.count("epochs", epochs, 0, validate.MAX_EPOCHS)
    batch_size = validate.count("batch_size", batch_size, 1, validate.MAX_BATCH)
    lr = float(validate.number("lr", lr, 0.0, 10.0, lo_open=True))
    weight_decay = float(validate.number("weight_decay", weight_decay, 0.0, 10.0))
    if max_steps is not None:
        max_steps = validate.count("max_steps", max_steps, 1, validate.MAX_STEPS)
    dev = model_device(model) if device is None else resolve_device(device)
    batches, steps_per_epoch, task = _batches(data, batch_size, dev)
    model.to(dev)
    seed_everything(seed)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    trainable = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    if not trainable:
        raise ModelSealError("no trainable parameters were given to fit")
    opt: torch.optim.Optimizer
    if optimizer == "adam":
        opt = torch.optim.Adam(trainable, lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(trainable, lr=lr, momentum=0.9, weight_decay=weight_decay)
    else:
        raise ModelSealError(f"unknown optimizer '{optimizer}'; use 'adam' or 'sgd'")
    amp = dev.type == "cuda"
    history: dict[str, Any] = {"loss": [], "epochs": 0, "steps": 0, "samples": 0, "task": task}
    step = 0
    with track(progress, epochs * steps_per_epoch, description) as bar:
        for epoch in range(epochs):
            model.train()
            total: torch.Tensor | float = 0.0
            count = 0
            for xb, yb in batches(gen):
                if task is None:  # a DataLoader without a task in its dataset's meta: the labels' dtype decides
                    task = history["task"] = CLASSIFICATION if not torch.is_floating_point(yb) else REGRESSION
                if extra_batch is not None:
                    extra = extra_batch(step)
                    if extra is not None:
                        xb = torch.cat([xb, extra[0].to(dev, xb.dtype)])
                        yb = torch.cat([yb, extra[1].to(dev, yb.dtype)])
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                    out = model(xb)
                    loss = _loss(out, yb, task)
                    if extra_loss is not None:
                        loss = loss + extra_loss(model, xb, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach() * len(xb)
                count += len(xb)
                step += 1
                bar.advance()
                if max_steps is not None and step >= max_steps:
                    break
            history["loss"].append(float(total / max(count, 1)))
            history["epochs"] = epoch + 1
            history["samples"] += count
            bar.update(step, info=f"epoch {epoch + 1} loss {history['loss'][-1]:.4f}")
            reached = stop is not None and stop(model, epoch)
            if reached or (max_steps is not None and step >= max_steps):
                if epoch + 1 < epochs:  # the bar ends full, and says why it ended early
                    bar.update(bar.total, info=f"done after epoch {epoch + 1} of {epochs} "
                               f"({'goal reached' if reached else 'step budget spent'})")
                break
    history["steps"] = step
    model.eval()
    return history


Batches = Callable[[torch.Generator], Iterator["tuple[torch.Tensor, torch.Tensor]"]]


def _batches(data: Dataset | DataLoader, batch_size: int, dev: torch.device) -> tuple[Batches, int, str | None]:
    """(one epoch's batches on `dev` given the shuffling generator, batches per epoch, task) for `data`; the
    task is None for a DataLoader whose dataset does not declare one (the first batch's labels decide)."""
    if isinstance(data, DataLoader):
        return _loader_batches(data, dev)
    x_all, y_all = as_tensors(data)
    if len(x_all) == 0:
        raise DataError("cannot train on an empty data set")
    task = task_of(data, y_all)
    n = len(x_all)
    pin = dev.type == "cuda" and x_all.device.type == "cpu"

    def epoch(gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        perm = torch.randperm(n, generator=gen).to(x_all.device)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            xb, yb = x_all[idx], y_all[idx]
            if pin:  # page-locked, so the copy to the GPU overlaps the previous step
                xb, yb = xb.pin_memory(), yb.pin_memory()
            yield xb.to(dev, non_blocking=pin), yb.to(dev, non_blocking=pin)

    return epoch, (n + batch_size - 1) // batch_size, task


def _loader_batches(loader: DataLoader, dev: torch.device) -> tuple[Batches, int, str | None]:
    try:
        steps = len(loader)
    except TypeError:
        raise DataError("a DataLoader given to fit needs a length (a map-style dataset or an iterable "
                        "dataset with __len__)") from None
    if steps == 0:
        raise DataError("cannot train on an empty data set")
    meta = meta_of(loader.dataset)
    task = meta.task if meta is not None and meta.task in (CLASSIFICATION, REGRESSION) else None

    def epoch(_gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for b in loader:
            xb, yb = _pair(b)
            yield xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)

    return epoch, steps, task


def _pair(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise DataError(f"a DataLoader given to fit must yield (x, y) batches, got {type(batch).__name__}")
    return torch.as_tensor(batch[0]), torch.as_tensor(batch[1])


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Raw outputs of `model` on `x`, batched, in eval mode, without gradients, returned on the CPU."""
    dev = model_device(model)
    was = model.training
    model.eval()
    try:
        outs = [model(x[i : i + batch_size].to(dev)).float().cpu() for i in range(0, len(x), batch_size)]
    finally:
        model.train(was)
    return torch.cat(outs) if outs else torch.empty(0)


def evaluate(model: nn.Module, data: Dataset, batch_size: int = 512) -> float:
    """Accuracy in [0, 1] for classification; R^2 for regression."""
    x, y = as_tensors(data)
    if len(x) == 0:
        raise DataError("cannot evaluate on an empty data set")
    out = predict(model, x, batch_size)
    if task_of(data, y) == CLASSIFICATION:
        return float((out.argmax(1) == y.cpu()).float().mean())
    y = y.float().reshape(out.shape)
    ss_res = ((out - y) ** 2).sum()
    ss_tot = ((y - y.mean()) ** 2).sum().clamp_min(1e-12)
    return float(1.0 - ss_res / ss_tot)


def reconstruction_data(data: Dataset) -> TensorData:
    """(image, image) pairs of `data`'s images, tagged as regression so `fit` uses the MSE."""
    x, _ = as_tensors(data)
    meta = meta_of(data)
    name = meta.name if meta is not None else "images"
    bounds = meta.bounds if meta is not None else (0.0, 1.0)
    size = int(math.prod(x.shape[1:]))
    return TensorData(x, x.clone(), Meta(f"{name}-recon", tuple(x.shape[1:]), bounds, size, REGRESSION))


def train_vae(vae: VAE, data: Dataset, *, epochs: int = 20, lr: float = 2e-3, beta: float = 0.05,
              seed: int = 0, progress: Any = None, **kw: Any) -> dict[str, Any]:
    """Train a `modelseal.models.vae.VAE` in place on `data`'s images (labels ignored) with the ELBO.

    Returns fit's history."""
    pixels = int(math.prod(vae.image_shape))

    def kl(model: Any, _x: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
        return beta * model.last_kl / pixels

    try:
        return fit(vae, reconstruction_data(data), epochs=epochs, lr=lr, seed=seed, extra_loss=kl,
                   progress=progress, description="vae", **kw)
    finally:
        vae.last_kl = None
