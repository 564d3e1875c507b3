"""Seed 003's custom ResNet (6,573,130 parameters on CIFAR-10).

Three conv -> maxpool -> norm -> ReLU stages (64->128->256->512) after a
3->64 prep layer; the first and last carry a residual block of two
conv-norm-ReLU, and a global max pool feeds one biased linear layer. Convs have
no bias because a norm layer follows each of them.

``norm=layer`` is the report's LayerNorm variant, built as GroupNorm(1, C): it
normalizes each sample over (C, H, W) exactly like LayerNorm([C, H, W]) but keeps
a per-channel affine (2C parameters, like BatchNorm), so the parameter count is
the same for both settings and does not depend on the image size, which a
LayerNorm with elementwise affine over (C, H, W) would.
"""

from __future__ import annotations

import torch
from torch import nn

from sweeps.errors import ConfigError, close_matches

NORMS = {"batch": nn.BatchNorm2d, "layer": lambda c: nn.GroupNorm(1, c)}


def _conv_norm_relu(in_channels: int, out_channels: int, norm, pool: bool = False) -> nn.Sequential:
    layers = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, norm(out_channels), nn.ReLU(inplace=True))


class ResBlock(nn.Module):
    def __init__(self, channels: int, norm):
        super().__init__()
        self.body = nn.Sequential(_conv_norm_relu(channels, channels, norm), _conv_norm_relu(channels, channels, norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class CustomResNet(nn.Module):
    def __init__(self, norm: str = "batch", num_classes: int = 10, in_channels: int = 3, image_size: int = 32):
        super().__init__()
        if norm not in NORMS:
            raise ConfigError(
                f"model.norm={norm!r} is not a normalization; use model.norm=batch (BatchNorm2d) "
                f"or model.norm=layer (per-sample GroupNorm(1, C)).{close_matches(str(norm), NORMS)}"
            )
        if image_size < 8:
            raise ConfigError(f"dataset.image_size={image_size} is too small: the model halves it three times.")
        n = NORMS[norm]
        self.prep = _conv_norm_relu(in_channels, 64, n)
        self.layer1 = nn.Sequential(_conv_norm_relu(64, 128, n, pool=True), ResBlock(128, n))
        self.layer2 = _conv_norm_relu(128, 256, n, pool=True)
        self.layer3 = nn.Sequential(_conv_norm_relu(256, 512, n, pool=True), ResBlock(512, n))
        # The report's MaxPool(4) on the 4x4 map of a 32x32 input, i.e. a global max pool.
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return self.fc(torch.flatten(self.pool(x), 1))
