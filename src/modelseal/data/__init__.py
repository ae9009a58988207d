"""Data sets as tensors with metadata, split into disjoint owner / attacker / test parts.

`load(name)` understands the embedded sets that ship inside installed packages (`mnist5k`, `digits`,
`diabetes`, `sample-images`) and users' own files (`idx:DIR`, `cifar10:DIR`, `cifar100:DIR`,
`npz:PATH`, `csv:PATH`, `folder:DIR`; an existing folder, .npz or .csv path also works alone). Nothing is
downloaded. Every split is a map-style `torch.utils.data.Dataset`
of `(x, y)` pairs (a `TensorData`), so anything that takes data also takes a user's own `TensorDataset`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError

CLASSIFICATION = "classification"
REGRESSION = "regression"
GENERATIVE = "generative"


@dataclass(frozen=True)
class InputSpec:
    """What a model takes: one input's shape (no batch dimension) and the value bounds (lo, hi)."""

    shape: tuple[int, ...]
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if not self.shape or any(int(s) <= 0 for s in self.shape):
            raise DataError(f"input shape must be non-empty positive integers, got {self.shape}")
        lo, hi = self.bounds
        if not lo < hi:
            raise DataError(f"input bounds must satisfy lo < hi, got {self.bounds}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "bounds", (float(lo), float(hi)))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.shape


@dataclass(frozen=True)
class Meta:
    """Metadata of a data set: input shape and bounds, number of classes (or output size), task."""

    name: str
    input_shape: tuple[int, ...]
    bounds: tuple[float, float]
    num_classes: int
    task: str = CLASSIFICATION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def output_size(self) -> int:
        return self.num_classes

    @property
    def shape(self) -> tuple[int, ...]:
        return self.input_shape

    def spec(self) -> InputSpec:
        return InputSpec(self.input_shape, self.bounds)


def as_input_spec(spec: InputSpec | Meta | Any) -> InputSpec:
    """Accept a Meta, an InputSpec, or anything with `input_shape`/`shape` and `bounds`."""
    if isinstance(spec, InputSpec):
        return spec
    if isinstance(spec, Meta):
        return spec.spec()
    shape = getattr(spec, "input_shape", None) or getattr(spec, "shape", None)
    bounds = getattr(spec, "bounds", (0.0, 1.0))
    if shape is None:
        raise DataError(f"expected an InputSpec(shape, bounds) or a Meta, got {type(spec).__name__}")
    return InputSpec(tuple(shape), tuple(bounds))


class TensorData(Dataset):
    """A map-style dataset of `(x, y)` pairs held as two tensors, with its `meta`."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, meta: Meta | None = None):
        if len(x) != len(y):
            raise DataError(f"x and y differ in length: {len(x)} vs {len(y)}")
        self.x, self.y, self.meta = x, y, meta

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, self.y

    def subset(self, n: int | float, seed: int = 0) -> TensorData:
        """A random subset of n items (or of the fraction n when 0 < n <= 1 is a float)."""
        k = int(round(n * len(self))) if isinstance(n, float) and n <= 1.0 else int(n)
        k = max(1, min(k, len(self)))
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:k]
        return TensorData(self.x[idx], self.y[idx], self.meta)


class Splits(NamedTuple):
    owner: TensorData
    attacker: TensorData
    test: TensorData
    meta: Meta


def as_tensors(data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """All `(x, y)` of a map-style dataset as two stacked tensors (fast path for TensorData/TensorDataset)."""
    if isinstance(data, TensorData):
        return data.x, data.y
    t = getattr(data, "tensors", None)
    if isinstance(t, tuple) and len(t) == 2 and all(isinstance(v, torch.Tensor) for v in t):
        return t[0], t[1]
    try:
        n = len(data)  # type: ignore[arg-type]
    except TypeError:
        raise DataError(f"data must be a map-style Dataset of (x, y) pairs, got {type(data).__name__}") from None
    if n == 0:
        raise DataError("data set is empty")
    xs, ys = [], []
    for i in range(n):
        item = data[i]
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise DataError(f"data item {i} is not an (x, y) pair")
        x, y = item
        xs.append(torch.as_tensor(x))
        ys.append(torch.as_tensor(y))
    return torch.stack(xs), torch.stack(ys)


def meta_of(data: Dataset) -> Meta | None:
    return getattr(data, "meta", None)


def split(x: torch.Tensor, y: torch.Tensor, meta: Meta, seed: int = 0,
          fractions: tuple[float, float, float] = (0.4, 0.4, 0.2)) -> Splits:
    """Shuffle with `seed` and cut into disjoint owner / attacker / test parts."""
    if len(x) < 3:
        raise DataError(f"{meta.name}: need at least 3 items to split, got {len(x)}")
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) <= 0:
        raise DataError(f"split fractions must be positive and sum to 1, got {fractions}")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n1 = int(fractions[0] * len(x))
    n2 = n1 + int(fractions[1] * len(x))
    parts = [perm[:n1], perm[n1:n2], perm[n2:]]
    owner, attacker, test = (TensorData(x[p].contiguous(), y[p].contiguous(), meta) for p in parts)
    return Splits(owner, attacker, test, meta)


def load(name: str, seed: int = 0, fractions: tuple[float, float, float] = (0.4, 0.4, 0.2),
         **kw: Any) -> Splits:
    """Load a data set by name and split it into disjoint owner / attacker / test parts.

    Names: mnist5k, digits, diabetes, sample-images, idx:DIR, cifar10:DIR, cifar100:DIR, npz:PATH,
    csv:PATH, folder:DIR; an existing folder, .npz or .csv path works without its kind.
    """
    from . import embedded, files

    if not isinstance(name, str) or not name:
        raise DataError("data set name must be a non-empty string")
    kind, _, arg = name.partition(":")
    try:
        if kind in embedded.LOADERS and not arg:
            try:
                x, y, meta = embedded.LOADERS[kind](**kw)
            except TypeError as e:
                raise DataError(f"{kind}: bad option(s) {', '.join(sorted(kw)) or '(none)'} ({e})") from None
        elif kind in files.LOADERS:
            if not arg:
                raise DataError(f"'{kind}' needs a path: use '{kind}:PATH'")
            x, y, meta = files.LOADERS[kind](arg, **kw)
        elif (guessed := _by_path(name)) is not None:  # a path without its kind: a folder, .npz or .csv
            x, y, meta = files.LOADERS[guessed](name, **kw)
        else:
            raise DataError(f"unknown data set '{name}'; known: {', '.join(names())}")
    except OSError as e:  # the loaders name what they expect; this catches what slips past them
        where = e.filename if e.filename is not None else arg or kind
        raise DataError(f"{kind}: cannot read {where}: {e.strerror or e}") from None
    except MemoryError:
        raise DataError(f"{name}: the data set does not fit in memory; use a smaller one") from None
    return split(x, y, meta, seed=seed, fractions=fractions)


def _by_path(name: str) -> str | None:
    """The file loader for an existing path given without a kind: a folder of images, an .npz or a .csv file."""
    from pathlib import Path

    p = Path(name).expanduser()
    if p.is_dir():
        return "folder"
    if p.is_file():
        return {".npz": "npz", ".csv": "csv"}.get(p.suffix.lower())
    return None


def names() -> list[str]:
    from . import embedded, files

    return list(embedded.LOADERS) + [f"{k}:PATH" for k in files.LOADERS]


__all__ = ["InputSpec", "Meta", "TensorData", "Splits", "load", "names", "split", "as_tensors",
           "as_input_spec", "meta_of", "CLASSIFICATION", "REGRESSION", "GENERATIVE", "np"]
