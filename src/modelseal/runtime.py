"""Device, seeds and the one progress protocol shared by every long-running verb.

Progress: every verb that takes long (training, embedding, extracting, attacking, a bench run) takes a
`progress` argument and reports through `track(progress, total, description)`. `progress` may be

- `None` (the default): a rich bar when stderr is a terminal, else plain log lines on stderr at most every
  `LOG_EVERY_S` seconds (so notebooks and CI logs show progress too);
- `True` / `False`: force the rich bar / stay silent;
- a `rich.progress.Progress` the caller owns (a task is added to it; the CLI hands one to nested work);
- any callable `fn(done, total, description, info)`.

Library code never prints; the log lines go through `logging` ("modelseal" logger) to stderr.
"""

from __future__ import annotations

import contextlib
import logging
import random
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import ModelSealError

LOG_EVERY_S = 10.0
log = logging.getLogger("modelseal")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or a torch.device; a clear error when CUDA is absent."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelSealError(f"unknown device '{device}'; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelSealError("--device cuda was asked for, but no CUDA device is available; use --device cpu")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class Tracker:
    """What `track` yields: `advance(n=1, info="")` and `update(done, info="")`."""

    def __init__(self, sink: Callable[[int, str], None], total: int):
        self._sink, self.total, self.done = sink, int(total), 0

    def advance(self, n: int = 1, info: str = "") -> None:
        self.done += n
        self._sink(self.done, info)

    def update(self, done: int, info: str = "") -> None:
        self.done = int(done)
        self._sink(self.done, info)


def _rich_bar(transient: bool = True):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[info]}"), transient=transient,
                    console=None)


def make_progress(progress: Any = None) -> Any:
    """Resolve a `progress` argument once (the CLI calls this and hands the result down)."""
    if progress is None:
        progress = sys.stderr.isatty()
        return _rich_bar() if progress else "log"
    if progress is True:
        return _rich_bar()
    return progress


@contextlib.contextmanager
def track(progress: Any, total: int, description: str) -> Iterator[Tracker]:
    """Report `total` units of work under `description` through the one progress protocol (see module)."""
    progress = make_progress(progress)
    if progress is False:
        yield Tracker(lambda _d, _i: None, total)
        return
    if progress == "log":
        state: dict[str, Any] = {"last": time.monotonic(), "final": None}

        def log_line(done: int, info: str) -> None:
            if done >= total:  # the end is said once, with the last word of it, when the work is over
                state["final"] = (done, info)
                return
            now = time.monotonic()
            if now - state["last"] >= LOG_EVERY_S:
                state["last"] = now
                log.info("%s: %d/%d %s", description, done, total, info)

        _ensure_log_handler()
        try:
            yield Tracker(log_line, total)
        finally:
            if state["final"] is not None:
                log.info("%s: %d/%d %s", description, *state["final"][:1], total, state["final"][1])
        return
    if hasattr(progress, "add_task"):
        started = False
        if not getattr(progress, "live", None) or not progress.live.is_started:
            progress.start()
            started = True
        tid = progress.add_task(description, total=total, info="")
        try:
            yield Tracker(lambda done, info: progress.update(tid, completed=done, info=info), total)
        finally:
            progress.remove_task(tid)
            if started:
                progress.stop()
        return
    if callable(progress):
        yield Tracker(lambda done, info: progress(done, total, description, info), total)
        return
    raise ModelSealError(f"progress must be None, a bool, a rich Progress or a callable, got {type(progress).__name__}")


def _ensure_log_handler() -> None:
    if not log.handlers and not logging.getLogger().handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(h)
        log.setLevel(logging.INFO)
        log.propagate = False
