"""``trainer.pipeline=dataloader``: per-sample torchvision transforms in a torch DataLoader.

The seeds trained this way, and it is the only path for the options that have
no batched version (AutoAugment). The LR finder uses ``train_loader`` directly,
because ``torch_lr_finder`` wants a DataLoader.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset

from sweeps.data.splits import Split


class TransformedSplit(Dataset):
    def __init__(self, split: Split, transform: Callable[[torch.Tensor], torch.Tensor]):
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        return self.transform(self.split.images[i]), self.split.labels[i]


def train_loader(split: Split, transform, batch_size: int, seed: int, num_workers: int = 0) -> DataLoader:
    """Reshuffled every epoch from its own seeded generator, whose state the
    engine checkpoints, so that a resumed run continues the same stream."""
    return DataLoader(
        TransformedSplit(split, transform),
        batch_size=batch_size,
        shuffle=True,
        drop_last=len(split) > batch_size,
        generator=torch.Generator().manual_seed(seed),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
