"""BatchAugment (device, batched) against the torchvision v2 per-sample transforms.

Exact where the two can be compared sample by sample (a fixed crop offset,
flip or angle, normalization); statistical where only the distribution is
defined (flip rate, crop offsets, cutout area), with tolerances from the
binomial / chi-square spread so that a real bias fails.
"""

from __future__ import annotations

import logging
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from sweeps.data.augment import eval_transform, normalization, train_transform
from sweeps.data.batch_augment import BatchAugment, unsupported_options
from sweeps.data.device_loader import DeviceLoader
from sweeps.data.pipeline import build_pipeline, select_pipeline
from sweeps.data.splits import Split, Splits
from sweeps.errors import ConfigError
from sweeps.paths import CONF_DIR

CONF = Path(CONF_DIR)
REPO = CONF.parent
AUG_NAMES = sorted(p.stem for p in (CONF / "augment").glob("*.yaml"))
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def ds_cfg(name: str = "cifar10"):
    ds = OmegaConf.load(CONF / "dataset" / f"{name}.yaml")
    ds.root = "/nonexistent"
    return ds


def aug_cfg(name: str = "none", **changes):
    aug = OmegaConf.load(CONF / "augment" / f"{name}.yaml")
    for key, value in changes.items():
        OmegaConf.update(aug, key, value, merge=False)
    return aug


def images(n: int, seed: int = 0, c: int = 3, size: int = 32) -> torch.Tensor:
    """Smooth-ish random uint8 images (a noisy gradient), so that crops and rotations change them."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 200, size)
    base = ramp[None, None, :, None] * 0.5 + ramp[None, None, None, :] * 0.5
    noise = torch.rand(n, c, size, size, generator=g) * 55
    return (base + noise).round().clamp(0, 255).to(torch.uint8)


def torchvision_batch(tf, x: torch.Tensor) -> torch.Tensor:
    return torch.stack([tf(img) for img in x])


def binomial_tol(p: float, n: int, k: float = 4.5) -> float:
    return k * math.sqrt(max(p * (1 - p), 1e-12) / n)


# --- every option: same shape, dtype, value range and statistics as torchvision ---

DEVICE_AUG_NAMES = [n for n in AUG_NAMES if not unsupported_options(OmegaConf.load(CONF / 'augment' / f'{n}.yaml'))]
VARIANTS = [(name, {}) for name in DEVICE_AUG_NAMES] + [
    ("norm_crop_flip", {"crop.padding_mode": "reflect"}),
    ("norm_crop_flip_rotate", {"cutout": {"size": 8, "p": 1.0}}),
    ("none", {"cutout": {"size": 12, "p": 0.5}, "rotate": 15}),
]


@pytest.mark.parametrize("name,changes", VARIANTS, ids=[f"{n}{'+' + ','.join(c) if c else ''}" for n, c in VARIANTS])
def test_matches_torchvision_shape_dtype_range(name, changes):
    aug, ds = aug_cfg(name, **changes), ds_cfg()
    x = images(256)
    ours = BatchAugment(aug, ds)(x, torch.Generator().manual_seed(1))
    torch.manual_seed(1)
    ref = torchvision_batch(train_transform(aug, ds), x)
    assert ours.shape == ref.shape == x.shape
    assert ours.dtype == ref.dtype == torch.float32
    norm = normalization(aug, ds)
    mean, std = (torch.tensor(norm[0]), torch.tensor(norm[1])) if norm else (torch.zeros(3), torch.ones(3))
    lo, hi = (-mean / std).view(1, 3, 1, 1), ((1 - mean) / std).view(1, 3, 1, 1)
    zero = torch.zeros(())  # cutout writes 0 after normalization
    for out in (ours, ref):
        assert ((out >= lo - 1e-5) | (out == zero)).all() and ((out <= hi + 1e-5) | (out == zero)).all()
    # Same distribution: per-channel mean and spread agree closely over the batch.
    for stat in (lambda t: t.mean(dim=(0, 2, 3)), lambda t: t.std(dim=(0, 2, 3))):
        assert torch.allclose(stat(ours), stat(ref), atol=0.02 * float(1 / std.min())), (stat(ours), stat(ref))


def test_autoaugment_is_refused_not_dropped():
    aug, ds = aug_cfg("norm", autoaugment="cifar10"), ds_cfg()
    assert unsupported_options(aug) == ["augment.autoaugment=cifar10"]
    with pytest.raises(ConfigError, match="autoaugment"):
        BatchAugment(aug, ds)
    # An option this module does not know must not be silently ignored either.
    unknown = aug_cfg("norm")
    unknown.color_jitter = 0.4
    assert unsupported_options(unknown) == ["augment.color_jitter=0.4"]


# --- flip ---

@pytest.mark.parametrize("p", [0.5, 0.2, 1.0, 0.0])
def test_flip_rate(p):
    aug = aug_cfg("none", flip=p)
    n = 4000
    x = images(1).expand(n, -1, -1, -1).contiguous()
    out = BatchAugment(aug, ds_cfg())(x, torch.Generator().manual_seed(2))
    plain = x[:1].float().mul(1 / 255)  # exactly as v2.ToDtype(scale=True)
    flipped = plain.flip(-1)
    is_flipped = (out == flipped).flatten(1).all(1)
    is_plain = (out == plain).flatten(1).all(1)
    assert bool((is_flipped ^ is_plain).all())  # each sample is exactly one of the two
    rate = is_flipped.float().mean().item()
    assert abs(rate - p) <= binomial_tol(p, n) + 1e-9, rate


# --- crop ---

def coordinate_image(size: int = 32) -> torch.Tensor:
    """Channel 0 = row + 1, channel 1 = column + 1, channel 2 = 7: the padding (0) is distinguishable."""
    r = torch.arange(1, size + 1)
    return torch.stack([r[:, None].expand(size, size), r[None, :].expand(size, size),
                        torch.full((size, size), 7)]).to(torch.uint8)


@pytest.mark.parametrize("padding", [4, 2])
def test_crop_offsets_uniform(padding):
    aug = aug_cfg("none", crop={"padding": padding, "padding_mode": "constant"})
    n_pos = 2 * padding + 1
    n = 600 * n_pos
    x = coordinate_image()[None].expand(n, -1, -1, -1).contiguous()
    out = BatchAugment(aug, ds_cfg())(x, torch.Generator().manual_seed(3))
    centre = (out[:, :2, 16, 16] * 255).round().long()  # source row/col + 1 at output (16, 16)
    offsets = centre - 1 - 16 + padding  # top/left in [0, 2 * padding]
    for axis in range(2):
        counts = torch.bincount(offsets[:, axis], minlength=n_pos)
        assert len(counts) == n_pos and bool((counts > 0).all())
        expected = n / n_pos
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        # chi-square, n_pos - 1 dof: mean dof, sd sqrt(2 dof); 6 sd is far beyond chance.
        dof = n_pos - 1
        assert chi2 < dof + 6 * math.sqrt(2 * dof), (counts, chi2)
    # Offsets are independent per sample and per axis (not one offset per batch).
    assert len(torch.unique(offsets, dim=0)) == n_pos ** 2


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "symmetric"])
def test_padding_fill_matches_torchvision_for_fixed_offsets(mode):
    aug = aug_cfg("none", crop={"padding": 4, "padding_mode": mode})
    ba = BatchAugment(aug, ds_cfg())
    x = images(6, seed=4)
    offsets = torch.tensor([[0, 8], [3, 5], [8, 0], [4, 4], [0, 0], [8, 8]])
    flips = torch.tensor([False, True, False, True, True, False])
    ours = ba.crop_flip(x, offsets=offsets, flips=flips)
    for i in range(len(x)):
        # What v2.RandomCrop does for these parameters: pad, then crop.
        ref = TF.crop(TF.pad(x[i], [4], padding_mode=mode), int(offsets[i, 0]), int(offsets[i, 1]), 32, 32)
        if flips[i]:
            ref = TF.horizontal_flip(ref)
        assert torch.equal(ours[i], ref), (mode, i)


def test_constant_and_reflect_padding_differ():
    """Guards the test above: the two fills are really different at a corner offset."""
    x = images(1, seed=5)
    outs = [BatchAugment(aug_cfg("none", crop={"padding": 4, "padding_mode": m}), ds_cfg())
            .crop_flip(x, offsets=torch.tensor([[0, 0]]), flips=torch.tensor([False])) for m in ("constant", "reflect")]
    assert (outs[0][..., :4, :] == 0).all() and not torch.equal(outs[0], outs[1])


# --- rotation ---

@pytest.mark.parametrize("angle", [5.0, -3.3, 30.0, -45.0])
def test_rotation_fixed_angle_matches_torchvision(angle):
    ba = BatchAugment(aug_cfg("none", rotate=angle), ds_cfg())
    x = images(4, seed=6)
    ours = ba.rotation(x.float(), angles=torch.full((4,), angle))
    ref = torch.stack([TF.rotate(img, angle).float() for img in x])
    assert (ours == ref).float().mean().item() > 0.999


def test_rotation_preserves_mean_and_varies_per_sample():
    aug, ds = aug_cfg("none", rotate=10), ds_cfg()
    x = images(96, seed=7)
    ours = BatchAugment(aug, ds)(x, torch.Generator().manual_seed(8))
    torch.manual_seed(8)
    ref = torchvision_batch(train_transform(aug, ds), x)
    plain = x.float().mul(1 / 255)
    # Only the corners (zero fill) change the mean, by a few percent at 10 degrees.
    assert abs(ours.mean().item() - plain.mean().item()) < 0.05 * plain.mean().item()
    assert abs(ours.mean().item() - ref.mean().item()) < 0.01
    changed = (ours != plain).flatten(1).float().mean(1)
    assert len(torch.unique((changed * 1000).round())) > 30  # per-sample angles, not one per batch


# --- cutout ---

@pytest.mark.parametrize("size,p", [(8, 1.0), (12, 0.5), (16, 0.25)])
def test_cutout_area_fraction(size, p):
    aug, ds = aug_cfg("none", cutout={"size": size, "p": p}), ds_cfg()
    n = 2000
    x = torch.full((n, 3, 32, 32), 255, dtype=torch.uint8)
    ours = BatchAugment(aug, ds)(x, torch.Generator().manual_seed(9))
    torch.manual_seed(9)
    ref = torchvision_batch(train_transform(aug, ds), x)
    square = size * size
    for out in (ours, ref):
        holes = (out[:, 0] == 0).flatten(1).sum(1)
        assert set(holes.unique().tolist()) <= {0, square}  # a whole size x size square, inside the image
        assert bool(((out == 0).all(1) | (out == 1).all(1)).all())  # same hole in every channel
        rate = (holes == square).float().mean().item()
        assert abs(rate - p) <= binomial_tol(p, n) + 1e-9
    # The hole's position is uniform: its mean centre is the image centre.
    rows = (ours[:, 0] == 0).float().sum(2)
    hit = rows.sum(1) > 0
    centre = (rows[hit] * torch.arange(32.0)).sum(1) / rows[hit].sum(1)
    assert abs(centre.mean().item() - 15.5) < 0.5


# --- normalization ---

@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "fake"])
def test_normalization_exact(dataset):
    aug, ds = aug_cfg("norm"), ds_cfg(dataset)
    x = images(64, seed=10)
    mean, std = normalization(aug, ds)
    ref = torchvision_batch(v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]), x)
    ba = BatchAugment(aug, ds)
    assert torch.equal(ba.normalize(x), ref)
    assert torch.equal(ba(x), ref)  # no random op configured: the train path is the eval path
    assert torch.equal(ba.normalize(x), eval_transform(aug, ds)(x))


# --- pipeline selection and the loader ---

def full_cfg(aug_name="norm_crop_flip", pipeline="auto", **aug_changes):
    return OmegaConf.create({
        "seed": 0, "dataset": ds_cfg(), "augment": aug_cfg(aug_name, **aug_changes),
        "trainer": {"pipeline": pipeline, "batch_size": 32, "eval_batch_size": 64, "num_workers": 0,
                    "limit_eval_batches": None, "channels_last": True, "compile": False},
    })


def test_select_pipeline(caplog):
    with caplog.at_level(logging.INFO, logger="sweeps.data.pipeline"):
        assert select_pipeline(full_cfg()) == "device"
        assert select_pipeline(full_cfg(autoaugment="cifar10")) == "dataloader"
    assert "data pipeline: dataloader" in caplog.text and "autoaugment" in caplog.text
    assert select_pipeline(full_cfg(pipeline="dataloader")) == "dataloader"
    with pytest.raises(ConfigError, match=r"augment.autoaugment=cifar10.*trainer.pipeline=auto"):
        select_pipeline(full_cfg(pipeline="device", autoaugment="cifar10"))
    with pytest.raises(ConfigError, match="trainer.pipeline='gpu'"):
        select_pipeline(full_cfg(pipeline="gpu"))


def toy_splits(n=200):
    x = images(n, seed=11)
    return Splits(Split(x, torch.arange(n)), Split(x[:50], torch.arange(50)), Split(x[:70], torch.arange(70)))


def test_device_loader_epochs_are_seeded_permutations():
    splits = toy_splits()
    cfg = full_cfg()
    runs = []
    for _ in range(2):
        loader = build_pipeline(cfg, splits, torch.device("cpu")).train
        assert isinstance(loader, DeviceLoader) and len(loader) == 200 // 32
        runs.append([list(loader) for _epoch in range(2)])
    for (xa, ya), (xb, yb) in zip(runs[0][0], runs[1][0]):  # same seed -> same stream
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for epoch in runs[0]:
        labels = torch.cat([y for _, y in epoch])
        assert len(labels) == 6 * 32 and len(labels.unique()) == len(labels)  # no repeats within an epoch
    assert not torch.equal(runs[0][0][0][1], runs[0][1][0][1])  # reshuffled every epoch


def test_device_eval_matches_dataloader_eval():
    splits, cfg = toy_splits(), full_cfg()
    dev = build_pipeline(cfg, splits, torch.device("cpu"), "device")
    ref = build_pipeline(cfg, splits, torch.device("cpu"), "dataloader")
    for get in ("val_batches", "test_batches"):
        a, b = list(getattr(dev, get)()), list(getattr(ref, get)())
        assert len(a) == len(b) >= 1
        for (xa, ya), (xb, yb) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


# --- CUDA only ---

@pytest.mark.gpu
@cuda
def test_cuda_matches_cpu_for_fixed_parameters_and_never_syncs():
    ba = BatchAugment(aug_cfg("norm_crop_flip_rotate", cutout={"size": 8, "p": 0.5}), ds_cfg())
    x = images(64, seed=12)
    offsets = torch.randint(0, 9, (64, 2))
    flips = torch.rand(64) < 0.5
    cpu = ba.crop_flip(x, offsets=offsets, flips=flips)
    gpu = ba.crop_flip(x.cuda(), offsets=offsets.cuda(), flips=flips.cuda())
    assert torch.equal(cpu, gpu.cpu())
    loader = DeviceLoader(Split(images(1024, seed=13), torch.arange(1024)), ba, 256, "cuda", 0, channels_last=True)
    assert loader.generator.device.type == "cuda"
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        batches = list(loader)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    x0, y0 = batches[0]
    assert x0.is_cuda and x0.dtype == torch.float32 and x0.is_contiguous(memory_format=torch.channels_last)
    assert len(batches) == 4 and len(torch.cat([y for _, y in batches]).unique()) == 1024


@pytest.mark.gpu
@cuda
def test_cuda_flip_rate():
    n, p = 4000, 0.5
    x = images(1).expand(n, -1, -1, -1).contiguous().cuda()
    out = BatchAugment(aug_cfg("none", flip=p), ds_cfg())(x, torch.Generator("cuda").manual_seed(2))
    rate = (out == x[:1].float().mul(1 / 255).flip(-1)).flatten(1).all(1).float().mean().item()
    assert abs(rate - p) <= binomial_tol(p, n)


# --- end to end: the real entrypoint through the device pipeline ---

@pytest.mark.slow
def test_train_device_pipeline_subprocess(tmp_path):
    cmd = [sys.executable, "-m", "sweeps.train", "dataset=digits", "trainer.pipeline=device",
           "model.channels=[8,16]", "model.blocks=[1,1]", "model.stem_channels=8", "model.head=[]",
           "trainer.epochs=2", "trainer.limit_train_batches=3", "trainer.progress=false", "tracking.enabled=false"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "data pipeline: device" in out
    accs = [float(a) for a in re.findall(r"val loss [\d.]+ acc ([\d.]+)", out)]
    assert len(accs) == 2 and all(0 <= a <= 1 for a in accs), out[-3000:]
    assert re.search(r"best val acc [\d.]+ \| test acc [\d.]+", out)
    assert list((tmp_path / "data" / "cache").glob("digits-*.pt"))  # the decoded cache was written
