"""Input transforms: the suspect's owner changes every query before the model sees it (query-side, like
`perturb`), hoping the verifier's special inputs stop working while normal inputs still do.

Papers: JPEG compression (Dziugaite et al., 2016; Das et al., "Keeping the Bad Guys Out", 2017), feature
squeezing by bit depth and median smoothing (Xu, Evans, Qi, NDSS 2018), Gaussian smoothing and noise
(randomized smoothing, Cohen et al., ICML 2019), random shifts/flips (input transformations, Guo et al.,
ICLR 2018), random discretization (Zhang & Liang, 2019); as watermark evasion: the WRT (Lukas et al.,
S&P 2022) "input preprocessing" attacks. The same transforms are ART's preprocessors.

Deviations: every transform acts on batches of images N x C x H x W (or N x H x W) inside the data's input
bounds; JPEG goes through Pillow per image and channel group (1 or 3 channels), at 8 bit; randomness (noise,
shifts, flips, dither) comes from one generator seeded by `seed`, so a wrapped suspect answers the same
query sequence the same way. `apply` returns the model unchanged (nothing about the weights changes);
`wrap(suspect, meta)` returns the suspect the verifier then queries.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..schema import param, seed_param
from ..suspect import Suspect
from . import Attack, AttackError, register
from .training import bounds_of


class _Wrapped:
    """A Suspect backend that answers `fn(x)`; keeps the inner suspect's input shape and label-only flag."""

    def __init__(self, inner: Suspect, fn: Callable[[torch.Tensor], torch.Tensor], label_only: bool = False):
        self.inner, self.fn = inner, fn
        self.input_shape = inner.input_shape
        self.label_only = label_only or inner.label_only
        self.output_size = inner.output_size()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def wrapped_suspect(attack: Attack, inner: Suspect, fn: Callable[[torch.Tensor], torch.Tensor],
                    label_only: bool = False, name: str | None = None) -> Suspect:
    """A black-box Suspect answering `fn(x)` (which queries `inner`); counts answers in `attack.query_stats`.
    It is called `name(inner's name)`, `name` defaulting to the attack's."""
    attack.start_query_stats()

    def answer(x: torch.Tensor) -> torch.Tensor:
        attack.count_query(answered=len(x))
        return fn(x.detach().cpu().float())

    return Suspect(_Wrapped(inner, answer, label_only), input_shape=inner.input_shape,
                   name=f"{name or attack.name}({inner.name})")


def _images(x: torch.Tensor, what: str) -> tuple[torch.Tensor, bool]:
    """`x` as N x C x H x W (and whether a channel axis was added)."""
    if x.dim() == 4:
        return x, False
    if x.dim() == 3:
        return x.unsqueeze(1), True
    raise AttackError(f"{what} transforms images (N, C, H, W) or (N, H, W), got inputs of shape "
                      f"{tuple(x.shape)}; use an attack for flat inputs (input-noise, input-quantize, squeeze)")


@dataclass
class InputTransform(Attack):
    """Base of the input transforms: `transform(x, bounds, gen)` changes a batch of queries."""

    seed: int = seed_param("seed of the transform's randomness (deterministic given it)")
    acts_on = "queries"

    def transform(self, x: torch.Tensor, bounds: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - interface

    def _apply(self, model: nn.Module, data: Any = None) -> nn.Module:
        """The model is not changed (the queries are): returns it as it is."""
        return model

    def wrap(self, suspect: Suspect, meta: Any = None) -> Suspect:
        """The suspect that answers with `suspect`'s outputs on transformed queries; `meta` gives the input
        bounds (default [0, 1])."""
        bounds = bounds_of(meta)
        gen = torch.Generator().manual_seed(int(self.seed))
        return wrapped_suspect(self, suspect, lambda x: suspect.predict(self.transform(x, bounds, gen)),
                               name=self.suspect_label())

    def suspect_label(self) -> str:
        """What the wrapped suspect is called, around the inner suspect's name."""
        return self.name


@dataclass
class ImageTransform(InputTransform):
    """An input transform of images: `transform_images` sees N x C x H x W (a channel axis is added to
    N x H x W queries and taken away again)."""

    def transform_images(self, img: torch.Tensor, bounds: tuple[float, float],
                         gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - interface

    def transform(self, x: torch.Tensor, bounds: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
        img, added = _images(x, self.name)
        res = self.transform_images(img, bounds, gen)
        return res.squeeze(1) if added else res


@register("jpeg")
@dataclass
class Jpeg(ImageTransform):
    """Re-encode every query as a JPEG at `quality` (1..100) with Pillow and decode it again."""

    quality: int = param(75, "JPEG quality, 1 (worst) .. 100 (best)", lo=1, hi=100)

    def transform_images(self, img: torch.Tensor, bounds: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
        import numpy as np
        from PIL import Image

        lo, hi = bounds
        n, c, h, w = img.shape
        u8 = ((img - lo) / (hi - lo)).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
        out = np.empty_like(u8)
        groups = [(0, 3)] if c == 3 else [(i, i + 1) for i in range(c)]
        for i in range(n):
            for a, b in groups:
                arr = u8[i, a:b].transpose(1, 2, 0)
                pil = Image.fromarray(arr[:, :, 0] if b - a == 1 else arr, mode="L" if b - a == 1 else "RGB")
                buf = io.BytesIO()
                pil.save(buf, format="JPEG", quality=int(self.quality))
                back = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
                out[i, a:b] = back[None] if back.ndim == 2 else back.transpose(2, 0, 1)
        return torch.from_numpy(out).float().div(255) * (hi - lo) + lo


@register("squeeze")
@dataclass
class Squeeze(InputTransform):
    """Feature squeezing: reduce every input value to `bits` bits (2**bits levels over the input range)."""

    bits: int = param(3, "bits per input value: 2**bits levels over the input range", lo=1, hi=16)

    def transform(self, x: torch.Tensor, bounds: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
        lo, hi = bounds
        levels = 2 ** int(self.bits) - 1
        return torch.round((x - lo) / (hi - lo) * levels).clamp(0, levels) / levels * (hi - lo) + lo


@register("median")
@dataclass
class Median(ImageTransform):
    """Median smoothing: every pixel becomes the median of its `size` x `size` neighbourhood (per channel)."""

    size: int = param(3, "side of the square neighbourhood (odd, pixels)", lo=1, hi=15)

    def check(self) -> None:
        if int(self.size) % 2 == 0:
            raise AttackError(f"median size must be odd, got {self.size}")

    def transform_images(self, img: torch.Tensor, bounds: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
        k = int(self.size)
        p = k // 2
        n, c, h, w = img.shape
        pad = F.pad(img, (p, p, p, p), mode="replicate")
        patches = pad.unfold(2, k, 1).unfold(3, k, 1).reshape(n, c, h, w, k * k)
        return patches.median(dim=-1).values


@register("blur")
@dataclass
class Blur(ImageTransform):
    """Gaussian smoothing of every query with standard deviation `sigma` (pixels)."""

    sigma: float = param(0.5, "standard deviation of the Gaussian kernel (pixels)", lo=0, hi=10, lo_open=True)

    def transform_images(self, img: torch.Tensor, bounds: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
        r = max(1, int(math.ceil(2 * float(self.sigma))))
        t = torch.arange(-r, r + 1, dtype=torch.float32)
        k = torch.exp(-t ** 2 / (2 * float(self.sigma) ** 2))
        k = k / k.sum()
        c = img.shape[1]
        pad = F.pad(img, (r, r, r, r), mode="replicate")
        out = F.conv2d(pad, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
        return F.conv2d(out, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


@register("input-noise")
@dataclass
class InputNoise(InputTransform):
    """Add Gaussian noise of standard deviation `std` (relative to the input range) to every query."""

    std: float = param(0.05, "standard deviation of the noise", lo=0, hi=10)

    def transform(self, x: torch.Tensor, bounds: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
        lo, hi = bounds
        return (x + torch.randn(x.shape, generator=gen) * float(self.std) * (hi - lo)).clamp(lo, hi)


@register("shift")
@dataclass
class Shift(ImageTransform):
    """Shift every query by a random whole number of pixels in [-pixels, pixels] along each image axis
    (edges replicated)."""

    pixels: int = param(1, "largest shift along each axis (pixels)", lo=1, hi=16)

    def transform_images(self, img: torch.Tensor, bounds: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
        p = int(self.pixels)
        n, _, h, w = img.shape
        pad = F.pad(img, (p, p, p, p), mode="replicate")
        offs = torch.randint(0, 2 * p + 1, (n, 2), generator=gen)
        return torch.stack([pad[i, :, int(a):int(a) + h, int(b):int(b) + w] for i, (a, b) in enumerate(offs)])


@register("flip")
@dataclass
class Flip(ImageTransform):
    """Mirror each query left-right with probability `p` (1: every query)."""

    p: float = param(0.5, "probability that a query is mirrored", lo=0, hi=1)

    def transform_images(self, img: torch.Tensor, bounds: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
        which = torch.rand(len(img), generator=gen) < float(self.p)
        return torch.where(which.view(-1, 1, 1, 1), img.flip(-1), img)


@register("input-quantize")
@dataclass
class InputQuantize(InputTransform):
    """Random discretization: quantize every input value to `levels` evenly spaced levels, after adding
    uniform noise of one level's width when `dither`."""

    levels: int = param(16, "number of evenly spaced levels over the input range", lo=2, hi=65536)
    dither: bool = param(True, "add uniform noise of one level's width before rounding")

    def transform(self, x: torch.Tensor, bounds: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
        lo, hi = bounds
        steps = int(self.levels) - 1
        z = (x - lo) / (hi - lo) * steps
        if self.dither:
            z = z + torch.rand(x.shape, generator=gen) - 0.5
        return torch.round(z).clamp(0, steps) / steps * (hi - lo) + lo
