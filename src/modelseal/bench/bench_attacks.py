"""Attacks that compose methods, so they live in the bench and not in the attack library.

- `overwrite`: the attacker embeds their own trigger-set watermark (another seed) into the protected model,
  trained on the attacker's split, hoping to drown the owner's mark.
- `perturb`: the verifier's queries are perturbed on their way to the model (Gaussian noise of `std`, or a
  JPEG-like 8x8 block-DCT quantization at `quality`), through a black-box `Suspect` wrapper.
- `collude` (deepmarks only): `k` users average their fingerprinted copies (the library's `average`).
Distillation into another architecture needs no wrapper: it is the `distill` attack with `student = "mlp"`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ModelSealError

NAMES = ("overwrite", "perturb", "collude")


@dataclass
class Overwrite:
    """Embed the attacker's own trigger-set mark into `model` with the attacker's data."""

    n: int = 50
    extra_epochs: int = 1
    seed: int = 0

    def apply(self, model: nn.Module, data: Any = None) -> nn.Module:
        from .. import methods

        if data is None:
            raise ModelSealError("overwrite needs the attacker's data")
        # The attacker's seed must differ from any owner seed: offset it far away.
        marker = methods.get("trigger-set")(n=self.n, extra_epochs=self.extra_epochs, seed=self.seed + 7919)
        marked, _ = marker.embed(model, data)
        return marked


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


@dataclass
class PerturbQueries:
    """Perturb every query before the model sees it: `kind` 'gaussian' (std, relative to the input range)
    or 'jpeg' (quality 1..100; inputs must be images N x C x H x W)."""

    kind: str = "gaussian"
    std: float = 0.1
    quality: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("gaussian", "jpeg"):
            raise ModelSealError(f"perturb kind must be 'gaussian' or 'jpeg', got {self.kind!r}")
        if self.std < 0 or not 1 <= int(self.quality) <= 100:
            raise ModelSealError(f"perturb needs std >= 0 and 1 <= quality <= 100 (got {self.std}, {self.quality})")

    def transform(self, x: torch.Tensor, bounds: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
        lo, hi = bounds
        if self.kind == "gaussian":
            noise = torch.randn(x.shape, generator=gen) * self.std * (hi - lo)
            return (x + noise).clamp(lo, hi)
        if x.dim() != 4:
            raise ModelSealError(f"jpeg perturbation needs image inputs (N, C, H, W), got shape {tuple(x.shape)}")
        return jpeg_like(x, int(self.quality), bounds)

    def wrap(self, model: nn.Module):
        """A black-box Suspect answering with `model`'s outputs on perturbed queries."""
        from ..suspect import Suspect
        from ..train import predict

        spec = getattr(model, "modelseal_spec", {}) or {}
        bounds = tuple(spec.get("bounds", (0.0, 1.0)))
        gen = torch.Generator().manual_seed(self.seed)

        def backend(x: torch.Tensor) -> torch.Tensor:
            return predict(model, self.transform(x.detach().cpu().float(), bounds, gen))

        return Suspect(backend, input_shape=tuple(spec["input_shape"]) if spec else None,
                       name=f"perturb-{self.kind}")


@dataclass
class Collude:
    """`k` users average their copies (only meaningful for deepmarks; the runner picks the users)."""

    k: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if int(self.k) < 2:
            raise ModelSealError(f"collude needs k >= 2 colluders, got {self.k}")


def make(name: str, params: dict[str, Any], seed: int, check_only: bool = False) -> Any:
    """The configured attack object for a bench or library attack name."""
    if name == "overwrite":
        return Overwrite(**params, seed=seed)
    if name == "perturb":
        return PerturbQueries(**params, seed=seed)
    if name == "collude":
        return Collude(**params, seed=seed)
    if name == "none":
        return None
    from .. import attacks

    if name == "average":
        if params:
            raise ModelSealError("the bench's average takes no parameters; use collude with k for deepmarks")
        return Collude(k=2, seed=seed)
    return attacks.get(name)(**params, seed=seed)
