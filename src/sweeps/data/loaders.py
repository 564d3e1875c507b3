"""Batches for training and evaluation from uint8 splits."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from sweeps.data.datasets import Split


class TransformedSplit(Dataset):
    def __init__(self, split: Split, transform: Callable[[torch.Tensor], torch.Tensor]):
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        return self.transform(self.split.images[i]), self.split.labels[i]


def train_loader(split: Split, transform, batch_size: int, seed: int, num_workers: int = 0) -> DataLoader:
    """Per-sample augmentation, reshuffled every epoch from a seeded generator."""
    return DataLoader(
        TransformedSplit(split, transform),
        batch_size=batch_size,
        shuffle=True,
        drop_last=len(split) > batch_size,
        generator=torch.Generator().manual_seed(seed),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


def eval_batches(split: Split, transform, batch_size: int, limit: int | None = None) -> Iterator:
    """Deterministic batches; the transform is applied to a whole batch at once."""
    n_batches = (len(split) + batch_size - 1) // batch_size
    if limit is not None:
        n_batches = min(n_batches, limit)
    for b in range(n_batches):
        sl = slice(b * batch_size, (b + 1) * batch_size)
        yield transform(split.images[sl]), split.labels[sl]
