"""A run directory, its checkpoint and its MLflow run belong to one study, trial and config.

Resuming in a directory that holds another run's files (another study's trial
of the same number in a shared ``hydra.sweep.dir``, or a single run of another
config) refuses them with one line; a stale ``last.pt`` of another run is never
resumed from; and stores that cannot be read are named, and left as they are.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
import torch

from conftest import TINY, mlflow_runs, nothing_running, run_module, stores

FAST = [*[a for a in TINY if not a.startswith("trainer.epochs")], "trainer.epochs=1", "augment=norm",
        "tracking.log_model=false", "tracking.log_figures=false"]


def sweep(study: str, sweep_dir: Path) -> list[str]:
    return ["--multirun", "hydra/sweeper=sweeps_optuna", "hydra.sweeper.n_jobs=1", "hydra.sweeper.n_trials=1",
            f"hydra.sweeper.study_name={study}", f"tracking.experiment={study}", f"hydra.sweep.dir={sweep_dir}",
            "trainer.resume=true", "hydra.sweeper.max_failure_rate=1.0", *FAST, "optim.lr=interval(0.001,0.01)"]


def test_two_studies_in_one_sweep_dir_never_resume_each_others_trials(project):
    shared = project / "shared-sweep-dir"
    a = run_module("sweeps.train", sweep("study_a", shared), project, timeout=240)
    assert a.returncode == 0, (a.stdout + a.stderr)[-3000:]
    (run_a,) = [r for r in mlflow_runs(project, "study_a") if "sweeps.trial" in r.data.tags]
    b = run_module("sweeps.train", sweep("study_b", shared), project, timeout=240)
    out = b.stdout + b.stderr
    assert "Traceback" not in out, out[-3000:]
    import optuna

    (trial_b,) = optuna.load_study(study_name="study_b",
                                   storage=f"sqlite:///{project / 'multirun' / 'optuna.db'}").trials
    assert trial_b.state.name == "FAIL", trial_b
    reason = trial_b.user_attrs["fail_reason"]
    assert "holds the checkpoint and MLflow run of study 'study_a' trial 0" in reason, reason
    assert "study 'study_b' trial 0" in reason and "Nothing was resumed" in reason
    (again_a,) = [r for r in mlflow_runs(project, "study_a") if "sweeps.trial" in r.data.tags]
    assert again_a.data.tags["sweeps.study"] == "study_a" and again_a.info.status == "FINISHED"
    assert again_a.data.metrics == run_a.data.metrics  # A's run was not reopened or changed
    nothing_running(project)


def test_resuming_a_run_dir_of_another_config_is_refused_before_anything_is_recorded(project):
    run_dir = project / "one-run"
    first = run_module("sweeps.train", [*FAST, f"hydra.run.dir={run_dir}"], project)
    assert first.returncode == 0, first.stderr[-3000:]
    before = stores(project)
    other = run_module("sweeps.train", [*FAST, "optim.lr=0.05", f"hydra.run.dir={run_dir}", "trainer.resume=true"],
                       project)
    assert other.returncode == 2 and "Traceback" not in other.stderr, other.stderr[-3000:]
    last = other.stderr.strip().splitlines()[-1]
    assert last.startswith("error: trainer.resume=true:") and "another config (optim.lr=0.001 there, 0.05 here)" in last
    assert stores(project) == before


def test_a_last_checkpoint_of_another_run_is_never_resumed_from(tmp_path, caplog):
    from sweeps import checkpoint

    path = tmp_path / checkpoint.LAST
    checkpoint.save(path, {"model": {"w": torch.ones(2)}}, binding="theirs")
    assert checkpoint.load(path, torch.device("cpu"), "theirs")["model"]["w"].sum() == 2
    with caplog.at_level(logging.WARNING, logger="sweeps.checkpoint"):
        assert checkpoint.load(path, torch.device("cpu"), "mine") is None
    assert "written by another run" in caplog.text
    with caplog.at_level(logging.WARNING, logger="sweeps.checkpoint"):
        assert checkpoint.load(tmp_path / "none.pt", torch.device("cpu"), "mine") is None
    assert "has no none.pt: training from the first epoch" in caplog.text
    assert not list(tmp_path.glob("*.tmp"))


def test_a_checkpoint_that_cannot_be_written_leaves_no_partial_file(tmp_path):
    from sweeps import checkpoint

    class Unpicklable:
        def __reduce__(self):
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        checkpoint.save(tmp_path / checkpoint.LAST, {"x": Unpicklable()}, binding=None)
    assert not list(tmp_path.iterdir())


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_unreadable_mlflow_store_is_named_and_left_as_it_is(project):
    db = project / "mlruns" / "mlflow.db"
    db.parent.mkdir()
    db.write_bytes(b"not a database, just some bytes\n" * 500)
    digest = _digest(db)
    proc = run_module("sweeps.train", FAST, project)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert f"the MLflow store {db} cannot be read" in last and "left as it is" in last and "paths.mlruns" in last
    assert _digest(db) == digest


def test_an_unreadable_study_database_is_named_and_left_as_it_is(project):
    db = project / "multirun" / "optuna.db"
    db.parent.mkdir()
    db.write_bytes(b"not a database either\n" * 500)
    digest = _digest(db)
    proc = run_module("sweeps.train", ["--multirun", "hydra/sweeper=sweeps_optuna", "hydra.sweeper.n_jobs=1", *FAST,
                                       "optim.lr=interval(0.001,0.01)"], project)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out, out[-3000:]
    assert f"The Optuna storage {db} (hydra.sweeper.storage) cannot be read" in out and "left as it is" in out
    assert _digest(db) == digest
    assert not mlflow_runs(project), "a refused sweep records nothing"


@pytest.mark.parametrize("keep,finished,left", [
    ("best", True, ["best.pt"]), ("best", False, []), ("all", True, ["best.pt", "last.pt"]),
    ("all", False, ["best.pt", "last.pt"]), ("none", True, []), ("none", False, []),
])
def test_checkpoint_retention(tmp_path, keep, finished, left):
    from sweeps import checkpoint

    for name in (checkpoint.BEST, checkpoint.LAST, "job.json"):
        (tmp_path / name).write_bytes(b"x" * 10)
    checkpoint.retain(tmp_path, keep, finished)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == left
    assert (tmp_path / "job.json").exists()
