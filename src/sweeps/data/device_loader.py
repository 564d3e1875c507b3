"""The training data pipeline: the whole split on the device, augmented in batches.

``trainer.pipeline``:

* ``device``: :class:`DeviceLoader`. The uint8 train split is copied to the
  device once per trial (about 140 MB for CIFAR-10); each epoch is a seeded
  ``randperm`` on the device, each batch a gather plus :class:`BatchAugment`.
  No worker processes, no PIL, no host-to-device copy per step, no host sync.
* ``dataloader``: the seeds' per-sample torchvision pipeline
  (``sweeps.data.loaders``); every augment option, AutoAugment included.
* ``auto``: ``device`` when the augment options allow it (on the CPU too: the
  batched ops beat per-sample transforms there as well), else ``dataloader``.
  The choice is logged.

:func:`build_pipeline` returns the train loader, its generator (whose state the
engine checkpoints) and the validation/test batch factories; :func:`prepare_model`
applies ``trainer.channels_last`` (CUDA) and ``trainer.compile``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import nn

from sweeps.data.batch_augment import BatchAugment, unsupported_options
from sweeps.data.datasets import Split, Splits
from sweeps.errors import ConfigError

log = logging.getLogger("sweeps.data.pipeline")

PIPELINES = ("auto", "device", "dataloader")


def _device_generator(device: torch.device, seed: int) -> torch.Generator:
    """A generator on ``device`` where torch has one there, else on the CPU."""
    try:
        return torch.Generator(device=device).manual_seed(seed)
    except RuntimeError:
        return torch.Generator().manual_seed(seed)


def select_pipeline(cfg: DictConfig, device: torch.device | None = None) -> str:
    """``device`` or ``dataloader`` for ``trainer.pipeline``; raises ConfigError when impossible."""
    choice = str(cfg.trainer.get("pipeline", "auto"))
    if choice not in PIPELINES:
        raise ConfigError(f"trainer.pipeline={choice!r} is not one of {list(PIPELINES)}; "
                          "auto picks the device pipeline whenever the augment options allow it.")
    bad = unsupported_options(cfg.augment)
    if choice == "device" and bad:
        raise ConfigError(
            f"trainer.pipeline=device cannot apply {', '.join(bad)}: only the per-sample DataLoader "
            "pipeline implements it. Use trainer.pipeline=auto or trainer.pipeline=dataloader, or drop "
            "the option (e.g. augment.autoaugment=null)."
        )
    if choice == "auto":
        chosen = "dataloader" if bad else "device"
        why = f" ({', '.join(bad)} needs the per-sample path)" if bad else ""
        log.info(f"data pipeline: {chosen} (trainer.pipeline=auto){why}")
        return chosen
    log.info(f"data pipeline: {choice}")
    return choice


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
        self.images = split.images.to(self.device, non_blocking=True)
        self.labels = split.labels.to(self.device, non_blocking=True)
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
    """Deterministic normalized batches of a split held on ``device``."""

    def __init__(self, split: Split, augment: BatchAugment, batch_size: int, device: torch.device | str,
                 channels_last: bool = False):
        self.device = torch.device(device)
        self.images = split.images.to(self.device, non_blocking=True)
        self.labels = split.labels.to(self.device, non_blocking=True)
        self.augment, self.batch_size, self.channels_last = augment, int(batch_size), channels_last

    def __call__(self, limit: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n_batches = (len(self.labels) + self.batch_size - 1) // self.batch_size
        if limit is not None:
            n_batches = min(n_batches, int(limit))
        for b in range(n_batches):
            sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
            x = self.augment.normalize(self.images[sl])
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[sl]


@dataclass
class Pipeline:
    name: str  # "device" or "dataloader"
    train: object  # iterable of (x, y) batches with len()
    generator: torch.Generator  # its state is checkpointed for resume
    val_batches: Callable[[], Iterator]
    test_batches: Callable[[], Iterator]


def use_channels_last(cfg: DictConfig, device: torch.device) -> bool:
    return device.type == "cuda" and bool(cfg.trainer.get("channels_last", True))


def build_pipeline(cfg: DictConfig, splits: Splits, device: torch.device, name: str | None = None) -> Pipeline:
    """The train loader and eval batch factories for ``trainer.pipeline``."""
    t = cfg.trainer
    name = name or select_pipeline(cfg, device)
    limit = t.get("limit_eval_batches")
    if name == "device":
        aug = BatchAugment(cfg.augment, cfg.dataset)
        cl = use_channels_last(cfg, device)
        loader = DeviceLoader(splits.train, aug, int(t.batch_size), device, int(cfg.seed), channels_last=cl)
        val = DeviceEval(splits.val, aug, int(t.eval_batch_size), device, cl)
        test = DeviceEval(splits.test, aug, int(t.eval_batch_size), device, cl)
        return Pipeline(name, loader, loader.generator, lambda: val(limit), lambda: test(limit))

    from sweeps.data.augment import eval_transform, train_transform
    from sweeps.data.loaders import eval_batches, train_loader

    train_tf, eval_tf = train_transform(cfg.augment, cfg.dataset), eval_transform(cfg.augment, cfg.dataset)
    loader = train_loader(splits.train, train_tf, int(t.batch_size), int(cfg.seed), int(t.num_workers))
    eb = int(t.eval_batch_size)
    # loader.generator is the one its RandomSampler shuffles with: checkpoint that one.
    return Pipeline(name, loader, loader.generator,
                    lambda: eval_batches(splits.val, eval_tf, eb, limit),
                    lambda: eval_batches(splits.test, eval_tf, eb, limit))


def prepare_model(model: nn.Module, cfg: DictConfig, device: torch.device) -> nn.Module:
    """``trainer.channels_last`` (CUDA only) and ``trainer.compile`` (in place; state-dict keys unchanged)."""
    if use_channels_last(cfg, device):
        model = model.to(memory_format=torch.channels_last)
    if bool(cfg.trainer.get("compile", False)):
        model.compile()
        log.info("model compiled with torch.compile")
    return model
