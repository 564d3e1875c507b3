"""The ``augment`` config node as batched tensor ops on the device (airbench style).

``BatchAugment`` draws every random parameter per sample, in one tensor per
batch, from a (device) ``torch.Generator``, and applies the same operations in
the same order as the per-sample torchvision v2 pipeline in
``sweeps.data.augment.train_transform``:

1. random crop with padding (constant 0, reflect, edge or symmetric), offsets
   uniform over the ``2 * padding + 1`` positions per axis,
2. horizontal flip with probability ``flip``,
   (1 and 2 are one gather: the flip reverses the crop window's columns)
3. rotation by an angle uniform in ``[-rotate, rotate]`` degrees, nearest
   neighbour, zero fill, about the image centre (the same sampling grid as
   torchvision's ``rotate``),
4. scaling to [0, 1] and normalization (bit-identical to ``v2.ToDtype`` +
   ``v2.Normalize``),
5. cutout: with probability ``cutout.p`` a ``size x size`` square of zeros lying
   fully inside the image, position uniform (``v2.RandomErasing`` with a fixed
   scale and ratio 1).

Nothing here reads a value back to the host, so on CUDA it queues kernels and
never synchronizes. Options only the per-sample path has (AutoAugment, or any
key this module does not know) are reported by :func:`unsupported_options`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from sweeps.data.augment import normalization
from sweeps.errors import ConfigError

PADDING_MODES = ("constant", "reflect", "edge", "symmetric")
_KNOWN = {"normalize", "mean", "std", "crop", "flip", "rotate", "cutout", "autoaugment"}
_CROP_KEYS = {"padding", "padding_mode"}
_CUTOUT_KEYS = {"size", "p"}


def unsupported_options(aug: DictConfig) -> list[str]:
    """The ``augment.*`` settings that only the per-sample (DataLoader) path implements."""
    found = []
    if aug.get("autoaugment"):
        found.append(f"augment.autoaugment={aug.autoaugment}")
    for key in aug:
        if key not in _KNOWN and aug.get(key) not in (None, False, 0, 0.0):
            found.append(f"augment.{key}={aug.get(key)}")
    crop = aug.get("crop")
    if crop:
        found += [f"augment.crop.{k}" for k in crop if k not in _CROP_KEYS]
        mode = str(crop.get("padding_mode", "constant"))
        if mode not in PADDING_MODES:
            found.append(f"augment.crop.padding_mode={mode}")
    cutout = aug.get("cutout")
    if cutout:
        found += [f"augment.cutout.{k}" for k in cutout if k not in _CUTOUT_KEYS]
    return found


def _map_index(src: torch.Tensor, n: int, mode: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Padded coordinates (may lie outside [0, n)) -> (source index, validity mask or None)."""
    if mode == "constant":
        valid = (src >= 0) & (src < n)
        return src.clamp(0, n - 1), valid
    if mode == "edge":
        return src.clamp(0, n - 1), None
    if mode == "reflect":  # ... 2 1 | 0 1 2 ... n-1 | n-2 n-3 ...
        src = src.abs()
        return torch.where(src > n - 1, 2 * (n - 1) - src, src), None
    # symmetric: ... 1 0 | 0 1 2 ... n-1 | n-1 n-2 ...
    src = torch.where(src < 0, -src - 1, src)
    return torch.where(src > n - 1, 2 * n - 1 - src, src), None


class BatchAugment:
    """Training augmentation of a uint8 (B, C, H, W) batch on its device; returns float32."""

    def __init__(self, aug: DictConfig, ds: DictConfig):
        bad = unsupported_options(aug)
        if bad:
            raise ConfigError(
                f"{', '.join(bad)} is only available in the per-sample DataLoader pipeline; set "
                "trainer.pipeline=dataloader (or auto, which falls back to it), or remove the option "
                "to train with trainer.pipeline=device."
            )
        crop = aug.get("crop")
        self.padding = int(crop.padding) if crop else 0
        self.crop = bool(crop)
        self.padding_mode = str(crop.get("padding_mode", "constant")) if crop else "constant"
        self.flip = float(aug.get("flip") or 0.0)
        self.rotate = float(aug.get("rotate") or 0.0)
        cutout = aug.get("cutout")
        self.cutout_size = int(cutout.size) if cutout else 0
        self.cutout_p = float(cutout.get("p", 1.0)) if cutout else 0.0
        self.image_size = int(ds.image_size)
        norm = normalization(aug, ds)
        self.mean, self.std = (norm if norm else (None, None))
        self._consts: dict = {}

    # -- helpers ---------------------------------------------------------------

    def _const(self, name: str, device: torch.device, make):
        key = (name, str(device))
        if key not in self._consts:
            self._consts[key] = make()
        return self._consts[key]

    @staticmethod
    def _rand(shape, generator, device, *, ints: int | None = None) -> torch.Tensor:
        gdev = generator.device if generator is not None else device
        if ints is not None:
            r = torch.randint(0, ints, shape, generator=generator, device=gdev)
        else:
            r = torch.rand(shape, generator=generator, device=gdev)
        return r.to(device, non_blocking=True)

    # Normalization is two steps because training rotates in between (as the
    # torchvision pipeline does); each is written once, for both paths.

    @staticmethod
    def _to_unit(x: torch.Tensor) -> torch.Tensor:
        """uint8 -> [0, 1] the way ``v2.ToDtype(torch.float32, scale=True)`` computes it, so bit-identical."""
        return x.to(torch.float32).mul_(1.0 / 255)

    def _standardize(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std in place, as ``v2.Normalize``; the constants are made once per device."""
        if self.mean is not None:
            dev = x.device
            mean = self._const("mean", dev, lambda: torch.tensor(self.mean, dtype=torch.float32, device=dev).view(-1, 1, 1))
            std = self._const("std", dev, lambda: torch.tensor(self.std, dtype=torch.float32, device=dev).view(-1, 1, 1))
            x = x.sub_(mean).div_(std)
        return x

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """The eval transform, batched: what evaluation on the device pipeline applies."""
        return self._standardize(self._to_unit(x))

    # -- the ops -----------------------------------------------------------------

    def crop_flip(self, x: torch.Tensor, generator=None, *, offsets=None, flips=None) -> torch.Tensor:
        """Random crop with padding and horizontal flip as one gather (uint8 in, uint8 out).

        ``offsets`` (B, 2) of (top, left) in [0, 2 * padding] and ``flips`` (B,) bool
        may be given to fix the randomness (tests)."""
        b, _, h, w = x.shape
        dev = x.device
        p = self.padding if self.crop else 0
        do_flip = self.flip > 0 or flips is not None
        if p == 0 and not do_flip:
            return x
        if offsets is None:
            offsets = self._rand((b, 2), generator, dev, ints=2 * p + 1) if p else torch.zeros(b, 2, dtype=torch.long, device=dev)
        if flips is None:
            flips = (self._rand((b,), generator, dev) < self.flip) if self.flip > 0 else None
        ar_h = torch.arange(h, device=dev)
        ar_w = torch.arange(w, device=dev)
        rows = offsets[:, :1] - p + ar_h  # (B, H) in padded coordinates shifted by -p
        cols_fwd = ar_w.expand(b, w)
        if flips is not None:
            cols_fwd = torch.where(flips[:, None], (w - 1 - ar_w).expand(b, w), cols_fwd)
        cols = offsets[:, 1:] - p + cols_fwd
        rows, vr = _map_index(rows, h, self.padding_mode)
        cols, vc = _map_index(cols, w, self.padding_mode)
        # One gather over the flattened pixels (several times faster than advanced indexing on the CPU).
        c = x.shape[1]
        flat = (rows[:, :, None] * w + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
        out = x.reshape(b, c, h * w).gather(2, flat).view(b, c, h, w)
        if vr is not None:
            valid = (vr[:, :, None] & vc[:, None, :])[:, None]
            out = out * valid.to(out.dtype)
        return out

    def rotation(self, x: torch.Tensor, generator=None, *, angles=None) -> torch.Tensor:
        """Per-sample rotation (float in, float out), angles in degrees, counter-clockwise."""
        b, _, h, w = x.shape
        dev = x.device
        if angles is None:
            angles = (self._rand((b,), generator, dev) * 2 - 1) * self.rotate
        rad = angles.to(torch.float32) * (math.pi / 180)
        cos, sin = rad.cos()[:, None, None], rad.sin()[:, None, None]
        # Output pixel centres relative to the image centre, as torchvision's _affine_grid.
        gx = self._const(f"gx{w}", dev, lambda: torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, w, device=dev)[None, None, :])
        gy = self._const(f"gy{h}", dev, lambda: torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, h, device=dev)[None, :, None])
        # torchvision's inverse matrix for rotate(angle): [[cos, -sin], [sin, cos]] (y down).
        src_x = (cos * gx - sin * gy) / (0.5 * w)
        src_y = (sin * gx + cos * gy) / (0.5 * h)
        grid = torch.stack((src_x, src_y), dim=-1)  # (B, H, W, 2)
        return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)

    def cutout(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        """Zero a size x size square fully inside each image with probability p (as v2.RandomErasing)."""
        b, _, h, w = x.shape
        area = h * w * (self.cutout_size / self.image_size) ** 2
        s = int(round(math.sqrt(area)))
        if s <= 0 or not (s < h and s < w) or self.cutout_p <= 0:
            return x  # RandomErasing gives up and returns the image unchanged
        dev = x.device
        top = self._rand((b, 1), generator, dev, ints=h - s + 1)
        left = self._rand((b, 1), generator, dev, ints=w - s + 1)
        apply = self._rand((b, 1), generator, dev) < self.cutout_p
        ar_h, ar_w = torch.arange(h, device=dev), torch.arange(w, device=dev)
        in_rows = (ar_h >= top) & (ar_h < top + s) & apply  # (B, H)
        in_cols = (ar_w >= left) & (ar_w < left + s)  # (B, W)
        mask = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]
        return x.masked_fill(mask, 0.0)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise ValueError(f"BatchAugment expects a uint8 (B, C, H, W) batch, got {x.dtype} {tuple(x.shape)}")
        x = self._to_unit(self.crop_flip(x, generator))
        if self.rotate:
            x = self.rotation(x, generator)
        x = self._standardize(x)
        if self.cutout_size:
            x = self.cutout(x, generator)
        return x
