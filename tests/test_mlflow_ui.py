"""The MLflow UI's server, as `make ui` starts it, serves the runs sweeps.train recorded.

A real `mlflow server` subprocess on a free loopback port, backed by the test's
SQLite store; the runs are read back through the REST API with urllib.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import TINY, mlflow_runs, run_module
from servers import HOST, free_port, stop_group, wait_healthy


def _get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status, resp.read()


def _post(url: str, body: dict, timeout: float = 10) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
def test_mlflow_server_serves_recorded_runs(tmp_path: Path):
    root = tmp_path
    res = run_module("sweeps.train", [*TINY, "tracking.experiment=ui", "tracking.log_model=false", "optim=sgd"],
                     cwd=root)
    assert res.returncode == 0, res.stderr[-3000:]
    expected = {r.info.run_id: r for r in mlflow_runs(root, "ui")}
    assert len(expected) == 1

    port = free_port()
    base = f"http://{HOST}:{port}"
    log = tmp_path / "mlflow_server.log"
    db = root / "mlruns" / "mlflow.db"
    env = {**os.environ}
    env.pop("MLFLOW_TRACKING_URI", None)
    # The command `make ui` runs (mlflow ui is mlflow server with the same options).
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}",
           "--default-artifact-root", str(root / "mlruns" / "artifacts"), "--host", HOST, "--port", str(port),
           "--workers", "1"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=root, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        wait_healthy(base, proc, log)
        exp = json.loads(_get(f"{base}/api/2.0/mlflow/experiments/get-by-name?"
                              + urllib.parse.urlencode({"experiment_name": "ui"}))[1])
        exp_id = exp["experiment"]["experiment_id"]
        found = _post(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id], "max_results": 100})
        runs = found.get("runs", [])
        assert len(runs) == 1
        by_id = {r["info"]["run_id"]: r for r in runs}
        assert set(by_id) == set(expected)
        for run_id, run in by_id.items():
            metrics = {m["key"]: m["value"] for m in run["data"].get("metrics", [])}
            params = {p["key"]: p["value"] for p in run["data"].get("params", [])}
            tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
            assert metrics["best_val_acc"] == pytest.approx(expected[run_id].data.metrics["best_val_acc"])
            assert 0.0 <= metrics["best_val_acc"] <= 1.0
            assert params["n_params"] == expected[run_id].data.params["n_params"]
            assert tags["sweeps.state"] == "COMPLETE"
            assert run["info"]["status"] == "FINISHED"
        # filters of the kind the README suggests for one ablation axis
        for flt, n in (("params.`optim._target_` = 'torch.optim.SGD'", 1),
                       ("params.`optim._target_` = 'torch.optim.AdamW'", 0),
                       ("tags.`sweeps.state` = 'COMPLETE' and metrics.best_val_acc >= 0", 1)):
            hits = _post(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id], "filter": flt})
            assert len(hits.get("runs", [])) == n, flt
        # the per-epoch curve the chart view draws
        some = next(iter(by_id))
        history = json.loads(_get(f"{base}/api/2.0/mlflow/metrics/get-history?"
                                  + urllib.parse.urlencode({"run_id": some, "metric_key": "val_acc"}))[1])
        assert sorted(m["step"] for m in history["metrics"]) == [1, 2]
        # the UI itself answers
        status, page = _get(f"{base}/", timeout=10)
        assert status == 200 and b"<html" in page.lower()
    finally:
        stop_group(proc)
    assert proc.poll() is not None


def test_server_refuses_an_unreachable_backend_store_without_showing_its_password(tmp_path: Path):
    """`make server` with a wrong MLFLOW_BACKEND_STORE_URI: one paragraph, exit 2, password masked."""
    port = free_port()  # nothing listens there
    res = run_module("sweeps.server", ["--port", str(free_port())], cwd=tmp_path,
                     env={"MLFLOW_BACKEND_STORE_URI": f"postgresql://mlflow:s3cret-pw@{HOST}:{port}/mlflow"})
    assert res.returncode == 2, res.stderr[-2000:]
    assert "cannot be reached" in res.stderr and f"postgresql://mlflow:***@{HOST}:{port}/mlflow" in res.stderr
    assert "s3cret-pw" not in res.stdout + res.stderr and "Traceback" not in res.stderr
