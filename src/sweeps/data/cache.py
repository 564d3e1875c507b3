"""Decode a dataset once: an on-disk uint8 cache plus an in-process one.

Decoding CIFAR (pickles -> numpy -> tensors) or resizing digits costs seconds
per trial; a sweep runs dozens of trials, often in one process (Hydra's basic
launcher). So the decoded (train, test) pair is kept

* in this process, in a dict keyed by a hash of the dataset config keys that
  affect the content (every key except those listed in ``NOT_CONTENT``, so an
  unknown new key never makes two different datasets share an entry), and
* on disk, as ``<dataset.root>/cache/<name>-<hash>.pt`` (``torch.save`` of
  uint8/int64 tensors) with its SHA-256 beside it in ``<file>.sha256``
  (``sha256sum -c`` format). Every load verifies the checksum, the hash and the
  tensors' dtypes and shapes; a truncated or corrupt file is logged as a
  warning and rebuilt, never trained on.

The validation split is cut from the cached training images afterwards (by
``load_splits``), so ``val_fraction`` is not part of the key. Disable the disk
cache with ``dataset.cache=false`` or ``SWEEPS_DATA_CACHE=0``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from sweeps.data.splits import Split

log = logging.getLogger("sweeps.data.cache")

CACHE_VERSION = 1
# Dataset config keys that never change the decoded images or labels.
NOT_CONTENT = frozenset({"root", "download", "mean", "std", "val_fraction", "cache"})

_MEMORY: dict[str, tuple[Split, Split]] = {}


class CorruptCache(RuntimeError):
    """A cache file that must not be trained on."""


def content_key(cfg: DictConfig) -> str:
    """16 hex digits identifying the decoded content of the ``dataset`` node."""
    content = {}
    for key in sorted(cfg.keys()):
        if key in NOT_CONTENT:
            continue
        value = cfg[key]
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True)
        content[str(key)] = value
    blob = json.dumps({"version": CACHE_VERSION, "content": content}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_path(cfg: DictConfig) -> Path:
    return Path(str(cfg.root)) / "cache" / f"{cfg.name}-{content_key(cfg)}.pt"


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def disk_cache_enabled(cfg: DictConfig) -> bool:
    return bool(cfg.get("cache", True)) and os.environ.get("SWEEPS_DATA_CACHE", "1") != "0"


def clear_memory_cache() -> None:
    _MEMORY.clear()
    _SPLITS.clear()


_SPLITS: dict[tuple, Any] = {}  # the last dataset's Splits: an in-process sweep's trials share them


def split_once(key: tuple, split: Callable[[], Any]) -> Any:
    """``split()``'s result, made once per ``key`` in this process (one dataset at a time, so that a
    sweep over datasets keeps no stale copy); read-only, like :func:`cached_decode`'s tensors."""
    if key not in _SPLITS:
        value = split()
        _SPLITS.clear()
        _SPLITS[key] = value
    return _SPLITS[key]


def _check_split(images, labels, what: str) -> Split:
    if not (isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor)):
        raise CorruptCache(f"{what} is not a pair of tensors")
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise CorruptCache(f"{what} images are {images.dtype} {tuple(images.shape)}, not uint8 (N, C, H, W)")
    if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
        raise CorruptCache(f"{what} labels are {labels.dtype} {tuple(labels.shape)}, not int64 ({images.shape[0]},)")
    return Split(images, labels)


def read_cache(path: Path, key: str) -> tuple[Split, Split]:
    """The verified (train, test) pair in ``path``; raises CorruptCache otherwise."""
    sums = checksum_path(path)
    if not sums.is_file():
        raise CorruptCache(f"its checksum file {sums.name} is missing (an interrupted write?)")
    try:
        expected = sums.read_text().split()[0].lower()
    except (OSError, IndexError, UnicodeDecodeError) as e:
        raise CorruptCache(f"its checksum file {sums.name} is unreadable ({e})") from None
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise CorruptCache(f"SHA-256 mismatch ({len(data):,} bytes hash to {actual[:12]}..., "
                           f"{sums.name} says {expected[:12]}...): truncated or corrupt")
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CorruptCache(f"it does not load ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict) or obj.get("key") != key or obj.get("version") != CACHE_VERSION:
        raise CorruptCache("its header does not match the dataset config (key or version)")
    return (_check_split(obj.get("train_images"), obj.get("train_labels"), "train"),
            _check_split(obj.get("test_images"), obj.get("test_labels"), "test"))


def write_cache(path: Path, key: str, parts: tuple[Split, Split]) -> None:
    """Write data then checksum, each atomically (tmp + rename), so readers never see a torn file."""
    train, test = parts
    buf = io.BytesIO()
    torch.save({
        "version": CACHE_VERSION, "key": key,
        "train_images": train.images.contiguous(), "train_labels": train.labels.contiguous(),
        "test_images": test.images.contiguous(), "test_labels": test.labels.contiguous(),
    }, buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = f".tmp{os.getpid()}"
    tmp_data, tmp_sum = path.with_name(path.name + suffix), checksum_path(path).with_name(checksum_path(path).name + suffix)
    tmp_data.write_bytes(data)
    tmp_sum.write_text(f"{digest}  {path.name}\n")
    tmp_data.replace(path)
    tmp_sum.replace(checksum_path(path))


def cached_decode(cfg: DictConfig, decode: Callable[[], tuple[Split, Split]]) -> tuple[Split, Split]:
    """(train, test) for ``cfg``: from memory, else from a verified disk cache, else ``decode()``.

    The returned tensors are shared between callers in this process: treat
    them as read-only (``load_splits`` copies when it cuts the validation split).
    """
    key = content_key(cfg)
    if key in _MEMORY:
        log.debug("dataset %s: in-process cache hit (%s)", cfg.name, key)
        return _MEMORY[key]
    parts = None
    path = cache_path(cfg) if disk_cache_enabled(cfg) else None
    if path is not None and path.exists():
        try:
            parts = read_cache(path, key)
            log.info("dataset %s: loaded the decoded cache %s", cfg.name, path)
        except (CorruptCache, OSError) as e:
            log.warning("dataset %s: the cache %s is unusable: %s; decoding again and rebuilding it.",
                        cfg.name, path, e)
    if parts is None:
        parts = decode()
        if path is not None:
            try:
                write_cache(path, key, parts)
                log.info("dataset %s: wrote the decoded cache %s", cfg.name, path)
            except OSError as e:
                log.warning("dataset %s: could not write the cache %s (%s); continuing without it.",
                            cfg.name, path, e)
    _MEMORY[key] = parts
    return parts
