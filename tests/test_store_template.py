"""A new project's MLflow store is a copy of an empty store MLflow made once, not a new migration run."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from omegaconf import OmegaConf


def _cfg(mlruns: Path):
    return OmegaConf.create({"tracking": {"uri": None, "enabled": True, "experiment": "x"},
                             "paths": {"mlruns": str(mlruns)}})


def test_new_stores_are_copies_of_one_template_that_mlflow_reads(tmp_path: Path, monkeypatch):
    import mlflow

    from sweeps import tracking

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first, second = tmp_path / "a" / "mlruns", tmp_path / "b" / "mlruns"
    tracking.experiment_id(_cfg(first))
    template = tmp_path / "cache" / "sweeps" / f"mlflow-{mlflow.__version__}-empty.db"
    assert template.is_file()
    made = template.stat().st_mtime_ns
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri exports the first store's
    exp = tracking.experiment_id(_cfg(second))
    assert template.stat().st_mtime_ns == made  # made once, copied after
    run = tracking.client(_cfg(second)).create_run(exp)
    assert tracking.client(_cfg(second)).get_run(run.info.run_id).info.experiment_id == exp
    for mlruns in (first, second):
        with sqlite3.connect(mlruns / "mlflow.db") as conn:
            default = conn.execute("SELECT artifact_location FROM experiments WHERE experiment_id = 0").fetchone()[0]
        conn.close()
        assert default == (mlruns / "artifacts" / "Default").as_uri()  # this store's, not the template's


def test_without_a_writable_cache_mlflow_builds_the_store_itself(tmp_path: Path, monkeypatch):
    from sweeps import tracking

    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache directory would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    exp = tracking.experiment_id(_cfg(tmp_path / "mlruns"))
    assert tracking.client(_cfg(tmp_path / "mlruns")).get_experiment(exp).name == "x"
