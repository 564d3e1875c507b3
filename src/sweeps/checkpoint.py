"""The epoch checkpoint ``last.pt``: what a preempted run needs to continue as if never stopped.

Written atomically after every epoch (a kill mid-write never leaves a torn
file, a full disk never leaves a partial one behind) and loaded with
``weights_only=True`` (no code runs from a checkpoint). Each one carries the
fingerprint of the run that wrote it (:mod:`sweeps.run_dir`): a ``last.pt``
left in a reused directory by another run is never resumed from.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("sweeps.checkpoint")

LAST = "last.pt"
BEST = "best.pt"


def rng_states(loader_generator: torch.Generator | None) -> dict[str, Any]:
    states = {"rng": torch.get_rng_state(),
              "loader_rng": loader_generator.get_state() if loader_generator is not None else None}
    if torch.cuda.is_available():
        states["cuda_rng"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng(ckpt: dict[str, Any], loader_generator: torch.Generator | None) -> None:
    # RNG states must be CPU ByteTensors; map_location=device moved them (CUDA resume).
    torch.set_rng_state(ckpt["rng"].cpu())
    if loader_generator is not None and ckpt.get("loader_rng") is not None:
        loader_generator.set_state(ckpt["loader_rng"].cpu())
    if torch.cuda.is_available() and "cuda_rng" in ckpt:
        torch.cuda.set_rng_state_all([s.cpu() for s in ckpt["cuda_rng"]])


def save(path: Path, state: dict[str, Any], binding: str | None) -> None:
    tmp = path.with_suffix(".tmp")
    try:
        torch.save({**state, "binding": binding}, tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or a kill: no partial file left behind
        raise


def load(path: Path, device: torch.device, binding: str | None) -> dict[str, Any] | None:
    """The checkpoint to resume from, or None (logged) when there is none of this run's."""
    if not path.exists():
        log.warning(f"trainer.resume=true, but {path.parent} has no {path.name}: training from the first epoch.")
        return None
    ckpt = torch.load(path, map_location=device, weights_only=True)
    if ckpt.get("binding") not in (None, binding):
        log.warning(f"{path} was written by another run in this directory (not this run's config, study or trial): "
                    "it is not resumed; training from the first epoch.")
        return None
    return ckpt


KEEP = ("best", "all", "none")


def retain(run_dir: Path, keep: str, finished: bool) -> None:
    """Drop what ``trainer.keep_checkpoints`` does not keep once a run has ended.

    ``last.pt`` (model, optimizer and RNG state: about 4x ``best.pt``) exists for
    resume, and a run that ended will not resume: hundreds of trials would
    otherwise leave gigabytes. An interrupted run never comes here.
    """
    if keep == "all":
        return
    drop = [LAST] if finished and keep == "best" else [LAST, BEST]
    for name in drop:
        (run_dir / name).unlink(missing_ok=True)
