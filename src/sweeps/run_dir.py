"""Whose a run directory is: the study, trial and config its checkpoint and MLflow run belong to.

``trainer.resume=true`` continues from what a directory holds (``last.pt`` and the
MLflow run named in ``job.json``). A directory can be reused by another run:
two sweeps with different study names and one ``hydra.sweep.dir`` both write
``<dir>/0``; a single run re-pointed at an old ``hydra.run.dir`` may have other
overrides. Resuming there would reopen someone else's run and checkpoint and
report its result as this one's. So the directory records whose it is, and a
resume that finds another study's, trial's or config's files refuses them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sweeps.config import RUNTIME_ONLY
from sweeps.errors import ConfigError
from sweeps.tracking import config_params

JOB_FILE = "job.json"
OLD_RUN_ID_FILE = "mlflow_run_id"  # what directories written before job.json hold


def identity(cfg: DictConfig) -> dict[str, Any]:
    """The study and trial (None outside a sweep) and the experiment's config of this run."""
    trial = OmegaConf.select(cfg, "trial") or {}
    config = {k: _plain(v) for k, v in config_params(cfg).items() if not k.startswith(RUNTIME_ONLY)}
    return {"study": trial.get("study"), "trial": trial.get("number"), "config": config}


def fingerprint(ident: dict[str, Any]) -> str:
    """A short hash of an identity, stored in the checkpoint so that it is bound too."""
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else str(value)


def write(out_dir: Path, ident: dict[str, Any], run_id: str | None) -> None:
    path = Path(out_dir) / JOB_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**ident, "mlflow_run_id": run_id}, indent=1, sort_keys=True, default=str))
    tmp.replace(path)


def resume_run_id(out_dir: Path, ident: dict[str, Any]) -> str | None:
    """The MLflow run to continue in ``out_dir``; ConfigError when the directory is another run's."""
    out_dir = Path(out_dir)
    path = out_dir / JOB_FILE
    if not path.is_file():
        old = out_dir / OLD_RUN_ID_FILE
        return old.read_text().strip() or None if old.is_file() else None
    try:
        theirs = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"trainer.resume=true: {path} cannot be read ({e}), so it is not known whose checkpoint "
                          f"{out_dir} holds; nothing was resumed. Delete {path} to start afresh there, or point "
                          "the run at another directory.") from None
    mismatch = _mismatch(theirs, ident)
    if mismatch:
        raise ConfigError(
            f"trainer.resume=true: {out_dir} holds the checkpoint and MLflow run of {_whose(theirs)}, not of this "
            f"run ({_whose(ident)}): {mismatch}. Nothing was resumed or trained. Give this run its own directory "
            "(hydra.sweep.dir for a sweep, hydra.run.dir for one run), or drop trainer.resume to train afresh.")
    return theirs.get("mlflow_run_id")


def _whose(ident: dict[str, Any]) -> str:
    if ident.get("study") is not None:
        return f"study '{ident['study']}' trial {ident.get('trial')}"
    return "a single run"


def _mismatch(theirs: dict[str, Any], mine: dict[str, Any]) -> str:
    if (theirs.get("study"), theirs.get("trial")) != (mine.get("study"), mine.get("trial")):
        return "another study or trial"
    old, new = theirs.get("config", {}), mine["config"]
    changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if not changed:
        return ""
    shown = "; ".join(f"{k}={old.get(k, '(unset)')} there, {new.get(k, '(unset)')} here" for k in changed[:3])
    return f"another config ({shown}" + (f"; and {len(changed) - 3} more" if len(changed) > 3 else "") + ")"
