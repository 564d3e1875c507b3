"""What a command-line target points at: an experiment in an MLflow store, maybe a study.

A sweep dir knows all three from its jobs' composed configs; a bare
experiment name is looked up in the store of the current directory (or
``--tracking-uri``). Every way a target can be wrong ends in a ReportError
that lists what would have worked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sweeps_optuna.storage import REDACTED, STORAGE_ENV, default_storage_url, sqlite_path
from sweeps.config import select_or_none
from sweeps.errors import ReportError
from sweeps.tracking import local_store_uri


@dataclass
class Target:
    """Where one command-line target points: an experiment in a store, maybe a study."""

    experiment: str
    tracking_uri: str
    sweep_dir: Path | None = None
    study_name: str | None = None
    storage: str | None = None


def default_store(root: Path) -> str:
    """The store ``sweeps.train`` writes when nothing names another: ``<root>/mlruns``."""
    return local_store_uri(root / "mlruns")


def default_study_storage(root: Path) -> str | None:
    """The sweeper's default Optuna storage under ``root``, where a sweep has written one."""
    url = default_storage_url(root)
    db = sqlite_path(url)
    return url if db is not None and db.is_file() else None


def _load_job_config(job: Path):
    """A job's composed config with ``${hydra:...}`` resolvable from its hydra.yaml."""
    from omegaconf import OmegaConf

    text = (job / ".hydra" / "config.yaml").read_text().replace("${hydra:", "${hydra.")
    cfg = OmegaConf.create(text)
    hydra_yaml = job / ".hydra" / "hydra.yaml"
    if hydra_yaml.is_file():
        try:
            hydra_cfg = OmegaConf.load(hydra_yaml)
            cfg = OmegaConf.merge(cfg, {"hydra": {"runtime": hydra_cfg.hydra.runtime}})
        except Exception:  # noqa: BLE001 - best effort; paths fall back below
            pass
    return cfg


def _job_dirs(path: Path) -> list[Path]:
    if (path / ".hydra" / "config.yaml").is_file():
        return [path]
    jobs = [p.parent.parent for p in path.glob("*/.hydra/config.yaml")]
    return sorted(jobs, key=lambda p: (len(p.name), p.name))


def target_from_dir(path: Path, uri_flag: str | None, storage_flag: str | None) -> Target | None:
    """The experiment, store and study a sweep dir (or a single run dir) belongs to."""
    from omegaconf import OmegaConf

    jobs = _job_dirs(path)
    results = path / "optimization_results.yaml"
    if not jobs and not results.is_file():
        return None
    experiment = study = storage = uri = mlruns = None
    for job in jobs:
        cfg = _load_job_config(job)
        experiment = experiment or select_or_none(cfg, "tracking.experiment")
        study = study or select_or_none(cfg, "trial.study")
        storage = storage or select_or_none(cfg, "trial.storage")
        uri = uri or select_or_none(cfg, "tracking.uri")
        mlruns = mlruns or select_or_none(cfg, "paths.mlruns")
        if experiment and study and storage and mlruns:
            break
    if results.is_file():
        res = OmegaConf.to_container(OmegaConf.load(results), resolve=False) or {}
        experiment = experiment or res.get("experiment")
        study = study or res.get("study_name") or res.get("name")
        storage = storage or res.get("storage")
    if not experiment:
        raise ReportError(
            f"{path} looks like a sweep dir but none of its jobs' .hydra/config.yaml names "
            "tracking.experiment, so its MLflow experiment is unknown; pass the experiment name "
            "instead (python -m sweeps.report <experiment>)."
        )
    root = path.resolve().parents[2] if len(path.resolve().parents) > 2 else path.resolve()
    if uri_flag:
        uri = uri_flag
    elif not uri:
        uri = os.environ.get("MLFLOW_TRACKING_URI") or (
            local_store_uri(str(mlruns)) if mlruns else default_store(root))
    if storage and REDACTED in str(storage):  # the results file hides the password: take the URL from its env var
        storage = os.environ.get(STORAGE_ENV)
    return Target(str(experiment), str(uri), path, str(study) if study else None,
                  storage_flag or (str(storage) if storage else None))


def _check_store(uri: str) -> None:
    db = sqlite_path(uri)
    if db is not None:
        if not db.is_file():
            raise ReportError(
                f"there is no MLflow store at {uri} (no file {db}). Run the report from the project "
                "root where sweeps.train wrote mlruns/, or pass --tracking-uri URI (or set "
                "MLFLOW_TRACKING_URI) to the store the runs were recorded in."
            )


def mlflow_client(uri: str):
    """An MLflow client on an existing store: MLflow would create an empty SQLite one."""
    import mlflow

    _check_store(uri)
    return mlflow.MlflowClient(tracking_uri=uri)


def resolve_targets(names: list[str], uri_flag: str | None, storage_flag: str | None) -> list[Target]:
    default_uri = uri_flag or os.environ.get("MLFLOW_TRACKING_URI") or default_store(Path.cwd())
    targets = []
    for name in names:
        path = Path(name)
        if path.is_dir():
            target = target_from_dir(path, uri_flag, storage_flag)
            if target is not None:
                targets.append(target)
                continue
        store = mlflow_client(default_uri)
        if store.get_experiment_by_name(name) is not None:
            targets.append(Target(name, default_uri, storage=storage_flag))
            continue
        known = sorted(e.name for e in store.search_experiments() if e.name != "Default")
        what = (f"{name} is a directory but not a sweep dir (no optimization_results.yaml and no "
                "job subdirectory with .hydra/config.yaml)" if path.is_dir()
                else f"{name!r} is neither a sweep dir nor an MLflow experiment in {default_uri}")
        listing = ", ".join(known) if known else "none -- the store holds no experiments yet"
        raise ReportError(
            f"{what}. Pass a sweep dir (multirun/<date>/<time>) or one of the known experiments: "
            f"{listing}. Use --tracking-uri URI for another store."
        )
    return targets
