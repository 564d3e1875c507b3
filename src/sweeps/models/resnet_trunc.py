"""The main seed's truncated ResNet-18 family (kuangliu/pytorch-cifar style).

Every ablation axis of that report is a constructor argument, so each table row
is a config override of ``conf/model/resnet18_trunc.yaml`` or
``conf/model/trunc_l3_pool8.yaml``: ``channels`` (Ci), ``blocks`` (Bi),
``kernel_sizes`` (Fi), ``stem_kernel``, ``block`` (basic or the 1-3-1
bottleneck), ``pool`` (P), ``extra_conv`` (the "Conv2d_BN (256, 512)" layer),
``head`` (hidden sizes of the linear head), ``dropout`` and ``dropout_layers``.

The reading of the report's kernel notation was pinned down by matching its
exact parameter counts: in "5-1515-1511515-15115" the first number is the stem
kernel and each following group lists, layer by layer, the kernel of every
convolution in order (conv1, conv2 of each block, plus the 1x1 projection
shortcut right after the first block's convs when that block has one).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sweeps.errors import ConfigError, close_matches


def _conv_bn(in_planes: int, planes: int, kernel_size: int, stride: int = 1) -> list[nn.Module]:
    pad = kernel_size // 2
    return [nn.Conv2d(in_planes, planes, kernel_size, stride, pad, bias=False), nn.BatchNorm2d(planes)]


class BasicBlock(nn.Module):
    """Two convs; kernel sizes are per conv so the kernel table's mixed 1/5 rows fit."""

    expansion = 1
    n_convs = 2

    def __init__(self, in_planes: int, planes: int, stride: int = 1, kernels=(3, 3), shortcut_kernel: int = 1):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(in_planes, planes, kernels[0], stride)
        self.conv2, self.bn2 = _conv_bn(planes, planes, kernels[1])
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(*_conv_bn(in_planes, planes, shortcut_kernel, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """The "Bottleneck: 131" row: kuangliu's 1-3-1 block with 4x expansion (its count is exact)."""

    expansion = 4
    n_convs = 3

    def __init__(self, in_planes: int, planes: int, stride: int = 1, kernels=(1, 3, 1), shortcut_kernel: int = 1):
        super().__init__()
        out_planes = self.expansion * planes
        self.conv1, self.bn1 = _conv_bn(in_planes, planes, kernels[0])
        self.conv2, self.bn2 = _conv_bn(planes, planes, kernels[1], stride)
        self.conv3, self.bn3 = _conv_bn(planes, out_planes, kernels[2])
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(*_conv_bn(in_planes, out_planes, shortcut_kernel, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def _per_layer(value, n_layers: int, key: str) -> list:
    values = [value] * n_layers if isinstance(value, int) else list(value)
    if len(values) != n_layers:
        raise ConfigError(
            f"model.{key}={values} has {len(values)} entries but model.channels has "
            f"{n_layers} layers; give one {key} entry per layer (or a single integer)."
        )
    return values


def _check_kernel(k, key: str) -> int:
    if not isinstance(k, int) or k < 1 or k % 2 == 0:
        raise ConfigError(
            f"model.{key} has a kernel size of {k}; kernel sizes must be odd integers >= 1 "
            "(1, 3, 5, ...) so that padding keeps the feature map size."
        )
    return k


def _layer_kernels(spec, block: type, strides: list[int], in_planes: int, planes: int, layer: int):
    """Per-block (conv kernels, shortcut kernel) of one layer from an int or a flat per-conv list."""
    projections = []
    for s in strides:
        projections.append(s != 1 or in_planes != planes * block.expansion)
        in_planes = planes * block.expansion
    if isinstance(spec, int):
        k = _check_kernel(spec, "kernel_sizes")
        convs = (k, k) if block is BasicBlock else (1, k, 1)
        return [(convs, 1) for _ in strides]
    spec = [_check_kernel(k, "kernel_sizes") for k in spec]
    expected = sum(block.n_convs + p for p in projections)
    if len(spec) != expected:
        raise ConfigError(
            f"model.kernel_sizes[{layer}]={spec} lists {len(spec)} kernels but layer {layer + 1} "
            f"({len(strides)} {block.__name__} blocks, {sum(projections)} with a projection "
            f"shortcut) has {expected} convolutions. List them in order: the {block.n_convs} "
            "convs of each block, followed by the shortcut's kernel (usually 1) for a block "
            "with a projection shortcut (the first block of a layer that changes width or "
            "stride); or give one odd integer for the whole layer."
        )
    out, i = [], 0
    for p in projections:
        convs = tuple(spec[i : i + block.n_convs])
        i += block.n_convs
        shortcut = spec[i] if p else 1
        i += int(p)
        out.append((convs, shortcut))
    return out


class TruncatedResNet(nn.Module):
    """ResNet-18 with configurable depth and width, for the < 5M parameter ablations."""

    def __init__(
        self,
        channels: Sequence[int] = (32, 64, 128, 256),
        blocks: Sequence[int] = (3, 4, 4, 3),
        kernel_sizes: int | Sequence[int | Sequence[int]] = 3,
        pool: int = 4,
        head: Sequence[int] = (128,),
        dropout: float = 0.0,
        dropout_layers: int | None = None,
        stem_channels: int = 64,
        stem_kernel: int = 3,
        block: str = "basic",
        extra_conv: int | None = None,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
    ):
        super().__init__()
        # model.head=128 reads as the seeds write it ("Linear: 128"): one hidden layer.
        head = [head] if isinstance(head, int) else head
        if isinstance(channels, int):
            raise ConfigError(f"model.channels={channels} is one number; give one channel count per residual "
                              f"layer, e.g. model.channels=[{channels},{2 * channels}].")
        channels, head = list(channels), list(head)
        if not channels:
            raise ConfigError("model.channels is empty; give one channel count per residual layer, e.g. [32,64,128,256].")
        blocks = _per_layer(blocks, len(channels), "blocks")
        kernels = _per_layer(kernel_sizes, len(channels), "kernel_sizes")
        _check_kernel(stem_kernel, "stem_kernel")
        if any(b < 1 for b in blocks) or any(c < 1 for c in channels) or stem_channels < 1:
            raise ConfigError(
                f"model.blocks={blocks}, model.channels={channels} and "
                f"model.stem_channels={stem_channels} must all be >= 1."
            )
        if block not in BLOCKS:
            raise ConfigError(
                f"model.block={block!r} is not a block type; use model.block=basic or "
                f"model.block=bottleneck.{close_matches(str(block), BLOCKS)}"
            )
        if any(w < 1 for w in head) or (extra_conv is not None and extra_conv < 1):
            raise ConfigError(f"model.head={head} and model.extra_conv={extra_conv} must be >= 1 (or head=[] / extra_conv=null).")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.dropout={dropout} is outside [0, 1); use e.g. model.dropout=0.2.")
        n_linear = len(head) + 1
        # The "Adding More Layers" rows drop out before the first few linears only.
        if dropout_layers is None:
            dropout_layers = n_linear
        if not 0 <= dropout_layers <= n_linear:
            raise ConfigError(
                f"model.dropout_layers={dropout_layers} must lie between 0 and {n_linear}, the number "
                "of linear layers (len(model.head) + 1): it counts the linears, from the first, that "
                "get a Dropout(model.dropout) before them; null puts one before every linear."
            )
        feature = image_size // 2 ** (len(channels) - 1)
        if pool < 1 or pool > feature:
            raise ConfigError(
                f"model.pool={pool} does not fit the {feature}x{feature} feature map left after "
                f"{len(channels)} layers on {image_size}x{image_size} images; use a pool size "
                f"between 1 and {max(feature, 1)} (or fewer layers in model.channels)."
            )

        block_cls = BLOCKS[block]
        self.stem = nn.Sequential(*_conv_bn(in_channels, stem_channels, stem_kernel), nn.ReLU(inplace=True))
        layers, in_planes = [], stem_channels
        for i, (planes, n_blocks, spec) in enumerate(zip(channels, blocks, kernels)):
            strides = [1 if i == 0 else 2] + [1] * (n_blocks - 1)
            layer = []
            for s, (convs, sk) in zip(strides, _layer_kernels(spec, block_cls, strides, in_planes, planes, i)):
                layer.append(block_cls(in_planes, planes, s, convs, sk))
                in_planes = planes * block_cls.expansion
            layers.append(nn.Sequential(*layer))
        if extra_conv:
            layers.append(nn.Sequential(*_conv_bn(in_planes, extra_conv, 3), nn.ReLU(inplace=True)))
            in_planes = extra_conv
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AvgPool2d(pool)
        flat = in_planes * (feature // pool) ** 2
        head_layers: list[nn.Module] = [nn.Flatten()]
        for i, width in enumerate([*head, num_classes]):
            if dropout and i < dropout_layers:
                head_layers.append(nn.Dropout(dropout))
            head_layers += [nn.Linear(flat, width), nn.ReLU(inplace=True)]
            flat = width
        head_layers.pop()  # no ReLU after the classifier
        self.head = nn.Sequential(*head_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.layers(self.stem(x))))
