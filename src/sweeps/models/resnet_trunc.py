"""The main seed's truncated ResNet-18 family (kuangliu/pytorch-cifar style).

Every ablation axis of that report is a constructor argument, so each table row
is a config override: ``channels`` (Ci), ``blocks`` (Bi), ``kernel_sizes`` (Fi),
``pool`` (P), ``head`` (hidden sizes of the linear head) and ``dropout``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sweeps.errors import ConfigError


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1, kernel_size: int = 3):
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size, stride, pad, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size, 1, pad, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _per_layer(value, n_layers: int, key: str) -> list[int]:
    values = [value] * n_layers if isinstance(value, int) else list(value)
    if len(values) != n_layers:
        raise ConfigError(
            f"model.{key}={values} has {len(values)} entries but model.channels has "
            f"{n_layers} layers; give one {key} entry per layer (or a single integer)."
        )
    return values


class TruncatedResNet(nn.Module):
    """ResNet-18 with configurable depth and width, for the < 5M parameter ablations."""

    def __init__(
        self,
        channels: Sequence[int] = (32, 64, 128, 256),
        blocks: Sequence[int] = (3, 4, 4, 3),
        kernel_sizes: int | Sequence[int] = 3,
        pool: int = 4,
        head: Sequence[int] = (128,),
        dropout: float = 0.0,
        stem_channels: int = 64,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
    ):
        super().__init__()
        channels, blocks = list(channels), list(blocks)
        if not channels:
            raise ConfigError("model.channels is empty; give one channel count per residual layer, e.g. [32,64,128,256].")
        blocks = _per_layer(blocks, len(channels), "blocks")
        kernels = _per_layer(kernel_sizes, len(channels), "kernel_sizes")
        for k in kernels:
            if k < 1 or k % 2 == 0:
                raise ConfigError(
                    f"model.kernel_sizes contains {k}; kernel sizes must be odd and >= 1 "
                    "(1, 3, 5, ...) so that padding keeps the feature map size."
                )
        if any(b < 1 for b in blocks) or any(c < 1 for c in channels):
            raise ConfigError(f"model.blocks={blocks} and model.channels={channels} must all be >= 1.")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.dropout={dropout} is outside [0, 1); use e.g. model.dropout=0.2.")
        feature = image_size // 2 ** (len(channels) - 1)
        if pool < 1 or pool > feature:
            raise ConfigError(
                f"model.pool={pool} does not fit the {feature}x{feature} feature map left after "
                f"{len(channels)} layers on {image_size}x{image_size} images; use a pool size "
                f"between 1 and {feature}."
            )

        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.ReLU(inplace=True),
        )
        layers, in_planes = [], stem_channels
        for i, (planes, n_blocks, k) in enumerate(zip(channels, blocks, kernels)):
            stride = 1 if i == 0 else 2
            layer = []
            for s in [stride] + [1] * (n_blocks - 1):
                layer.append(BasicBlock(in_planes, planes, s, k))
                in_planes = planes
            layers.append(nn.Sequential(*layer))
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AvgPool2d(pool)
        flat = in_planes * (feature // pool) ** 2
        head_layers: list[nn.Module] = [nn.Flatten()]
        for width in [*head, num_classes]:
            if dropout:
                head_layers.append(nn.Dropout(dropout))
            head_layers.append(nn.Linear(flat, width))
            if width != num_classes:
                head_layers.append(nn.ReLU(inplace=True))
            flat = width
        self.head = nn.Sequential(*head_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.layers(self.stem(x))))
