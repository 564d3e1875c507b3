"""The ``dataset`` config node as train/validation/test splits.

The decoders only turn a source (torchvision's CIFAR folders, scikit-learn's
digits, seeded noise) into a (train, test) pair of uint8 splits; ``load_splits``
decodes through the cache, so a sweep pays for decoding once, and cuts the
validation split afterwards, so that changing ``val_fraction`` never
invalidates the cache.
"""

from __future__ import annotations

import gzip
import importlib.util
import socket
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from sweeps.data.cache import cached_decode, content_key, split_once
from sweeps.data.splits import Split, Splits, split_off
from sweeps.errors import ConfigError, DataUnavailable


def _cifar(cfg: DictConfig) -> tuple[Split, Split]:
    from torchvision import datasets

    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[cfg.name]
    root = Path(cfg.root)
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # fail fast without a network instead of hanging
    try:
        parts = [cls(str(root), train=train, download=bool(cfg.download)) for train in (True, False)]
    except (OSError, RuntimeError) as e:
        raise DataUnavailable(
            f"{cfg.name} is not in {root} and could not be downloaded ({type(e).__name__}: {e}). "
            f"Put torchvision's '{cls.base_folder}' folder under {root} (or set "
            f"dataset.root=/path/to/dir with dataset.download=true on a machine with network "
            "access), or train offline on scikit-learn's digits with dataset=digits."
        ) from None
    finally:
        socket.setdefaulttimeout(old_timeout)
    return tuple(
        Split(
            torch.from_numpy(p.data).permute(0, 3, 1, 2).contiguous(),
            torch.tensor(p.targets, dtype=torch.int64),
        )
        for p in parts
    )


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: images (1797, 8, 8) in 0..16 and their labels, as ``load_digits`` gives them.

    Read from the file scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``, which
    ``load_digits`` parses the same way) without importing scikit-learn: that import (SciPy and
    the rest) took 1.2 s here, more than all else a tiny digits run does before its first step.
    Where the file is not there, or not what it was, ``load_digits`` itself.
    """
    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    for where in (spec.submodule_search_locations or []) if spec else []:
        path = Path(where) / "datasets" / "data" / "digits.csv.gz"
        try:
            with gzip.open(path, "rt") as f:
                data = np.loadtxt(f, delimiter=",")
        except (OSError, ValueError):
            continue
        if data.shape == (1797, 65):
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


def _digits(cfg: DictConfig) -> tuple[Split, Split]:
    pixels, labels = digits_arrays()
    images = torch.from_numpy(pixels.astype(np.float32) / 16.0)[:, None]
    size = int(cfg.image_size)
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    if cfg.channels == 3:
        images = images.expand(-1, 3, -1, -1).contiguous()
    full = Split(images, torch.from_numpy(labels).to(torch.int64))
    # A fixed test split, independent of split_seed, so that test accuracy is
    # comparable across every run on digits.
    return split_off(full, float(cfg.test_fraction), 12345)


def _fake(cfg: DictConfig) -> tuple[Split, Split]:
    gen = torch.Generator().manual_seed(int(cfg.split_seed))
    shape = (int(cfg.channels), int(cfg.image_size), int(cfg.image_size))
    colours = torch.rand(int(cfg.num_classes), shape[0], 1, 1, generator=gen) * 160 + 48

    def make(n: int) -> Split:
        labels = torch.randint(0, int(cfg.num_classes), (n,), generator=gen)
        noise = torch.randn(n, *shape, generator=gen) * 40
        return Split((colours[labels] + noise).clamp(0, 255).to(torch.uint8), labels)

    return make(int(cfg.train_size)), make(int(cfg.test_size))


_LOADERS = {"cifar10": _cifar, "cifar100": _cifar, "digits": _digits, "fake": _fake}


def load_splits(cfg: DictConfig) -> Splits:
    """Train/validation/test splits for the ``dataset`` config node, read-only like
    :func:`cached_decode`'s tensors (every trial of an in-process sweep gets the same)."""
    if cfg.name not in _LOADERS:
        raise ConfigError(
            f"dataset.name={cfg.name!r} is not a known dataset; use one of {sorted(_LOADERS)}."
        )

    def split() -> Splits:
        train, test = cached_decode(cfg, lambda: _LOADERS[cfg.name](cfg))
        train, val = split_off(train, float(cfg.val_fraction), int(cfg.split_seed))
        return Splits(train, val, test)

    return split_once((content_key(cfg), float(cfg.val_fraction), int(cfg.split_seed)), split)
