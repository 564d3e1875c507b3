"""The link from a training job back to its Optuna trial.

The ``sweeps_optuna`` sweeper passes the study, storage URL and trial number
as ``trial.*`` overrides (:mod:`sweeps.sweep_hooks`). Through them the job

* stores its MLflow run id in the trial (``contract.RUN_ID``) as soon as the
  run exists, so that a sweep finding the trial orphaned by a killed process
  closes that run (one killed before even that finds the run by its tags);
* reports each epoch's value to the pruner and stops when told. The pruner
  comes from the sweeper's own config (``hydra.sweeper.pruner``), which every
  job can read, because pruners are not stored with the study.

A job run in the sweep's own process (Hydra's basic launcher) reaches the
study through the sweep's open storage rather than a new one per trial.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from sweeps_optuna.contract import RUN_ID
from sweeps import objectives


@dataclass
class TrialLink:
    study: Any  # optuna.Study
    trial: Any  # optuna.trial.Trial
    in_sweep_process: bool = False  # the job runs in the sweep's own process (Hydra's basic launcher)

    @classmethod
    def open(cls, cfg: DictConfig) -> TrialLink | None:
        """The job's trial; None outside a sweep (no ``trial.*`` overrides)."""
        if "trial" not in cfg or cfg.trial.get("number") is None or not cfg.trial.get("storage"):
            return None
        import optuna
        from hydra.core.hydra_config import HydraConfig
        from hydra.utils import instantiate

        from sweeps_optuna.storage import open_shared, shared_here

        pruner = optuna.pruners.NopPruner()
        if HydraConfig.initialized():
            sweeper = HydraConfig.get().sweeper
            pruner_cfg = sweeper.get("pruner") if "pruner" in sweeper else None
            if pruner_cfg:
                pruner = instantiate(pruner_cfg)
        study = optuna.load_study(study_name=cfg.trial.study, storage=open_shared(cfg.trial.storage), pruner=pruner)
        trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, int(cfg.trial.number))
        return cls(study, optuna.trial.Trial(study, trial_id), shared_here(cfg.trial.storage))

    def record_run(self, run_id: str | None) -> None:
        if run_id:
            self.trial.set_user_attr(RUN_ID, run_id)

    def pruning_callback(self, objective: Any) -> Callable | None:
        """Report the objective's per-epoch metric and raise TrialPruned when the pruner says so;
        None when nothing can prune (several objectives, a metric with no epoch value, no pruner)."""
        import optuna

        metric = objectives.per_epoch(str(objective))
        if len(self.study.directions) > 1 or metric is None:
            return None  # Optuna cannot prune multi-objective trials
        if isinstance(self.study.pruner, optuna.pruners.NopPruner):
            return None
        trial = self.trial

        def report(metrics, _result) -> None:
            value = float(getattr(metrics, metric))
            trial.report(value, metrics.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {metrics.epoch} ({metric}={value:.4f})")

        return report
