"""``trainer.pipeline=device``: the whole split held on the device, augmented in batches.

The uint8 train split is copied to the device once per trial (about 140 MB for
CIFAR-10); each epoch is a seeded ``randperm`` there and each batch a gather
plus :class:`BatchAugment`: no worker processes, no PIL, no host-to-device copy
per step and no host sync, which is what keeps a small model's GPU busy.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from sweeps.data.batch_augment import BatchAugment
from sweeps.data.splits import Split, eval_batches


def _device_generator(device: torch.device, seed: int) -> torch.Generator:
    """A generator on ``device`` where torch has one there, else on the CPU."""
    try:
        return torch.Generator(device=device).manual_seed(seed)
    except RuntimeError:
        return torch.Generator().manual_seed(seed)


class DeviceLoader:
    """Shuffled, augmented training batches from a split held on ``device``.

    Iterating yields ``(float32 normalized images, int64 labels)``, both on the
    device; every epoch (every ``iter()``) draws a new permutation from
    ``generator``, which also drives the augmentation, so one generator state
    (checkpointed by the engine) fixes the whole data stream.
    """

    def __init__(self, split: Split, augment: BatchAugment, batch_size: int, device: torch.device | str,
                 seed: int, drop_last: bool | None = None, channels_last: bool = False):
        self.device = torch.device(device)
        on_device = split.to(self.device)
        self.images, self.labels = on_device.images, on_device.labels
        self.augment = augment
        self.batch_size = int(batch_size)
        self.drop_last = len(split) > self.batch_size if drop_last is None else drop_last
        self.channels_last = channels_last
        self.generator = _device_generator(self.device, seed)

    def __len__(self) -> int:
        n, bs = len(self.labels), self.batch_size
        return n // bs if self.drop_last else (n + bs - 1) // bs

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        perm = torch.randperm(n, generator=self.generator, device=self.generator.device).to(self.device)
        for b in range(len(self)):
            idx = perm[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.augment(self.images[idx], self.generator)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx]


class DeviceEval:
    """A validation or test split copied to ``device`` once per trial, not once
    per evaluation; each call yields its normalized batches there."""

    def __init__(self, split: Split, augment: BatchAugment, batch_size: int, device: torch.device | str,
                 channels_last: bool = False):
        self.split = split.to(torch.device(device))
        self.augment, self.batch_size, self.channels_last = augment, int(batch_size), channels_last

    def __call__(self, limit: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return eval_batches(self.split, self.augment.normalize, self.batch_size, limit, self.channels_last)
