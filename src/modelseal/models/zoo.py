"""Architectures: mlp, cnn (LeNet-style), resnet18 (CIFAR-style, width), wrn (WRN-16-k), transformer (ViT-style
classifier), vae-decoder.

A class that takes only some input ranks says so in `input_ranks` (the image networks: (H, W) or (C, H, W));
`models.build` refuses other inputs with a clear error.

Every nonlinearity is an `nn.ReLU` module (never the functional form) so that fingerprinting methods can
hook the pre-activations of every ReLU.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _flat(shape: tuple[int, ...]) -> int:
    return int(math.prod(shape))


class MLP(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: tuple[int, ...] = (256, 128)):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        d = _flat(input_shape)
        for h in hidden:
            layers += [nn.Linear(d, int(h)), nn.ReLU()]
            d = int(h)
        layers.append(nn.Linear(d, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """LeNet-style: two conv+ReLU+maxpool blocks, then two Linear layers (~105 k params on 28x28)."""

    input_ranks = (2, 3)  # images: (H, W) or (C, H, W)

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, channels: tuple[int, int] = (16, 32),
                 hidden: int = 64):
        super().__init__()
        c, h, w = input_shape if len(input_shape) == 3 else (1, *input_shape[-2:])
        c1, c2 = channels
        pool = 2 if min(h, w) >= 8 else 1
        self.features = nn.Sequential(
            nn.Conv2d(c, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(pool),
            nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(pool),
        )
        fh, fw = h // pool // pool, w // pool // pool
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * fh * fw, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        self._shape = (c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.reshape(-1, *self._shape)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18 (3x3 stem, no max-pool); `width` scales every stage (64 = the standard)."""

    input_ranks = (2, 3)  # images: (H, W) or (C, H, W)

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 64):
        super().__init__()
        c = input_shape[0] if len(input_shape) == 3 else 1
        self._shape = input_shape if len(input_shape) == 3 else (1, *input_shape[-2:])
        w = int(width)
        self.stem = nn.Sequential(nn.Conv2d(c, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        blocks, cin = [], w
        for i, mult in enumerate((1, 2, 4, 8)):
            for j in range(2):
                blocks.append(BasicBlock(cin, w * mult, 2 if (j == 0 and i > 0) else 1))
                cin = w * mult
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x.reshape(-1, *self._shape)))
        return self.fc(torch.flatten(self.pool(x), 1))


class WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.relu1(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(self.relu2(self.bn2(y)))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WRN(nn.Module):
    """Wide ResNet WRN-depth-k (default WRN-16-4): (depth - 4) / 6 blocks per stage."""

    input_ranks = (2, 3)  # images: (H, W) or (C, H, W)

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, depth: int = 16, k: int = 4):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError("WRN depth must be 6n + 4")
        n = (depth - 4) // 6
        c = input_shape[0] if len(input_shape) == 3 else 1
        self._shape = input_shape if len(input_shape) == 3 else (1, *input_shape[-2:])
        widths = [16, 16 * k, 32 * k, 64 * k]
        self.conv = nn.Conv2d(c, widths[0], 3, 1, 1, bias=False)
        blocks, cin = [], widths[0]
        for i, wdt in enumerate(widths[1:]):
            for j in range(n):
                blocks.append(WideBlock(cin, wdt, 2 if (j == 0 and i > 0) else 1))
                cin = wdt
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.blocks(self.conv(x.reshape(-1, *self._shape)))))
        return self.fc(torch.flatten(self.pool(x), 1))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(ln1(x)), then x + fc2(relu(fc1(ln2(x)))); fc1's outputs are the MLP's hidden
    units (the units `lineage` permutes and compares, as Zhu et al. do in language models)."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(self.relu(self.fc1(self.ln2(x))))


class Transformer(nn.Module):
    """ViT-style classifier: non-overlapping `patch` x `patch` patches (default 2 up to 16 pixels a side, else 4)
    embedded to `dim`, a learned position embedding, `depth` pre-norm blocks (`heads` attention heads, MLP of
    `hidden` ReLU units), mean pooling, LayerNorm, linear head. Trains on digits in seconds."""

    input_ranks = (2, 3)  # images: (H, W) or (C, H, W)

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, dim: int = 32, depth: int = 2,
                 heads: int = 4, hidden: int = 64, patch: int | None = None):
        super().__init__()
        c, h, w = input_shape if len(input_shape) == 3 else (1, *input_shape[-2:])
        p = int(patch) if patch else (2 if max(h, w) <= 16 else 4)
        if h % p or w % p:
            raise ValueError(f"patch {p} does not divide the image size {h}x{w}")
        self._shape, self.patch = (c, h, w), p
        tokens = (h // p) * (w // p)
        self.embed = nn.Linear(c * p * p, dim)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = self._shape
        p = self.patch
        x = x.reshape(-1, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(-1, (h // p) * (w // p), c * p * p)
        x = self.blocks(self.embed(x) + self.pos)
        return self.head(self.norm(x.mean(1)))


class VAEDecoder(nn.Module):
    """ReLU decoder of a small VAE: latent vector (input_shape = (latent,)) -> image of `image_shape`.

    `num_classes` is the flattened image size; outputs are sigmoid pixel values reshaped to the image.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: tuple[int, ...] = (128, 256),
                 image_shape: tuple[int, ...] | None = None):
        super().__init__()
        layers: list[nn.Module] = []
        d = _flat(input_shape)
        for h in hidden:
            layers += [nn.Linear(d, int(h)), nn.ReLU()]
            d = int(h)
        layers += [nn.Linear(d, num_classes), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)
        self.image_shape = tuple(image_shape) if image_shape else (num_classes,)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.flatten(1)).reshape(-1, *self.image_shape)


ARCHITECTURES = {"mlp": MLP, "cnn": CNN, "resnet18": ResNet18, "wrn": WRN, "transformer": Transformer,
                 "vae-decoder": VAEDecoder}
