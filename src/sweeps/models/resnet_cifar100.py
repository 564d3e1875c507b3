"""Seed 004's CIFAR-100 ResNet, with the report code's parameter sharing kept.

In that code each ``BasicBlock`` is a whole layer of ``repeat`` residual units
that share ONE BatchNorm and ONE 3x3 conv (every unit after the first reuses
``conv`` for both of its convs) and ONE 1x1 shortcut conv; the first unit has
its own input conv and 1x1 shortcut. All convs have a bias. This is reproduced
as written, because the sharing is what gives the model its small parameter
count, and its results depend on it. Like the report's code, every block owns
a first-unit 1x1 shortcut even where the identity is used (block 1, 32->32), so
those unused weights are counted as the report's model counts them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sweeps.errors import ConfigError


class SharedBasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, repeat: int):
        super().__init__()
        self.conv_init = nn.Conv2d(in_channels, out_channels, 3, stride, 1)
        self.conv = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        self.bn = nn.BatchNorm2d(out_channels)
        self.conv_shortcut_init = nn.Conv2d(in_channels, out_channels, 1, stride)
        self.conv_shortcut = nn.Conv2d(out_channels, out_channels, 1)
        # The report tests channels only; stride is added so that an identity never changes size.
        self.identity = in_channels == out_channels and stride == 1
        self.repeat = repeat

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.conv(F.relu(self.bn(self.conv_init(x)))))
        out = F.relu(out + (x if self.identity else self.conv_shortcut_init(x)))
        for _ in range(1, self.repeat):
            y = out
            out = self.bn(self.conv(F.relu(self.bn(self.conv(out)))))
            out = F.relu(out + self.conv_shortcut(y))
        return out


class Cifar100ResNet(nn.Module):
    def __init__(
        self,
        channels: Sequence[int] = (32, 32, 64, 128, 256),
        repeats: Sequence[int] = (2, 4, 4, 2),
        strides: Sequence[int] = (1, 2, 2, 2),
        dropout: float = 0.25,
        pool: int = 4,
        num_classes: int = 100,
        in_channels: int = 3,
        image_size: int = 32,
    ):
        super().__init__()
        channels, repeats, strides = list(channels), list(repeats), list(strides)
        if len(channels) != len(repeats) + 1 or len(strides) != len(repeats):
            raise ConfigError(
                f"model.channels={channels}, model.repeats={repeats} and model.strides={strides} "
                "do not line up: channels lists the stem width then one width per block, so it "
                "needs exactly one entry more than repeats, and strides needs one per block."
            )
        if any(v < 1 for v in channels + repeats + strides):
            raise ConfigError(f"model.channels={channels}, model.repeats={repeats} and model.strides={strides} must "
                              "all be >= 1.")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.dropout={dropout} is outside [0, 1); use e.g. model.dropout=0.25.")
        feature = image_size
        for s in strides:
            feature = (feature - 1) // s + 1
        if pool < 1 or pool > feature:
            raise ConfigError(
                f"model.pool={pool} does not fit the {feature}x{feature} feature map left after "
                f"model.strides={strides} on {image_size}x{image_size} images; use a pool size "
                f"between 1 and {feature}."
            )
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, 1, 1)
        self.bn = nn.BatchNorm2d(channels[0])
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.Sequential(
            *(SharedBasicBlock(channels[i], channels[i + 1], s, r) for i, (s, r) in enumerate(zip(strides, repeats)))
        )
        self.pool = nn.MaxPool2d(pool)
        self.fc = nn.Linear(channels[-1] * (feature // pool) ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(F.relu(self.bn(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(self.blocks(out)), 1))
