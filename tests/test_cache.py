"""The decoded-dataset cache: written once, reloaded without decoding, corruption rebuilt loudly."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sweeps.data import cache, datasets
from sweeps.data.cache import cache_path, checksum_path, clear_memory_cache, content_key
from sweeps.data.datasets import load_splits
from sweeps.paths import CONF_DIR


@pytest.fixture
def digits(tmp_path, monkeypatch):
    """A digits config rooted in tmp_path and a counter of real decodes."""
    clear_memory_cache()
    monkeypatch.delenv("SWEEPS_DATA_CACHE", raising=False)
    cfg = OmegaConf.load(Path(CONF_DIR) / "dataset" / "digits.yaml")
    cfg.root = str(tmp_path / "data")
    calls = []
    real = datasets._LOADERS["digits"]

    def counting(c):
        calls.append(1)
        return real(c)

    monkeypatch.setitem(datasets._LOADERS, "digits", counting)
    yield cfg, calls
    clear_memory_cache()


def same(a, b) -> bool:
    return all(torch.equal(getattr(a, s).images, getattr(b, s).images) and torch.equal(getattr(a, s).labels, getattr(b, s).labels)
               for s in ("train", "val", "test"))


def test_written_once_then_reloaded_without_decoding(digits):
    cfg, calls = digits
    first = load_splits(cfg)
    path = cache_path(cfg)
    assert len(calls) == 1
    assert path.is_file() and checksum_path(path).is_file()
    assert path.parent == Path(cfg.root) / "cache" and path.name == f"digits-{content_key(cfg)}.pt"
    mtime = path.stat().st_mtime_ns
    assert same(load_splits(cfg), first) and len(calls) == 1  # in-process cache
    clear_memory_cache()  # a new process: the disk cache
    assert same(load_splits(cfg), first) and len(calls) == 1
    assert path.stat().st_mtime_ns == mtime  # not rewritten


def test_key_depends_on_content_only(digits):
    cfg, _ = digits
    key = content_key(cfg)
    for k, v in {"root": "/elsewhere", "mean": [0.1], "std": [0.2], "val_fraction": 0.3, "download": True}.items():
        other = cfg.copy()
        other[k] = v
        assert content_key(other) == key, k
    for k, v in {"image_size": 16, "channels": 1, "test_fraction": 0.3, "name": "fake"}.items():
        other = cfg.copy()
        other[k] = v
        assert content_key(other) != key, k


def corrupt_and_reload(cfg, calls, caplog, damage):
    good = load_splits(cfg)
    path = cache_path(cfg)
    damage(path)
    clear_memory_cache()
    with caplog.at_level(logging.WARNING, logger="sweeps.data.cache"):
        again = load_splits(cfg)
    assert len(calls) == 2  # decoded again, not trained on the bad file
    assert any(r.levelno == logging.WARNING and "unusable" in r.getMessage() for r in caplog.records), caplog.text
    assert same(again, good)
    cache.read_cache(path, content_key(cfg))  # rebuilt: verifies again
    clear_memory_cache()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sweeps.data.cache"):
        load_splits(cfg)
    assert len(calls) == 2 and not caplog.records  # and the rebuilt file is used quietly
    return caplog


def test_truncated_file_is_detected_and_rebuilt(digits, caplog):
    cfg, calls = digits
    corrupt_and_reload(cfg, calls, caplog, lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]))


def test_checksum_mismatch_is_detected_and_rebuilt(digits, caplog):
    cfg, calls = digits

    def flip_one_byte(p):
        data = bytearray(p.read_bytes())
        data[len(data) - 100] ^= 0xFF  # same length, inside the tensor data
        p.write_bytes(bytes(data))

    corrupt_and_reload(cfg, calls, caplog, flip_one_byte)


def test_wrong_checksum_file_is_detected_and_rebuilt(digits, caplog):
    cfg, calls = digits
    corrupt_and_reload(cfg, calls, caplog, lambda p: checksum_path(p).write_text("0" * 64 + "  x.pt\n"))


def test_missing_checksum_is_detected_and_rebuilt(digits, caplog):
    cfg, calls = digits
    corrupt_and_reload(cfg, calls, caplog, lambda p: checksum_path(p).unlink())


def test_garbage_with_a_matching_checksum_is_still_refused(digits, caplog):
    """A file that hashes right but is not our tensors (e.g. a foreign file copied in)."""
    cfg, calls = digits

    def replace(p):
        torch.save({"version": cache.CACHE_VERSION, "key": content_key(cfg), "train_images": torch.zeros(3)}, p)
        import hashlib
        checksum_path(p).write_text(hashlib.sha256(p.read_bytes()).hexdigest() + "  " + p.name + "\n")

    corrupt_and_reload(cfg, calls, caplog, replace)


def test_disk_cache_can_be_disabled(digits, monkeypatch):
    cfg, calls = digits
    monkeypatch.setenv("SWEEPS_DATA_CACHE", "0")
    load_splits(cfg)
    assert not cache_path(cfg).exists() and len(calls) == 1
    load_splits(cfg)
    assert len(calls) == 1  # the in-process cache still works


def test_unwritable_root_warns_and_trains_on(digits, caplog, tmp_path):
    cfg, calls = digits
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cfg.root = str(blocker)
    with caplog.at_level(logging.WARNING, logger="sweeps.data.cache"):
        splits = load_splits(cfg)
    assert len(splits.train) > 0 and "could not write" in caplog.text


def test_digits_are_scikit_learns_without_importing_it(monkeypatch):
    from sklearn.datasets import load_digits

    reference = load_digits()
    images, labels = datasets.digits_arrays()
    assert images.shape == (1797, 8, 8) and (images == reference.images).all()
    assert (labels == reference.target).all()
    # a scikit-learn without that file: load_digits itself
    monkeypatch.setattr(datasets.importlib.util, "find_spec", lambda name: None)
    images, labels = datasets.digits_arrays()
    assert (images == reference.images).all() and (labels == reference.target).all()


def test_decoding_digits_leaves_scikit_learn_unimported(tmp_path):
    code = ("import sys; from omegaconf import OmegaConf; from sweeps.data import datasets; "
            f"cfg = OmegaConf.load({str(Path(CONF_DIR) / 'dataset' / 'digits.yaml')!r}); cfg.root = {str(tmp_path)!r}; "
            "s = datasets.load_splits(cfg); print(len(s.train.labels) + len(s.val.labels), len(s.test.labels), "
            "'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1438", "359", "False"]
