"""Query-side evasion: `perturb` changes what the model is asked, not the model.

The suspect's owner perturbs every query before the model sees it (Gaussian noise of `std` relative to
the input range, or a JPEG-like 8x8 block-DCT quantization at `quality`), hoping the verifier's special
inputs stop working while normal inputs still do. The attack is a Suspect wrapper (`wrap`), an input
transform like those of `inputs.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..schema import param, seed_param
from . import AttackError, register
from .inputs import InputTransform


def _dct_matrix(n: int = 8) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)
    m = torch.cos(math.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * math.sqrt(2 / n)
    m[0] /= math.sqrt(2)
    return m.float()


# The JPEG luminance table, scaled by quality as libjpeg does.
_JPEG_Q = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=torch.float32)


def jpeg_like(x: torch.Tensor, quality: int, bounds: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """Quantize 8x8 block DCT coefficients of every channel of images `x` (N, C, H, W) like JPEG does."""
    lo, hi = bounds
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    q = torch.clamp(torch.floor((_JPEG_Q * scale + 50) / 100), min=1) / 255.0 * (hi - lo)
    n, ch, h, w = x.shape
    ph, pw = (-h) % 8, (-w) % 8
    z = torch.nn.functional.pad(x - lo, (0, pw, 0, ph), mode="replicate")
    blocks = z.unfold(2, 8, 8).unfold(3, 8, 8)  # n, c, bh, bw, 8, 8
    d = _dct_matrix()
    coef = d @ blocks @ d.T
    coef = torch.round(coef / q) * q
    back = d.T @ coef @ d
    out = back.permute(0, 1, 2, 4, 3, 5).reshape(n, ch, h + ph, w + pw)[:, :, :h, :w] + lo
    return out.clamp(lo, hi)


@register("perturb")
@dataclass
class PerturbQueries(InputTransform):
    """Perturb every query before the model sees it: `kind` 'gaussian' (std, relative to the input range)
    or 'jpeg' (quality 1..100; inputs must be images N x C x H x W)."""

    kind: str = param('gaussian', "gaussian: additive noise; jpeg: 8x8 block-DCT quantization", choices=('gaussian',
                      'jpeg'))
    std: float = param(0.1, "gaussian noise std relative to the input range", lo=0, hi=10)
    quality: int = param(50, "jpeg quality (1-100; lower removes more)", lo=1, hi=100)
    seed: int = seed_param()

    def transform(self, x: torch.Tensor, bounds: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
        lo, hi = bounds
        if self.kind == "gaussian":
            noise = torch.randn(x.shape, generator=gen) * self.std * (hi - lo)
            return (x + noise).clamp(lo, hi)
        if x.dim() != 4:
            raise AttackError(f"jpeg perturbation needs image inputs (N, C, H, W), got shape {tuple(x.shape)}")
        return jpeg_like(x, int(self.quality), bounds)

    def suspect_label(self) -> str:
        return f"perturb-{self.kind}"
