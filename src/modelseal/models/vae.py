"""A small VAE (MLP encoder + the zoo's ReLU `vae-decoder`), trained with `modelseal.train.train_vae`.

The decoder (latent -> image) is the generative model that fingerprinting methods such as TAFA judge.
Training uses `fit` unchanged: the data set is (image, image) pairs (regression, so `fit`'s loss is the
pixel-wise mean squared reconstruction error) and `extra_loss` adds the KL term of the ELBO, scaled
per pixel like the reconstruction term and weighted by `beta` (default 0.05, i.e. a Gaussian likelihood
with variance 0.025; with beta = 1 the MSE is too weak and the posterior collapses to the mean image).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import build


class VAE(nn.Module):
    """x -> (mu, logvar) by an MLP encoder; z = mu + sigma * eps; decoder(z) -> image."""

    def __init__(self, image_shape: tuple[int, ...], latent: int = 8, hidden: int = 128,
                 decoder_hidden: tuple[int, ...] = (128, 256), seed: int | None = None,
                 latent_bound: float = 3.0):
        super().__init__()
        d = int(math.prod(image_shape))
        self.image_shape = tuple(image_shape)
        self.latent = int(latent)
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(),
                                         nn.Linear(hidden, 2 * latent))
        self.decoder = build("vae-decoder", input_shape=(latent,), num_classes=d, seed=seed,
                             bounds=(-latent_bound, latent_bound), hidden=tuple(decoder_hidden),
                             image_shape=self.image_shape)
        self.last_kl: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        mu, logvar = h.chunk(2, dim=1)
        logvar = logvar.clamp(-10, 10)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        # kept only while training, for fit's extra_loss; a stored graph would block deepcopy
        self.last_kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1).mean() if self.training else None
        return self.decoder(z)
