"""No password in any message, log line or record, from every URL field, reachable or not.

The password is a unique string so that a single grep over everything a run
printed, logged and recorded finds any copy of it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY, run_module
from servers import HOST, free_port, stop_group, wait_healthy

SECRET = "Zq7-n0t-in-any-log"
ONE = [*TINY, "trainer.epochs=1", "tracking.log_model=false"]


def assert_masked(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    out = proc.stdout + proc.stderr
    assert SECRET not in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    for fragment in fragments:
        assert fragment in out, out[-3000:]


@pytest.mark.parametrize("how", ["command line", "MLFLOW_TRACKING_URI"])
def test_an_unreachable_tracking_server_is_named_without_its_password(project, how):
    uri = f"http://alice:{SECRET}@127.0.0.1:9"
    args, env = (ONE + [f"tracking.uri={uri}"], None) if how == "command line" else (ONE, {"MLFLOW_TRACKING_URI": uri})
    if env:  # run_module drops a developer's MLFLOW_TRACKING_URI; give this one explicitly
        proc = subprocess.run([sys.executable, "-m", "sweeps.train", *args], cwd=project, capture_output=True,
                              text=True, timeout=120, env={**os.environ, **env})
    else:
        proc = run_module("sweeps.train", args, project, timeout=120)
    assert proc.returncode == 2
    assert_masked(proc, "http://alice:***@127.0.0.1:9 cannot be reached")


def test_an_unreachable_study_database_is_named_without_its_password(project):
    proc = run_module("sweeps.train", ["--multirun", "hydra/sweeper=sweeps_optuna", "hydra.sweeper.n_jobs=1", *ONE,
                                       "optim.lr=interval(0.001,0.01)",
                                       f"hydra.sweeper.storage=postgresql://sweeps:{SECRET}@127.0.0.1:1/optuna"],
                      project, timeout=120)
    assert proc.returncode == 2
    assert_masked(proc, "postgresql://sweeps:***@127.0.0.1:1/optuna cannot be opened")


@pytest.fixture
def auth_server(tmp_path):
    """A real `mlflow server` with MLflow's basic-auth app; its admin's password is SECRET."""
    port = free_port()
    base = f"http://{HOST}:{port}"
    log = tmp_path / "server.log"
    env = {**os.environ, "MLFLOW_AUTH_ADMIN_PASSWORD": SECRET, "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only"}
    env.pop("MLFLOW_TRACKING_URI", None)
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    cmd = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--backend-store-uri",
           f"sqlite:///{server_dir / 'mlflow.db'}", "--host", HOST, "--port", str(port), "--workers", "1",
           "--serve-artifacts", "--artifacts-destination", (server_dir / "artifacts").as_uri()]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=server_dir, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        wait_healthy(base, proc, log)
        yield f"http://admin:{SECRET}@{HOST}:{port}", server_dir
    finally:
        stop_group(proc)


@pytest.mark.slow
def test_credentials_in_a_tracking_url_work_and_are_never_shown(project, auth_server):
    """A sweep logs to a password-protected server through http://user:password@host:port."""
    uri, server_dir = auth_server
    proc = run_module("sweeps.train", ["--multirun", "hydra/sweeper=sweeps_optuna", "hydra.sweeper.n_jobs=1",
                                       "hydra.sweeper.n_trials=1", "hydra.sweeper.study_name=auth", *ONE,
                                       "tracking.experiment=auth", "optim.lr=interval(0.001,0.01)",
                                       f"tracking.uri={uri}"], project, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert_masked(proc, "1/1 trials")
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("auth")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags.get("sweeps.role", "trial") for r in runs) == ["parent", "trial"]
    assert all(r.info.status == "FINISHED" for r in runs)
    for r in runs:
        assert SECRET not in repr(r.data.params) + repr(r.data.tags)
    trial_run = next(r for r in runs if "sweeps.trial" in r.data.tags)
    local = Path(client.download_artifacts(trial_run.info.run_id, "hydra", str(project / "downloaded")))
    texts = [p.read_text(errors="replace") for p in local.rglob("*") if p.is_file()]
    assert texts and not any(SECRET in t for t in texts), "a .hydra artifact holds the password"
    results = next((project / "multirun").rglob("optimization_results.yaml")).read_text()
    assert SECRET not in results
    for saved_log in (project / "multirun").rglob("*.log"):
        assert SECRET not in saved_log.read_text(errors="replace"), saved_log
