"""A sweep SIGKILLed at an exact point of a trial's life, then the same command once more.

The kill comes from the test's own ``sitecustomize`` (a module Python imports at
start-up from PYTHONPATH), which wraps one Optuna, MLflow or sweeper call in the
sweep process and kills its whole process group right there, once. After one
re-run, both stores must be final: no RUNNING trial, no RUNNING run, exactly
``n_trials`` counted trials with every grid point complete once, and each
COMPLETE trial with exactly one FINISHED run holding the same value.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import TINY, mlflow_runs, run_module

SITECUSTOMIZE = textwrap.dedent('''
    import os, signal

    POINT, ONCE = os.environ.get("SWEEPS_TEST_KILL_AT"), os.environ.get("SWEEPS_TEST_KILL_ONCE")

    def kill():
        if os.path.exists(ONCE):
            return
        open(ONCE, "w").close()
        os.killpg(os.getpgrp(), signal.SIGKILL)

    def after(owner, name, when=lambda *a, **k: True):
        original = getattr(owner, name)
        def wrapped(*args, **kwargs):
            result = original(*args, **kwargs)
            if when(*args, **kwargs):
                kill()
            return result
        setattr(owner, name, wrapped)

    if POINT == "job-opened-its-run":  # the job's MLflow run exists; its trial does not know it yet
        import mlflow
        after(mlflow.MlflowClient, "create_run", lambda self, *a, **k: "sweeps.trial" in (k.get("tags") or {}))
    elif POINT == "popped-before-owner":  # a queued trial was made RUNNING; no owner is written yet
        import optuna
        original = optuna.study.Study._pop_waiting_trial_id
        def pop(self):
            trial_id = original(self)
            if trial_id is not None:
                kill()
            return trial_id
        optuna.study.Study._pop_waiting_trial_id = pop
    elif POINT == "owner-written":  # the trial exists with its owner, written with it; nothing launched yet
        import optuna
        after(optuna.storages.RDBStorage, "_create_new_trial",
              lambda self, study_id, template=None: template is not None and "owner" in template.user_attrs)
    elif POINT == "job-ended-before-tell":  # the job finished and recorded its run; the study was not told
        from sweeps_optuna import trial_runner
        original = trial_runner.TrialRunner.tell_result
        def tell_result(self, trial, ret):
            kill()
            return original(self, trial, ret)
        trial_runner.TrialRunner.tell_result = tell_result
''')

POINTS = ["job-opened-its-run", "popped-before-owner", "owner-written", "job-ended-before-tell"]
# A new trial gets its owner in the write that makes it, so the one ownerless window is a queued
# trial's: the sweep that queued it again (after the first kill) is killed as it takes it up.
BEFORE = {"popped-before-owner": "job-opened-its-run"}
LRS = (0.01, 0.02)


def sweep_args(name: str) -> list[str]:
    return ["--multirun", "hydra/sweeper=sweeps_optuna", "hydra/sweeper/sampler=grid", "hydra.sweeper.n_jobs=1",
            f"hydra.sweeper.study_name={name}", f"tracking.experiment={name}", "hydra.sweeper.heartbeat_interval=2",
            *[a for a in TINY if not a.startswith("trainer.epochs")], "trainer.epochs=1", "augment=norm",
            "tracking.log_model=false", "tracking.log_figures=false", f"optim.lr=choice({LRS[0]},{LRS[1]})"]


def killed_run(root: Path, args: list[str], point: str) -> subprocess.CompletedProcess:
    hook = root / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if k not in ("SWEEPS_OPTUNA_STORAGE", "MLFLOW_TRACKING_URI")}
    env.update(PYTHONPATH=os.pathsep.join([str(hook), env.get("PYTHONPATH", "")]), PYTHONUNBUFFERED="1",
               SWEEPS_TEST_KILL_AT=point, SWEEPS_TEST_KILL_ONCE=str(root / f"killed-{point}"))
    return subprocess.run([sys.executable, "-m", "sweeps.train", *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300, start_new_session=True)  # its own group: the kill spares pytest


def assert_final(root: Path, name: str) -> None:
    import optuna

    from sweeps_optuna.contract import is_counted

    trials = optuna.load_study(study_name=name, storage=f"sqlite:///{root / 'multirun' / 'optuna.db'}").trials
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")], [(t.number, t.state) for t in trials]
    done = [t for t in trials if is_counted(t)]
    assert sorted(t.params["optim.lr"] for t in done) == list(LRS) and all(t.state.name == "COMPLETE" for t in done)
    runs = mlflow_runs(root, name)
    assert not [r for r in runs if r.info.status in ("RUNNING", "SCHEDULED")], [(r.info.run_id, r.info.status)
                                                                                  for r in runs]
    for t in done:
        mine = [r for r in runs if r.data.tags.get("sweeps.trial") == str(t.number)]
        assert [r.info.status for r in mine] == ["FINISHED"], (t.number, [r.info.status for r in mine])
        assert mine[0].data.metrics["best_val_acc"] == pytest.approx(t.value)
    (parent,) = [r for r in runs if r.data.tags.get("sweeps.role") == "parent"]
    assert parent.info.status == "FINISHED"


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
def test_one_rerun_after_a_kill_leaves_every_record_final(tmp_path, point):
    name = point.replace("-", "_")
    args = sweep_args(name)
    for at in [BEFORE[point], point] if point in BEFORE else [point]:
        killed = killed_run(tmp_path, args, at)
        assert (tmp_path / f"killed-{at}").exists(), (killed.stdout + killed.stderr)[-3000:]
        assert killed.returncode == -9, (killed.stdout + killed.stderr)[-3000:]
    again = run_module("sweeps.train", args, tmp_path, timeout=300)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert "Traceback" not in again.stdout + again.stderr
    assert_final(tmp_path, name)
