"""Shared helpers: real `python -m sweeps.*` subprocesses and the MLflow store they write."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def run_module(module: str, args: list[str], cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
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


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An empty project root: outputs, multirun, mlruns and data land here."""
    return tmp_path
