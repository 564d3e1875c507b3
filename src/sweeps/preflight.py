"""Check that the directories a run writes to can take it, before anything runs.

A full disk or an output directory that cannot be created should end a run
before it trains, with one paragraph naming the directory, the free space and
the fix, not with a traceback minutes later (or a checkpoint cut short).

Checked, for each directory, at its nearest existing ancestor: that it is a
directory, that a file can be created in it (a real temporary file; running
as root, permission bits alone say nothing), and that its disk has at least
``paths.min_free_mb`` MB free (0 or null: no space check).

* :class:`Preflight`, a Hydra callback (``hydra.callbacks.preflight`` in
  ``conf/train.yaml``), checks ``hydra.run.dir`` / ``hydra.sweep.dir``, the
  MLflow store, the data directory and, for a sweep, the Optuna storage's
  directory before Hydra creates its output directory and before the sweeper
  opens a store. It prints the paragraph and exits with status 2.
* :func:`check_job` runs inside every training (single runs and sweep jobs,
  also on a cluster node) and raises :class:`DiskUnusable`, a ConfigError: a
  sweep records that trial as failed with the message and goes on.
"""

from __future__ import annotations

import copy
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from sweeps_optuna.storage import sqlite_path
from sweeps.cli import user_errors
from sweeps.config import select_or_none as _select
from sweeps.errors import ConfigError, DiskFull, DiskUnusable

MIN_FREE_KEY = "paths.min_free_mb"
DEFAULT_MIN_FREE_MB = 200
MB = 1024 * 1024


class Place(NamedTuple):
    what: str  # "the run's output directory"
    key: str  # the override that moves it, e.g. "hydra.run.dir"
    path: Path
    fix: str = ""  # another way out, e.g. "tracking.enabled=false to record nothing"


def _anchor(path: Path) -> Path:
    """The nearest ancestor of ``path`` (itself included) that exists."""
    p = path
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def _mb(n_bytes: float) -> str:
    return f"{n_bytes / MB:,.0f} MB"


def min_free_mb(cfg: DictConfig) -> float:
    value = OmegaConf.select(cfg, MIN_FREE_KEY, default=DEFAULT_MIN_FREE_MB)
    if value is None:
        return 0.0
    try:
        if isinstance(value, bool):
            raise ValueError
        mb = float(value)
    except (TypeError, ValueError):
        mb = -1.0
    if not mb >= 0:
        raise ConfigError(f"{MIN_FREE_KEY}={value!r} must be a number of MB >= 0, e.g. {MIN_FREE_KEY}="
                          f"{DEFAULT_MIN_FREE_MB} (0 or null: no free-space check).")
    return mb


def check_place(place: Place, min_mb: float) -> None:
    """Raise DiskUnusable unless ``place.path`` can be created and written with ``min_mb`` MB free."""
    path = Path(os.path.abspath(os.path.expanduser(str(place.path))))
    anchor = _anchor(path)
    alt = f" (or {place.fix})" if place.fix else ""
    head = f"{place.what} {path} ({place.key})"
    if not anchor.is_dir():
        kind = "a regular file" if anchor.is_file() else "not a directory"
        raise DiskUnusable(f"{head} cannot be created: {anchor} is {kind}. Nothing was run; point "
                           f"{place.key} to a writable directory{alt}.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".sweeps-write-check-", dir=anchor)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DiskUnusable(f"{head} cannot be written: creating a file in {anchor} fails ({e.strerror or e}). "
                           f"Nothing was run; point {place.key} to a writable directory{alt}.") from None
    if min_mb > 0:
        free = shutil.disk_usage(anchor).free
        if free < min_mb * MB:
            limit = int(min_mb) if float(min_mb).is_integer() else min_mb
            raise DiskUnusable(
                f"{head} is on a disk with only {_mb(free)} free ({anchor}), less than {MIN_FREE_KEY}={limit}. "
                f"Nothing was run; free some space there, point {place.key} to a directory on another disk{alt}, "
                f"or lower {MIN_FREE_KEY} (0 skips this check)."
            )


def check_places(places: list[Place], min_mb: float) -> None:
    seen: set[Path] = set()
    for place in places:
        path = Path(os.path.abspath(os.path.expanduser(str(place.path))))
        if path in seen:
            continue
        seen.add(path)
        check_place(place, min_mb)


def _local_path(uri: str) -> Path | None:
    """The file or directory behind a local store URI (SQLite, file:, a plain path); None when remote."""
    if uri.startswith("sqlite:"):
        return sqlite_path(uri)
    if uri.startswith("file:"):
        from urllib.parse import urlparse

        return Path(urlparse(uri).path)
    if uri.startswith("journal://"):
        return Path(uri[len("journal://"):])
    return None if "://" in uri else Path(uri)


def store_places(cfg: DictConfig) -> list[Place]:
    """The MLflow store (when local) and the data directory (when the disk cache writes to it)."""
    places = []
    if _select(cfg, "tracking.enabled"):
        off = "tracking.enabled=false to record nothing"
        uri = _select(cfg, "tracking.uri") or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            mlruns = _select(cfg, "paths.mlruns")
            if mlruns:
                places.append(Place("the MLflow store", "paths.mlruns", Path(str(mlruns)), off))
        else:
            path = _local_path(str(uri))
            if path is not None:
                key = "tracking.uri" if _select(cfg, "tracking.uri") else "MLFLOW_TRACKING_URI"
                store_dir = path.parent if str(uri).startswith("sqlite:") else path
                places.append(Place("the MLflow store", key, store_dir, off))
    root = _select(cfg, "dataset.root")
    if root and _select(cfg, "dataset.cache") is not False and os.environ.get("SWEEPS_DATA_CACHE", "1") != "0":
        key = "paths.data" if str(root) == str(_select(cfg, "paths.data")) else "dataset.root"
        places.append(Place("the data directory", key, Path(str(root)),
                            "if the data is already there, dataset.cache=false to write nothing to it"))
    return places


# How a full disk shows itself: the OS, torch's checkpoint writer, SQLite (MLflow's store, Optuna's study).
_FULL = ("no space left on device", "file write failed", "database or disk is full")
NEARLY_FULL_MB = 1  # a failure while a disk the run writes to has less than this free is that disk's


def is_disk_full(error: BaseException, places: tuple[Path, ...] = ()) -> bool:
    """Whether ``error`` means a full disk, however the library that wrote says it (torch's writer
    often says only "iostream error"): by its errno or text, or by one of ``places`` being full."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(cause).lower() for text in _FULL):
            return True
        cause = cause.__cause__ or cause.__context__
    return any(shutil.disk_usage(_anchor(p)).free < NEARLY_FULL_MB * MB for p in places)


@contextmanager
def disk_full_is_one_paragraph(cfg: DictConfig, out_dir: Path) -> Iterator[None]:
    """Turn a full disk met while training into :class:`DiskFull`: one paragraph, not chained tracebacks."""
    places = (Path(out_dir), *(p.path for p in store_places(cfg)))
    try:
        yield
    except Exception as e:  # noqa: BLE001 - only a full disk is turned; everything else goes on up
        if isinstance(e, DiskFull) or not is_disk_full(e, places):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        free = min(shutil.disk_usage(_anchor(p)).free for p in places)
        raise DiskFull(
            f"the disk filled up while this run was writing ({type(e).__name__}: {first[:160]}; {_mb(free)} left "
            f"on the fullest disk it writes to). The run stopped; its records were closed where the disk allowed, "
            "and no partial checkpoint was left. Free some space (or point hydra.run.dir / hydra.sweep.dir and "
            "paths.mlruns to another disk) and run the same command again; with trainer.resume=true a run "
            "continues from its last checkpoint.") from None


def check_job(cfg: DictConfig, out_dir: Path, multirun: bool) -> None:
    """Inside a training: its output directory, the MLflow store and the data directory."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    check_places([Place("the run's output directory", key, out_dir), *store_places(cfg)], min_free_mb(cfg))


def _optuna_place(cfg: DictConfig) -> Place | None:
    sweeper = _select(cfg, "hydra.sweeper")
    if sweeper is None or "storage" not in sweeper or "sweeps_optuna" not in str(sweeper.get("_target_", "")):
        return None
    url = _select(cfg, "hydra.sweeper.storage")
    if url is None:
        cwd = _select(cfg, "hydra.runtime.cwd") or os.getcwd()
        return Place("the Optuna storage", "hydra.sweeper.storage", Path(str(cwd)) / "multirun")
    path = _local_path(str(url)) if isinstance(url, str) else None
    return None if path is None else Place("the Optuna storage", "hydra.sweeper.storage", path.parent)


def check_launch(config: DictConfig, multirun: bool) -> None:
    """What a run or sweep command will write to, from Hydra's composed config (hydra node included)."""
    from hydra.core.hydra_config import HydraConfig

    cfg = copy.deepcopy(config)  # resolving here must not touch the config Hydra goes on with
    hydra_cfg = HydraConfig.instance()
    previous = hydra_cfg.cfg
    hydra_cfg.set_config(cfg)  # for ${hydra:runtime.cwd} in paths.*
    try:
        if multirun:
            out = Place("the sweep's output directory", "hydra.sweep.dir", Path(str(cfg.hydra.sweep.dir)))
        else:
            out = Place("the run's output directory", "hydra.run.dir", Path(str(cfg.hydra.run.dir)))
        places = [out, *store_places(cfg)]
        optuna_place = _optuna_place(cfg) if multirun else None
        if optuna_place is not None:
            places.append(optuna_place)
        check_places(places, min_free_mb(cfg))
    finally:
        hydra_cfg.cfg = previous


def check_launch_or_exit(config: DictConfig, multirun: bool) -> None:
    with user_errors():
        check_launch(config, multirun)


class Preflight(Callback):
    """Hydra callback: check the output, store and data directories before Hydra creates any."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_launch_or_exit(config, multirun=False)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_launch_or_exit(config, multirun=True)
