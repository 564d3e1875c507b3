"""The training loop: train, validate each epoch, keep the best, test with it.

Metrics are accumulated on the device and read once per epoch, so the step
itself never waits on the host (except for the divergence check on the CPU).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from tqdm.auto import tqdm

from sweeps import checkpoint
from sweeps.data.pipeline import use_channels_last
from sweeps.errors import ConfigError, Diverged
from sweeps_optuna.contract import Interrupted


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    epoch_time: float
    images_per_s: float


@dataclass
class FitResult:
    history: list[EpochMetrics] = field(default_factory=list)
    best_epoch: int = -1
    best_val_acc: float = float("nan")
    best_val_loss: float = float("nan")
    train_acc_at_best: float = float("nan")
    stopped_early: bool = False

    @property
    def epochs_run(self) -> int:
        return len(self.history)


def select_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"trainer.device={spec!r} is not a device; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={spec!r} but CUDA is not available here; use trainer.device=auto or cpu.")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    choices = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision not in choices:
        raise ConfigError(f"trainer.precision={precision!r} is not one of auto, fp32, bf16, fp16.")
    return choices[precision]


# prepare_model's log line keeps the logger name it always had, so that logs read the same.
_compile_log = logging.getLogger("sweeps.data.pipeline")


def prepare_model(model: nn.Module, cfg: DictConfig, device: torch.device) -> nn.Module:
    """``trainer.channels_last`` (CUDA only, as for the batches) and ``trainer.compile``.

    ``model.compile()`` works in place (``torch.compile(model)`` would wrap it), so that
    state-dict keys (checkpoints, the best state) stay those of the plain model.
    """
    if use_channels_last(cfg, device):
        model = model.to(memory_format=torch.channels_last)
    if bool(cfg.trainer.get("compile", False)):
        model.compile()
        _compile_log.info("model compiled with torch.compile")
    return model


def build_optimizer(cfg: DictConfig, model: nn.Module) -> torch.optim.Optimizer:
    return instantiate(cfg.optim)(model.parameters())


def build_scheduler(cfg: DictConfig, optimizer, steps_per_epoch: int):
    if cfg.schedule.get("scheduler") is None:
        return None
    factory = instantiate(cfg.schedule.scheduler)
    if cfg.schedule.interval == "step" and "epochs" in cfg.schedule.scheduler:
        return factory(optimizer, steps_per_epoch=steps_per_epoch)
    return factory(optimizer)


def tta_views(trainer: DictConfig) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """The evaluation-time views whose logits are averaged.

    ``tta_flip`` adds the mirror image; ``tta_scales`` is 001's multi-scale
    10-crop test (the image resized to each scale, then four corners and the
    centre of side ``tta_crop`` x scale, each with its flip).
    """
    scales = list(trainer.get("tta_scales") or [])
    flip = bool(trainer.get("tta_flip", False))
    fraction = float(trainer.get("tta_crop", 0.875))
    if scales and (min(scales) < 1 or not 0 < fraction <= 1):
        raise ConfigError(f"trainer.tta_scales={scales} must be positive sizes and trainer.tta_crop={fraction} in (0, 1].")

    def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if not scales:
            return (model(x) + model(x.flip(-1))) / 2 if flip else model(x)
        from torchvision.transforms.v2.functional import ten_crop

        total = 0
        for size in scales:
            resized = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            crops = ten_crop(resized, [max(1, round(size * fraction))] * 2)
            try:
                total = total + sum(model(c).float().softmax(-1) for c in crops) / len(crops)
            except RuntimeError as e:
                if "shape" not in str(e):
                    raise
                raise ConfigError(
                    f"trainer.tta_scales={scales}: this model cannot take {crops[0].shape[-1]}x"
                    f"{crops[0].shape[-1]} crops ({e}); multi-scale 10-crop testing needs a model with "
                    "global (adaptive) pooling such as model=resnet34, resnet18_finetune or resnet32."
                ) from None
        return (total / len(scales)).log()  # log of the mean probability: cross-entropy still applies

    return predict


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, device, amp_dtype, predict=None, keep_preds: bool = False):
    """(mean loss, accuracy, predictions or None) over ``batches``."""
    model.eval()
    predict = predict or (lambda m, x: m(x))
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    n, preds = 0, []
    for x, y in batches:
        Interrupted.check()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with _autocast(device, amp_dtype):
            logits = predict(model, x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        pred = logits.argmax(1)
        correct += (pred == y).sum()
        n += len(y)
        if keep_preds:
            preds.append(pred.cpu())
    if n == 0:
        return float("nan"), float("nan"), None
    return loss_sum.item() / n, correct.item() / n, (torch.cat(preds) if keep_preds else None)


def _autocast(device: torch.device, dtype):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


class Training:
    """``trainer.epochs`` of one model, an epoch per :meth:`epoch` call.

    A run steps one; replicates step several in turn, so that a pruner can judge
    epoch e on every replicate's epoch e. With ``checkpoint_dir``, ``last.pt`` is
    written there after each epoch (tagged with ``binding``, whose run it is) and,
    with ``trainer.resume``, resumed from.
    """

    def __init__(self, cfg: DictConfig, model: nn.Module, train_batches: Callable[[int], Iterable],
                 steps_per_epoch: int, val_batches: Callable[[], Iterable], device: torch.device,
                 on_epoch_end: Callable[[EpochMetrics, FitResult], None] | None = None,
                 checkpoint_dir: Path | None = None, loader_generator: torch.Generator | None = None,
                 binding: str | None = None):
        t = self.trainer = cfg.trainer
        self.model, self.train_batches, self.steps_per_epoch = model, train_batches, steps_per_epoch
        self.val_batches, self.device, self.on_epoch_end = val_batches, device, on_epoch_end
        self.loader_generator, self.binding = loader_generator, binding
        self.amp_dtype = autocast_dtype(t.precision, device)
        self.optimizer = build_optimizer(cfg, model)
        self.scheduler = build_scheduler(cfg, self.optimizer, steps_per_epoch)
        self.per_step = cfg.schedule.interval == "step"
        self.plateau_monitor = cfg.schedule.get("monitor", "val_loss")
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=float(t.label_smoothing))
        self.check_every = 1 if device.type == "cpu" else 50
        self.predict = tta_views(t)
        self.result, self.best_state, self.since_best, self.done = FitResult(), None, 0, False
        self.last_path = checkpoint_dir / checkpoint.LAST if checkpoint_dir else None
        ckpt = checkpoint.load(self.last_path, device, binding) if t.resume and self.last_path is not None else None
        if ckpt is not None:
            self._resume(ckpt)
        self.done = self.result.epochs_run >= int(t.epochs) or self._patience_spent()

    def _resume(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        checkpoint.restore_rng(ckpt, self.loader_generator)
        self.result.history = [EpochMetrics(**m) for m in ckpt["history"]]
        for key in ("best_epoch", "best_val_acc", "best_val_loss", "train_acc_at_best", "stopped_early"):
            if key in ckpt:
                setattr(self.result, key, ckpt[key])
        self.best_state, self.since_best = ckpt["best_state"], ckpt["since_best"]

    def _patience_spent(self) -> bool:
        patience = self.trainer.patience
        return patience is not None and self.since_best >= int(patience)

    def run(self) -> tuple[FitResult, dict]:
        while not self.done:
            self.epoch()
        return self.result, self.best_state

    def epoch(self) -> EpochMetrics:
        """Train one epoch, validate, keep the best, checkpoint; ``done`` once training has ended."""
        t, model, device, result = self.trainer, self.model, self.device, self.result
        epoch = result.epochs_run
        model.train()
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen = 0
        bar = tqdm(self.train_batches(epoch), total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{t.epochs}",
                   # None: off where stderr is no terminal (a log file, a worker's log), where
                   # its carriage returns would run into the epoch lines
                   disable=None if t.progress else True, leave=False, dynamic_ncols=True)
        optimizer, scaler, scheduler = self.optimizer, self.scaler, self.scheduler
        for step, (x, y) in enumerate(bar):
            Interrupted.check()  # a Ctrl-C whose exception a finalizer swallowed
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with _autocast(device, self.amp_dtype):
                logits = model(x)
                loss = self.criterion(logits.float(), y)
            if step % self.check_every == 0 and not torch.isfinite(loss):
                raise Diverged(f"diverged at epoch {epoch + 1} step {step + 1}: the training loss is {loss.item()}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if t.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), float(t.grad_clip))
            scaler.step(optimizer)
            scaler.update()
            if scheduler is not None and self.per_step:
                scheduler.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
        train_loss = loss_sum.item() / max(seen, 1)
        if not math.isfinite(train_loss):
            raise Diverged(f"diverged at epoch {epoch + 1}: the mean training loss is {train_loss}")
        val_loss, val_acc, _ = evaluate(model, self.val_batches(), device, self.amp_dtype, self.predict)
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None and not self.per_step:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(val_loss if self.plateau_monitor == "val_loss" else val_acc)
            else:
                scheduler.step()
        elapsed = time.perf_counter() - start
        metrics = EpochMetrics(epoch + 1, train_loss, correct.item() / max(seen, 1), val_loss, val_acc,
                               lr, elapsed, seen / elapsed)
        result.history.append(metrics)
        if improves(str(t.get("monitor", "val_acc")), val_acc, val_loss, result):
            result.best_epoch, result.best_val_acc, result.best_val_loss = epoch + 1, val_acc, val_loss
            result.train_acc_at_best = metrics.train_acc
            self.best_state = copy.deepcopy(model.state_dict())
            self.since_best = 0
        else:
            self.since_best += 1
        result.stopped_early = self._patience_spent() and result.epochs_run < int(t.epochs)
        self.done = result.epochs_run >= int(t.epochs) or self._patience_spent()
        if self.last_path is not None:
            self._checkpoint()
        if self.on_epoch_end is not None:
            self.on_epoch_end(metrics, result)
        return metrics

    def _checkpoint(self) -> None:
        result = self.result
        checkpoint.save(self.last_path, {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(), **checkpoint.rng_states(self.loader_generator),
            "history": [vars(m) for m in result.history], "best_epoch": result.best_epoch,
            "best_val_acc": result.best_val_acc, "best_val_loss": result.best_val_loss,
            "train_acc_at_best": result.train_acc_at_best, "stopped_early": result.stopped_early,
            "best_state": self.best_state, "since_best": self.since_best}, self.binding)


def improves(monitor: str, val_acc: float, val_loss: float, best: FitResult) -> bool:
    """Whether this epoch beats the best so far on ``trainer.monitor``: the epoch whose weights are
    kept (and tested) and the clock of early stopping. Accuracy must rise, loss must fall."""
    if math.isnan(best.best_val_acc):
        return True
    if monitor == "val_loss":
        return val_loss < best.best_val_loss
    return val_acc > best.best_val_acc
