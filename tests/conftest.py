"""Shared helpers: real `python -m sweeps.*` subprocesses and the MLflow store they write."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# The suite runs on one pytest-xdist worker per core, and most tests start training subprocesses:
# with torch's default of one thread per core each, two of them at once would oversubscribe the
# cores. One thread each (inherited by every subprocess) changes no result, only the waiting.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(items):
    """The slow tests first: pytest-xdist hands tests out in this order, so none of the longest
    (two minutes and more) starts last while the other workers sit idle."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


# A model small enough that a CPU epoch on digits takes well under a second.
TINY = [
    "dataset=digits",
    "model.channels=[8,16]",
    "model.blocks=[1,1]",
    "model.stem_channels=8",
    "model.pool=4",
    "model.head=[]",
    "trainer.batch_size=64",
    "trainer.epochs=2",
    "trainer.limit_train_batches=3",
    "trainer.limit_eval_batches=2",
    "trainer.progress=false",
]


def run_module(module: str, args: list[str], cwd: Path, timeout: float = 300, env: dict | None = None,
               address_space_mb: int | None = None) -> subprocess.CompletedProcess:
    """``python -m module args`` in ``cwd``; ``address_space_mb`` caps its memory (RLIMIT_AS), so that
    a big enough allocation really fails, as on a full GPU."""
    inherited = {k: v for k, v in os.environ.items() if k != "SWEEPS_OPTUNA_STORAGE"}  # a developer's cluster study
    full_env = {**inherited, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None)

    def cap_memory():
        import resource

        limit = address_space_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env,
        preexec_fn=cap_memory if address_space_mb else None,
    )


def mlflow_runs(root: Path, experiment: str | None = None):
    """All runs in the project's default store under ``root`` (every status)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    exps = client.search_experiments()
    ids = [e.experiment_id for e in exps if experiment is None or e.name == experiment]
    if not ids:
        return []
    return client.search_runs(ids, run_view_type=mlflow.entities.ViewType.ALL, max_results=1000)


@pytest.fixture(scope="module")
def composer():
    """``composer(overrides)``: the train config as ``python -m sweeps.train`` composes it, in-process."""
    from hydra import compose, initialize_config_dir

    from sweeps.paths import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        yield lambda overrides: compose("train", overrides=overrides)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An empty project root: outputs, multirun, mlruns and data land here."""
    return tmp_path


# --------------------------------------------------------------------------- stores that must stay as they were

# One sweep process, no worker: the cheapest sweep that records a trial and its runs.
SWEEP = ["--multirun", "hydra/sweeper=sweeps_optuna", "hydra.sweeper.n_jobs=1", *TINY]
GOOD_LR = "optim.lr=interval(0.001,0.1)"
# The fixed overrides of ``recorded_sweep``'s study (its search space: GOOD_LR). A sweep that
# continues that study must repeat them: another sweep's study is refused (allow_study_changes).
RECORDED = [a for a in SWEEP if not a.startswith("trainer.epochs=")] + [
    "trainer.epochs=1", "augment=norm", "tracking.log_model=false", "tracking.log_figures=false"]


def stores(root: Path) -> dict:
    """What the Optuna storage (multirun/optuna.db) and the MLflow store (mlruns/mlflow.db) hold.

    Every study with its directions and trials (number, state, values, params, failure reason),
    every experiment, every run (status, sweeps.state, end time, metrics). Read only; a store
    that does not exist reads as empty.
    """
    import mlflow
    import optuna

    out: dict = {"studies": {}, "experiments": [], "runs": {}}
    db = root / "multirun" / "optuna.db"
    if db.exists():
        storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
        try:
            for s in storage.get_all_studies():
                trials = storage.get_all_trials(s._study_id, deepcopy=False)
                out["studies"][s.study_name] = (
                    [d.name for d in s.directions],
                    [(t.number, t.state.name, t.values, dict(t.params), t.user_attrs.get("fail_reason"))
                     for t in trials],
                )
        finally:
            storage.remove_session()
            storage.engine.dispose()
    if (root / "mlruns" / "mlflow.db").exists():
        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
        out["experiments"] = sorted(e.name for e in client.search_experiments(view_type=mlflow.entities.ViewType.ALL))
        out["runs"] = {r.info.run_id: (r.info.status, r.data.tags.get("sweeps.state"), r.info.end_time,
                                       dict(r.data.metrics)) for r in mlflow_runs(root)}
    return out


def nothing_running(root: Path) -> None:
    """No Optuna trial and no MLflow run is left RUNNING (or SCHEDULED)."""
    s = stores(root)
    for name, (_, trials) in s["studies"].items():
        assert not [t for t in trials if t[1] in ("RUNNING", "WAITING")], (name, trials)
    assert not [r for r in s["runs"].values() if r[0] in ("RUNNING", "SCHEDULED")], s["runs"]


@pytest.fixture(scope="session")
def recorded_sweep(tmp_path_factory) -> tuple[Path, dict]:
    """A project root whose stores hold one finished sweep: one COMPLETE trial, its run and the parent run.

    Session-scoped: one sweep of one 1-epoch trial for every test that uses it; tests use
    ``recorded_project``, a copy, in case what they check for goes wrong.
    """
    root = tmp_path_factory.mktemp("recorded")
    proc = run_module("sweeps.train", [*RECORDED, "hydra.sweeper.n_trials=1", GOOD_LR], root, timeout=240)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    before = stores(root)
    ((directions, trials),) = before["studies"].values()
    assert [t[1] for t in trials] == ["COMPLETE"]
    assert sorted(r[0] for r in before["runs"].values()) == ["FINISHED", "FINISHED"]  # the trial and its parent
    return root, before


@pytest.fixture
def recorded_project(recorded_sweep, tmp_path) -> tuple[Path, dict]:
    """A copy of ``recorded_sweep``'s project, and what its stores held."""
    import shutil

    root, before = recorded_sweep
    copy = tmp_path / "project"
    shutil.copytree(root, copy)
    return copy, before
