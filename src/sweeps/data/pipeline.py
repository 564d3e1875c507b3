"""Which training data pipeline a trial gets (``trainer.pipeline``), built behind one interface.

* ``device``: :class:`~sweeps.data.device_loader.DeviceLoader` with
  :class:`~sweeps.data.batch_augment.BatchAugment`, the fast path.
* ``dataloader``: the seeds' per-sample torchvision pipeline
  (:mod:`sweeps.data.dataloader`); every augment option, AutoAugment included.
* ``auto``: ``device`` when the augment options allow it (on the CPU too: the
  batched ops beat per-sample transforms there as well), else ``dataloader``.

The choice is logged, because the two paths draw different random streams:
the same seed gives the same run only on the same pipeline. The trainer sees
only a :class:`Pipeline`, so it never needs to know which one it got.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from sweeps.data.augment import eval_transform, train_transform
from sweeps.data.batch_augment import BatchAugment, unsupported_options
from sweeps.data.dataloader import train_loader
from sweeps.data.device_loader import DeviceEval, DeviceLoader
from sweeps.data.splits import Splits, eval_batches
from sweeps.errors import ConfigError

log = logging.getLogger("sweeps.data.pipeline")

PIPELINES = ("auto", "device", "dataloader")


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


@dataclass
class Pipeline:
    name: str  # "device" or "dataloader"
    train: object  # iterable of (x, y) batches with len()
    generator: torch.Generator  # its state is checkpointed for resume
    val_batches: Callable[[], Iterator]
    test_batches: Callable[[], Iterator]


def use_channels_last(cfg: DictConfig, device: torch.device) -> bool:
    """``trainer.channels_last`` applies to the model and the batches alike, and only pays on CUDA."""
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

    train_tf, eval_tf = train_transform(cfg.augment, cfg.dataset), eval_transform(cfg.augment, cfg.dataset)
    loader = train_loader(splits.train, train_tf, int(t.batch_size), int(cfg.seed), int(t.num_workers))
    eb = int(t.eval_batch_size)
    # loader.generator is the one its RandomSampler shuffles with: checkpoint that one.
    return Pipeline(name, loader, loader.generator,
                    lambda: eval_batches(splits.val, eval_tf, eb, limit),
                    lambda: eval_batches(splits.test, eval_tf, eb, limit))
