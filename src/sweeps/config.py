"""Checks on a composed config that Hydra itself cannot make.

Each failure is one paragraph naming the key, the value and the fix, raised
before a model is built or any data is read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from sweeps.errors import ConfigError
from sweeps.objectives import OBJECTIVES

log = logging.getLogger(__name__)

# The classes of the datasets whose labels are fixed (fake draws its labels from num_classes).
DATASET_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
KEEP_CHECKPOINTS = ("best", "all", "none")

# Config nodes that say where and how a run is recorded, not what is trained: they are
# not logged as params, not part of a run's name, and may differ between the sweeps
# that share a study.
NOT_EXPERIMENT = ("hydra", "trial", "tracking", "paths")
# Trainer keys that change how fast or how visibly a run trains, not its result.
RUNTIME_ONLY = ("trainer.progress", "trainer.resume", "trainer.num_workers", "trainer.device", "trainer.compile",
                "trainer.fuse_replicates", "trainer.fuse_max")


def is_experiment_key(key: str) -> bool:
    """Whether an override or flattened key (``optim.lr``; not ``+tracking.x``, ``hydra/launcher``)
    names what is trained rather than where it is recorded."""
    return key.lstrip("+~").split(".", 1)[0].split("/", 1)[0] not in NOT_EXPERIMENT


def _number(cfg: DictConfig, key: str, kind: type) -> Any:
    value = OmegaConf.select(cfg, key)
    if value is None:
        return None
    try:
        if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        noun = "an integer" if kind is int else "a number"
        raise ConfigError(f"{key}={value!r} is not {noun}; write e.g. {key}={kind(3)}.") from None


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def select_or_none(cfg: Any, key: str) -> Any:
    """``cfg.key``, or None where it is missing or cannot be resolved.

    For code that only looks (pre-flight checks, reports): an unresolvable value
    is the error of whoever uses it, reported there.
    """
    try:
        return OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
    except Exception:  # noqa: BLE001
        return None


def validate(cfg: DictConfig) -> None:
    epochs = _number(cfg, "trainer.epochs", int)
    _require(epochs is not None and epochs >= 1, f"trainer.epochs={epochs} must be at least 1; e.g. trainer.epochs=30.")
    for key in ("trainer.batch_size", "trainer.eval_batch_size"):
        bs = _number(cfg, key, int)
        _require(bs is not None and bs >= 1, f"{key}={bs} must be a positive integer; e.g. {key}=128.")
    monitor = OmegaConf.select(cfg, "trainer.monitor")
    _require(monitor in ("val_acc", "val_loss"), f"trainer.monitor={monitor!r} is not val_acc or val_loss: the "
             "validation metric whose best epoch is kept and tested, and that early stopping (trainer.patience) "
             "watches; e.g. trainer.monitor=val_loss.")
    patience = _number(cfg, "trainer.patience", int)
    _require(patience is None or patience >= 1, f"trainer.patience={patience} must be >= 1, or null to disable early stopping.")
    for key in ("optim.lr", "schedule.scheduler.max_lr"):
        if OmegaConf.select(cfg, key) is not None:
            lr = _number(cfg, key, float)
            _require(lr > 0, f"{key}={lr} must be positive; the seeds use values like 0.1, 0.01 or 0.001.")
    wd = _number(cfg, "optim.weight_decay", float)
    _require(wd is None or wd >= 0, f"optim.weight_decay={wd} must be >= 0, e.g. optim.weight_decay=5e-4.")
    for key in ("dataset.val_fraction", "dataset.test_fraction"):
        frac = _number(cfg, key, float)
        _require(frac is None or 0 < frac < 1, f"{key}={frac} must lie strictly between 0 and 1; the seeds hold out 0.1 (45k/5k on CIFAR-10).")
    dropout = _number(cfg, "model.dropout", float)
    _require(dropout is None or 0 <= dropout < 1, f"model.dropout={dropout} must lie in [0, 1); e.g. model.dropout=0.2.")
    smoothing = _number(cfg, "trainer.label_smoothing", float)
    _require(smoothing is None or 0 <= smoothing < 1, f"trainer.label_smoothing={smoothing} must lie in [0, 1).")
    max_params = _number(cfg, "budget.max_params", int)
    _require(max_params is None or max_params >= 1, f"budget.max_params={max_params} must be positive, or null to disable the budget.")
    classes = OmegaConf.select(cfg, "dataset.classes")
    n_classes = OmegaConf.select(cfg, "dataset.num_classes")
    _require(classes is None or len(classes) == n_classes,
             f"dataset.classes has {len(classes or [])} names but dataset.num_classes={n_classes}; give one name "
             "per class in label order, or dataset.classes=null to number them.")
    name = OmegaConf.select(cfg, "dataset.name")
    have = DATASET_CLASSES.get(str(name))
    _require(have is None or n_classes is None or int(n_classes) >= have,
             f"dataset.num_classes={n_classes} but {name} has {have} classes (labels 0..{(have or 1) - 1}), so its "
             f"labels would fall outside the model's outputs; use dataset.num_classes={have}.")
    padding = _number(cfg, "augment.crop.padding", int) if OmegaConf.select(cfg, "augment.crop") is not None else None
    _require(padding is None or padding >= 0, f"augment.crop.padding={padding} must be >= 0: the pixels added on "
             "each side before the random crop (the seeds use 4); or augment.crop=null for no crop.")
    if OmegaConf.select(cfg, "optim.nesterov"):
        momentum = _number(cfg, "optim.momentum", float)
        _require(momentum is not None and momentum > 0, f"optim.nesterov=true needs momentum: optim.momentum="
                 f"{momentum} must be > 0 (e.g. optim.momentum=0.9), or set optim.nesterov=false.")
    precision = OmegaConf.select(cfg, "trainer.precision")
    _require(precision in PRECISIONS, f"trainer.precision={precision!r} is not one of {', '.join(PRECISIONS)}; "
             "auto is bf16 autocast on CUDA and fp32 elsewhere.")
    keep = OmegaConf.select(cfg, "trainer.keep_checkpoints", default="best")
    _require(keep in KEEP_CHECKPOINTS, f"trainer.keep_checkpoints={keep!r} is not one of "
             f"{', '.join(KEEP_CHECKPOINTS)}: best keeps a finished run's best.pt, all keeps last.pt too, none keeps "
             "neither.")
    fuse = OmegaConf.select(cfg, "trainer.fuse_replicates", default="auto")
    _require(fuse in ("auto", True, False), f"trainer.fuse_replicates={fuse!r} is not auto, true or false: auto fuses "
             "a config's replicates into one model on CUDA when the model can, true always (or refuses), false never.")
    fuse_max = _number(cfg, "trainer.fuse_max", int)
    _require(fuse_max is None or fuse_max >= 1, f"trainer.fuse_max={fuse_max} must be >= 1 (replicates in one fused "
             "model), or null for all of them.")
    _warn_schedule(cfg, epochs)
    from sweeps import replicates

    replicates.check(cfg)
    objectives = cfg.objective if isinstance(cfg.objective, ListConfig) else [cfg.objective]
    for name in objectives:
        _require(name in OBJECTIVES, f"objective={name!r} is not a metric a run reports; use one of {list(OBJECTIVES)}.")


def _warn_schedule(cfg: DictConfig, epochs: int) -> None:
    """A schedule that cannot act within the run's epochs trains at one rate: said, not refused
    (a short smoke run of a long recipe does this on purpose)."""
    milestones = OmegaConf.select(cfg, "schedule.scheduler.milestones")
    if milestones is None or OmegaConf.select(cfg, "schedule.interval") not in (None, "epoch"):
        return
    late = [int(m) for m in milestones if int(m) >= epochs]
    if late and len(late) == len(milestones):
        log.warning(f"schedule.scheduler.milestones={list(milestones)} all lie at or beyond trainer.epochs={epochs}: "
                    "the learning rate never decays in this run; e.g. schedule.scheduler.milestones="
                    f"[{max(1, epochs // 2)},{max(1, (3 * epochs) // 4)}].")


def flatten(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, leaf value) pairs; lists stay whole, as the seeds write them."""
    if isinstance(node, DictConfig):
        for key in node:
            value = node._get_node(key)._value() if OmegaConf.is_missing(node, key) else node[key]
            yield from flatten(value, f"{prefix}{key}.")
    elif isinstance(node, ListConfig):
        yield prefix[:-1], OmegaConf.to_container(node, resolve=True)
    else:
        yield prefix[:-1], node
