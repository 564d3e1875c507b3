"""The link from a training job back to its Optuna trial, for pruning.

The ``sweeps_optuna`` sweeper passes the study, storage URL and trial number as
``trial.*`` overrides; the pruner comes from the sweeper's own config
(``hydra.sweeper.pruner``), which every job can read, because pruners are not
stored with the study. The job also stores its MLflow run id in the trial's
user attrs (``mlflow_run_id``), so a sweep that finds the trial orphaned by a
killed process can close that run as KILLED.
"""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig

# The per-epoch value reported to the pruner for each objective.
_PER_EPOCH = {"best_val_acc": "val_acc", "best_val_loss": "val_loss"}


def _open_trial(cfg: DictConfig):
    import optuna
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    from hydra_plugins.sweeps_optuna_sweeper.storage import open_storage

    pruner = optuna.pruners.NopPruner()
    if HydraConfig.initialized():
        sweeper = HydraConfig.get().sweeper
        pruner_cfg = sweeper.get("pruner") if "pruner" in sweeper else None
        if pruner_cfg:
            pruner = instantiate(pruner_cfg)
    study = optuna.load_study(study_name=cfg.trial.study, storage=open_storage(cfg.trial.storage), pruner=pruner)
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, int(cfg.trial.number))
    return study, optuna.trial.Trial(study, trial_id)


def pruning_callback(cfg: DictConfig) -> Callable | None:
    if "trial" not in cfg or cfg.trial.get("number") is None or not cfg.trial.get("storage"):
        return None
    import optuna

    study, trial = _open_trial(cfg)
    try:
        import mlflow

        run = mlflow.active_run()
        if run is not None:
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
    except Exception:
        pass
    metric = _PER_EPOCH.get(str(cfg.objective))
    if len(study.directions) > 1 or metric is None:
        return None  # Optuna cannot prune multi-objective trials
    if isinstance(study.pruner, optuna.pruners.NopPruner):
        return None

    def report(metrics, _result) -> None:
        value = float(getattr(metrics, metric))
        trial.report(value, metrics.epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {metrics.epoch} ({metric}={value:.4f})")

    return report
