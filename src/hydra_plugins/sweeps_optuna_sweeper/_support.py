"""The task-specific hooks of the sweeper, backed by :mod:`sweeps.sweep_support` when present.

A generic Hydra app (no ``budget``/``model``/``trial``/``tracking`` nodes, or
no ``sweeps`` package) gets no budget check and no MLflow records.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Dict, Optional

from omegaconf import DictConfig

log = logging.getLogger(__name__)
PARENT_ATTR = "mlflow_parent_run_id"
PARENT_WAIT_S = 60


class Support:
    def __init__(self, cfg: DictConfig, module: Any):
        self.cfg, self.mod = cfg, module
        self.budget = module is not None and module.has_budget(cfg)
        self.tracked = module is not None and module.is_tracked(cfg)

    def max_params(self, cfg: DictConfig) -> Optional[int]:
        return self.mod.max_params(cfg)

    def count_params(self, cfg: DictConfig) -> int:
        return self.mod.count_params(cfg)

    def parent_run(self, study: Any, study_name: str, created: bool) -> Optional[str]:
        """The sweep's MLflow parent run, shared by all its processes via the study's user attrs."""
        def current() -> Optional[str]:
            return study._storage.get_study_user_attrs(study._study_id).get(PARENT_ATTR)

        run_id = current()
        if run_id is None and not created and not study.get_trials(deepcopy=False):
            deadline = time.time() + PARENT_WAIT_S  # the process that created the study is making it
            while run_id is None and time.time() < deadline:
                time.sleep(1.0)
                run_id = current()
        if run_id is not None and self.mod.parent_is_usable(self.cfg, run_id):
            return run_id
        run_id = self.mod.create_parent_run(self.cfg, study_name)
        study.set_user_attr(PARENT_ATTR, run_id)
        log.info(f"MLflow parent run {run_id} (experiment '{self.cfg.tracking.experiment}')")
        return run_id

    def ended_run(self, run_id: str) -> Optional[tuple]:
        """(state, values, reason) that the trial's MLflow run ended with, or None."""
        try:
            return self.mod.ended_run(self.cfg, run_id)
        except Exception as e:  # noqa: BLE001 - unknown: treat the trial as interrupted
            log.warning(f"could not read MLflow run {run_id} ({e})")
            return None

    def record_refused(self, cfg: DictConfig, **kwargs: Any) -> str:
        return self.mod.record_refused(cfg, **kwargs)

    def mark_killed(self, run_id: str, reason: str) -> None:
        try:
            self.mod.mark_run_killed(self.cfg, run_id, reason)
        except Exception as e:
            log.warning(f"could not mark MLflow run {run_id} KILLED ({e})")

    def finish_parent(self, run_id: str, metrics: Dict[str, float]) -> None:
        self.mod.finish_parent_run(self.cfg, run_id, metrics)


def load(cfg: DictConfig) -> Support:
    module = None
    if ("budget" in cfg and "model" in cfg) or ("tracking" in cfg and "trial" in cfg):
        try:
            from sweeps import sweep_support as module  # type: ignore[no-redef]
        except ImportError:
            module = None
    return Support(cfg, module)
