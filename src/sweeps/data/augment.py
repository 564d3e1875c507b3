"""The ``augment`` config node as torchvision transforms v2.

This is the per-sample (DataLoader) path: every option, AutoAugment included,
works here on uint8 CHW tensors, exactly as the seeds' CPU pipelines do.
torchvision is imported only when such a pipeline is built: importing it costs
seconds (it pulls in torch's compiler), which the device pipeline, the
normalization both paths share and every config check can do without.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig

from sweeps.errors import ConfigError

if TYPE_CHECKING:
    from torchvision.transforms import v2


def normalization(aug: DictConfig, ds: DictConfig) -> tuple[list[float], list[float]] | None:
    """(mean, std) to normalize with, or None when the option does not normalize."""
    if not aug.normalize:
        return None
    mean = list(aug.mean if aug.get("mean") is not None else ds.mean)
    std = list(aug.std if aug.get("std") is not None else ds.std)
    if len(mean) != ds.channels or len(std) != ds.channels:
        raise ConfigError(
            f"normalization mean={mean} std={std} must have one value per image channel "
            f"({ds.channels} for dataset={ds.name}); set augment.mean/augment.std to match, or "
            "null to use the dataset's."
        )
    if min(std) <= 0:
        raise ConfigError(f"normalization std={std} must be positive.")
    return mean, std


def _to_normalized_float(aug: DictConfig, ds: DictConfig) -> list[v2.Transform]:
    """Scaling to [0, 1], then normalization where the option asks for it: one
    definition, so that training and evaluation images can never differ in it."""
    from torchvision.transforms import v2

    ops: list[v2.Transform] = [v2.ToDtype(torch.float32, scale=True)]
    norm = normalization(aug, ds)
    if norm:
        ops.append(v2.Normalize(*norm))
    return ops


def train_transform(aug: DictConfig, ds: DictConfig) -> v2.Compose:
    from torchvision.transforms import v2

    ops: list[v2.Transform] = []
    if aug.get("autoaugment"):
        policies = {p.name.lower(): p for p in v2.AutoAugmentPolicy}
        name = str(aug.autoaugment).lower()
        if name not in policies:
            raise ConfigError(
                f"augment.autoaugment={aug.autoaugment!r} is not a torchvision policy; use one "
                f"of {sorted(policies)} or null."
            )
        ops.append(v2.AutoAugment(policies[name]))
    if aug.get("crop"):
        ops.append(
            v2.RandomCrop(
                int(ds.image_size),
                padding=int(aug.crop.padding),
                padding_mode=str(aug.crop.get("padding_mode", "constant")),
            )
        )
    if aug.get("flip"):
        ops.append(v2.RandomHorizontalFlip(float(aug.flip)))
    if aug.get("rotate"):
        ops.append(v2.RandomRotation(float(aug.rotate)))
    ops += _to_normalized_float(aug, ds)
    if aug.get("cutout"):
        # Cutout (DeVries & Taylor) of a fixed size x size square, after
        # normalization so that the hole is the mean colour (zero).
        frac = (int(aug.cutout.size) / int(ds.image_size)) ** 2
        ops.append(v2.RandomErasing(p=float(aug.cutout.get("p", 1.0)), scale=(frac, frac), ratio=(1.0, 1.0), value=0))
    return v2.Compose(ops)


def eval_transform(aug: DictConfig, ds: DictConfig) -> v2.Compose:
    """Deterministic: scale to [0, 1] and normalize like the training images."""
    from torchvision.transforms import v2

    return v2.Compose(_to_normalized_float(aug, ds))
