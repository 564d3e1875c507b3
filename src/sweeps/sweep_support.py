"""What the ``sweeps_optuna`` sweeper needs from this project: parameter counts and MLflow records.

The sweeper (``src/hydra_plugins/sweeps_optuna_sweeper``) is generic; it calls
these helpers only when the task config has the nodes they read (``budget`` and
``model`` for the budget, ``trial`` and ``tracking`` for MLflow).

MLflow layout of a sweep: one parent run per study (run name = study name, tag
``sweeps.role=parent``), created once and shared by every process of the sweep
through the study's user attr ``mlflow_parent_run_id``; one child run per
trial. Trials that train are recorded by ``sweeps.train`` itself. Trials the
sweeper refuses without launching are recorded here:

* over ``budget.max_params``: tag ``sweeps.state=INFEASIBLE``, status FINISHED
  (the refusal is a decision, nothing failed), param ``n_params``;
* a config that cannot be built: ``sweeps.state=FAIL``, status FAILED.
"""

from __future__ import annotations

from omegaconf import DictConfig, ListConfig

from hydra_plugins.sweeps_optuna_sweeper.storage import redact, sqlite_path, sqlite_schema_lock
from sweeps.tracking import TAG_REASON, TAG_STATE, _param, config_params, experiment_id, named, tracking_uri

TAG_STUDY = "sweeps.study"
TAG_TRIAL = "sweeps.trial"
TAG_ROLE = "sweeps.role"
PARENT_ATTR = "mlflow_parent_run_id"


def has_budget(cfg: DictConfig) -> bool:
    return "budget" in cfg and "model" in cfg


def max_params(cfg: DictConfig) -> int | None:
    value = cfg.get("budget", {}).get("max_params") if "budget" in cfg else None
    return None if value is None else int(value)


def count_params(cfg: DictConfig) -> int:
    """Parameters of the trial's model, built on the meta device (no data, no GPU)."""
    from sweeps.train import model_size

    return int(model_size(cfg))


def is_tracked(cfg: DictConfig) -> bool:
    return "tracking" in cfg and "trial" in cfg and bool(cfg.tracking.get("enabled", False))


_READY: set[str] = set()


def _client(cfg: DictConfig):
    """A client on the task's store; the first use per process creates a SQLite store's schema
    under a file lock, so sweep processes starting together do not race on MLflow's migrations."""
    import mlflow

    from sweeps.tracking import check_reachable

    uri = tracking_uri(cfg)
    if uri not in _READY:
        check_reachable(uri)  # a server that is down: a ConfigError in seconds, not MLflow's minutes of retries
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    db = sqlite_path(uri)
    if uri not in _READY and db is not None:
        with sqlite_schema_lock(db):
            client.search_experiments(max_results=1)
    _READY.add(uri)
    return client


def create_parent_run(cfg: DictConfig, study_name: str) -> str:
    """Create the experiment (``tracking.experiment``) and the sweep's parent run."""
    client = _client(cfg)
    exp = experiment_id(cfg)
    run = client.create_run(exp, run_name=study_name, tags={TAG_STUDY: study_name, TAG_ROLE: "parent"})
    return run.info.run_id


def parent_is_usable(cfg: DictConfig, run_id: str) -> bool:
    try:
        _client(cfg).get_run(run_id)
        return True
    except Exception:
        return False


def finish_parent_run(cfg: DictConfig, run_id: str, metrics: dict[str, float], status: str = "FINISHED") -> None:
    client = _client(cfg)
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value))
    if client.get_run(run_id).info.status != status:
        client.set_terminated(run_id, status)


def record_refused(
    cfg: DictConfig,
    *,
    study_name: str,
    trial_number: int,
    parent_run_id: str | None,
    run_name: str,
    state: str,
    reason: str,
    n_params: int | None,
) -> str:
    """A child run for a trial that was never launched (INFEASIBLE or unbuildable FAIL)."""
    client = _client(cfg)
    tags = {TAG_STUDY: study_name, TAG_TRIAL: str(trial_number), TAG_STATE: state, TAG_REASON: redact(reason)[:5000]}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run_name, tags = named(run_name, tags)
    run = client.create_run(experiment_id(cfg), run_name=run_name, tags=tags)
    run_id = run.info.run_id
    try:
        params = {k: _param(v) for k, v in config_params(cfg).items()}
    except Exception:  # an unbuildable config may not even resolve
        params = {}
    if n_params is not None:
        params["n_params"] = n_params
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])
    client.set_terminated(run_id, "FINISHED" if state == "INFEASIBLE" else "FAILED")
    return run_id


def mark_run_killed(cfg: DictConfig, run_id: str, reason: str) -> None:
    """A training run left RUNNING by a killed process ends KILLED (tag sweeps.state=INTERRUPTED)."""
    client = _client(cfg)
    run = client.get_run(run_id)
    if run.info.status == "RUNNING":
        client.set_tag(run_id, TAG_STATE, "INTERRUPTED")
        client.set_tag(run_id, TAG_REASON, redact(reason))
        client.set_terminated(run_id, "KILLED")


def ended_run(cfg: DictConfig, run_id: str) -> tuple[str, list[float] | None, str] | None:
    """What a trial's training run recorded before its sweep process died.

    (state, objective values, reason) when the run ended COMPLETE, PRUNED or
    FAIL; None while it is RUNNING or was killed. A process killed after its
    job finished but before it told the study leaves exactly this behind.
    """
    run = _client(cfg).get_run(run_id)
    status, state = run.info.status, run.data.tags.get(TAG_STATE)
    reason = run.data.tags.get(TAG_REASON, "")
    if status == "FINISHED" and state == "COMPLETE":
        names = [str(n) for n in cfg.objective] if isinstance(cfg.objective, ListConfig) else [str(cfg.objective)]
        if all(n in run.data.metrics for n in names):
            return "COMPLETE", [float(run.data.metrics[n]) for n in names], ""
        return None
    if status == "FINISHED" and state == "PRUNED":
        return "PRUNED", None, reason
    if status == "FAILED":
        return "FAIL", None, reason
    return None
