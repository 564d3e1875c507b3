"""Seed 002's ResNet18Modified: a ResNet-18 reshaped for 32x32 inputs.

Downsampling is a MaxPool after the first residual block of layers 2-4 instead
of strided convs, and the input normalization is the model's first layer, so
the model carries its own statistics (buffers, not parameters) and the data
pipeline can hand it plain [0, 1] tensors. Convolutions keep PyTorch's default
bias, as the report's code does, so the count is the report model's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sweeps.errors import ConfigError


class Normalize(nn.Module):
    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2), nn.BatchNorm2d(out_channels)]


class ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.main = nn.Sequential(
            *_conv_bn(in_channels, out_channels, 3), nn.ReLU(), *_conv_bn(out_channels, out_channels, 3)
        )
        self.shortcut = nn.Sequential()
        if in_channels != out_channels:
            self.shortcut = nn.Sequential(*_conv_bn(in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.main(x) + self.shortcut(x))


class ResNet18Modified(nn.Module):
    def __init__(
        self,
        normalize: bool = True,
        mean: Sequence[float] = (0.492, 0.482, 0.447),
        std: Sequence[float] = (0.247, 0.243, 0.262),
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
    ):
        super().__init__()
        mean, std = list(mean), list(std)
        if normalize:
            for key, values in (("mean", mean), ("std", std)):
                if len(values) not in (1, in_channels):
                    raise ConfigError(
                        f"model.{key}={values} has {len(values)} entries but the dataset has "
                        f"{in_channels} channel(s); give one value per channel (e.g. the "
                        f"dataset's own dataset.{key}) or turn the layer off with model.normalize=false."
                    )
            if any(s <= 0 for s in std):
                raise ConfigError(f"model.std={std} must be > 0 (it divides the input).")
        if image_size < 8:
            raise ConfigError(f"dataset.image_size={image_size} is too small: the model halves it three times.")
        self.normalize = Normalize(mean, std) if normalize else nn.Identity()
        self.conv1 = nn.Sequential(*_conv_bn(in_channels, 64, 3), nn.ReLU())
        self.layer1 = nn.Sequential(ResidualBlock(64, 64), ResidualBlock(64, 64))
        self.layer2 = nn.Sequential(ResidualBlock(64, 128), nn.MaxPool2d(2), ResidualBlock(128, 128))
        self.layer3 = nn.Sequential(ResidualBlock(128, 256), nn.MaxPool2d(2), ResidualBlock(256, 256))
        self.layer4 = nn.Sequential(ResidualBlock(256, 512), nn.MaxPool2d(2), ResidualBlock(512, 512))
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.normalize(x))
        return self.classifier(self.layer4(self.layer3(self.layer2(self.layer1(x)))))
