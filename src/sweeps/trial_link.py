"""The link from a training job back to its Optuna trial, for pruning.

The sweeper passes the study, storage and trial number as ``trial.*``
overrides; the pruner comes from the sweeper's own config, which every job
can read, because pruners are not stored with the study.
"""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig

# The per-epoch value reported to the pruner for each objective.
_PER_EPOCH = {"best_val_acc": "val_acc", "best_val_loss": "val_loss"}


def pruning_callback(cfg: DictConfig) -> Callable | None:
    if "trial" not in cfg or cfg.trial.get("number") is None:
        return None
    import optuna
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    sweeper = HydraConfig.get().sweeper
    pruner_cfg = sweeper.get("pruner") if "pruner" in sweeper else None
    pruner = instantiate(pruner_cfg) if pruner_cfg else optuna.pruners.NopPruner()
    study = optuna.load_study(study_name=cfg.trial.study, storage=cfg.trial.storage, pruner=pruner)
    metric = _PER_EPOCH.get(str(cfg.objective))
    if len(study.directions) > 1 or metric is None:
        return None  # Optuna cannot prune multi-objective trials
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, int(cfg.trial.number))
    trial = optuna.trial.Trial(study, trial_id)

    def report(metrics, _result) -> None:
        trial.report(float(getattr(metrics, metric)), metrics.epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {metrics.epoch} ({metric}={getattr(metrics, metric):.4f})")

    return report
