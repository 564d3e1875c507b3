"""He et al. (2016) CIFAR ResNet-n, n = 6k+2 (seed 001's ResNet-32).

Three stages of 16/32/64 channels with k basic blocks each, global average pool
and one linear layer. The paper's option A shortcut (stride-2 subsampling plus
zero-padded channels) is the default because it is what makes ResNet-32 a
464,154-parameter model; option B (1x1 conv + BN projection) is kept for the
comparison the paper also makes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sweeps.errors import ConfigError


class PadShortcut(nn.Module):
    """Option A: parameter free, so depth can grow without a projection's extra weights."""

    def __init__(self, extra_channels: int, stride: int):
        super().__init__()
        self.extra, self.stride = extra_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.shortcut = PadShortcut(planes - in_planes, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-``depth`` for 32x32 inputs, He-initialized as in the paper."""

    def __init__(
        self,
        depth: int = 32,
        shortcut: str = "A",
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
    ):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ConfigError(
                f"model.depth={depth} is not a CIFAR ResNet depth; it must be 6k+2 with k >= 1 "
                "(20, 32, 44, 56, 110, ...), e.g. model.depth=32."
            )
        shortcut = str(shortcut).upper()
        if shortcut not in ("A", "B"):
            raise ConfigError(
                f"model.shortcut={shortcut!r} is not a shortcut option; use model.shortcut=A "
                "(zero-padding identity, parameter free, the paper's CIFAR choice) or "
                "model.shortcut=B (1x1 conv projection)."
            )
        n = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True)
        )
        layers, in_planes = [], 16
        for i, planes in enumerate((16, 32, 64)):
            for j in range(n):
                layers.append(BasicBlock(in_planes, planes, 2 if i > 0 and j == 0 else 1, shortcut))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        # He et al. (2015) init, fan_in form, which the ResNet paper cites for its weights.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))
