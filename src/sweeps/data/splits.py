"""Splits as uint8 image tensors, and the two deterministic ways a split is cut.

Every other data module speaks in ``Split`` (the cache stores them, the
decoders make them, both pipelines batch them), so they live here, below all
of them, and no data module has to import another one just for the type.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from sweeps.errors import ConfigError


@dataclass
class Split:
    """One uint8 tensor for the whole split (as airbench does): cheap to hold in
    memory or on the GPU, and the same tensors feed both pipelines."""

    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> Split:
        return Split(self.images.to(device, non_blocking=True), self.labels.to(device, non_blocking=True))


@dataclass
class Splits:
    train: Split
    val: Split
    test: Split


def split_off(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """A (rest, held-out) partition that depends only on ``seed``, so that every
    trial of a sweep validates on the same images."""
    n = len(split)
    n_out = int(round(n * fraction))
    if n_out < 1 or n_out >= n:
        raise ConfigError(
            f"a fraction of {fraction} of {n} images leaves an empty split; choose a "
            "fraction that keeps at least one image on each side."
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    keep, out = perm[n_out:].sort().values, perm[:n_out].sort().values
    return (
        Split(split.images[keep], split.labels[keep]),
        Split(split.images[out], split.labels[out]),
    )


def eval_batches(split: Split, transform: Callable[[torch.Tensor], torch.Tensor], batch_size: int,
                 limit: int | None = None, channels_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive batches, the first ``limit`` of them: the same images in the
    same order on either pipeline, so that their metrics compare. ``transform``
    sees a whole batch at once."""
    n_batches = (len(split) + batch_size - 1) // batch_size
    if limit is not None:
        n_batches = min(n_batches, int(limit))
    for b in range(n_batches):
        sl = slice(b * batch_size, (b + 1) * batch_size)
        x = transform(split.images[sl])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, split.labels[sl]
