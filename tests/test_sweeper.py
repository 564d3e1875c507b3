"""The sweeps_optuna sweeper end to end: real `python -m sweeps.train --multirun` processes,
a real SQLite Optuna study and a real SQLite MLflow store, all under a tmp dir.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY as BASE_TINY

REPO = Path(__file__).resolve().parents[1]
SPHERE = REPO / "tests" / "apps" / "sphere" / "sphere.py"

# The shared tiny digits model, without augmentation or checkpoints.
TINY = [*BASE_TINY, "augment=norm", "tracking.log_model=false"]


def sweep_args(experiment: str, *extra: str) -> list[str]:
    return [
        "--multirun",
        "hydra/sweeper=sweeps_optuna",
        "hydra.sweeper.n_jobs=1",
        "hydra.sweeper.direction=maximize",
        f"hydra.sweeper.study_name={experiment}",
        f"tracking.experiment={experiment}",
        *TINY,
        *extra,
    ]


def _env() -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("SWEEPS_OPTUNA_WORKER", None)
    env.pop("SWEEPS_OPTUNA_STORAGE", None)  # the default storage must be the test's own
    return env


def train(cwd: Path, args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweeps.train", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=_env())


def start(cwd: Path, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sweeps.train", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_env())


def show(proc) -> str:
    out = proc.stdout + getattr(proc, "stderr", "") if isinstance(proc, subprocess.CompletedProcess) else ""
    return out[-6000:]


def study(root: Path, name: str):
    import optuna

    from sweeps_optuna.storage import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(f"sqlite:///{root / 'multirun' / 'optuna.db'}"))


def runs_client(root: Path):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")


def runs(root: Path, experiment: str):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], run_view_type=mlflow.entities.ViewType.ALL, max_results=1000)


def counted(trials) -> list:
    from sweeps_optuna.contract import is_counted

    return [t for t in trials if is_counted(t)]


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = predicate()
        except Exception:
            value = None
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sweep ended (rc {proc.returncode}) before {what}:\n{proc.stdout.read()[-4000:]}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def running_training(root: Path, name: str):
    """A RUNNING trial whose job has started training (it stored its MLflow run id)."""
    from optuna.trial import TrialState

    for t in study(root, name).get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("mlflow_run_id"):
            return t
    return None


def interrupt_mid_trial(root: Path, args: list[str], name: str, sig: int):
    """Start a sweep, send ``sig`` once a trial is training; (process, that trial, output)."""
    proc = start(root, args)
    try:
        victim = wait_for(lambda: running_training(root, name), 150, "a trial to start training", proc)
        # Full epochs (limit_train_batches=null) keep the trial training for seconds
        # even on an idle machine, so the signal lands mid-trial.
        time.sleep(0.3)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc, victim, out


# --------------------------------------------------------------------------- tests


def test_sweep_runs_n_trials_with_workers_under_one_parent(tmp_path: Path):
    """6 trials, two worker processes (no batch barrier), 6 child runs under one MLflow parent."""
    r = train(tmp_path, sweep_args("six", "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=0",
                                   "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=2",
                                   "optim.lr=interval(0.001,0.01)"))
    assert r.returncode == 0, show(r)
    trials = study(tmp_path, "six").trials
    assert len(trials) == 6 and all(t.state.name == "COMPLETE" for t in trials), trials
    assert all(t.user_attrs["n_params"] > 0 for t in trials)
    all_runs = runs(tmp_path, "six")
    parents = [x for x in all_runs if x.data.tags.get("sweeps.role") == "parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [x for x in all_runs if x.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == 6
    assert sorted(int(x.data.tags["sweeps.trial"]) for x in children) == list(range(6))
    assert {x.data.tags["sweeps.state"] for x in children} == {"COMPLETE"}
    assert {t.user_attrs["mlflow_run_id"] for t in trials} == {x.info.run_id for x in children}
    # the runs are named by what differs between the trials: short, unique, the searched value rounded
    by_trial = {int(x.data.tags["sweeps.trial"]): x for x in children}
    names = [by_trial[t.number].info.run_name for t in trials]
    assert len(set(names)) == 6 and all(len(n) <= 72 for n in names), names
    for t in trials:
        assert by_trial[t.number].info.run_name == f"lr={t.params['optim.lr']:.4g} #{t.number}", names
        assert "optim.lr=" in by_trial[t.number].data.tags["sweeps.overrides"]  # the report's full overrides
    # the closing line links to a saved view of this sweep in the MLflow UI: its runs, best first
    import json

    exp = runs_client(tmp_path).get_experiment_by_name("six")
    view = json.loads(exp.tags[f"mlflow.sharedViewState.{parents[0].info.run_id}"])
    state = json.loads(view["state"])
    assert state["searchFilter"] == f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'"
    assert state["orderByKey"] == "metrics.`best_val_acc`" and state["orderByAsc"] is False
    assert {"metrics.`best_val_acc`", "params.`optim.lr`"} <= set(state["selectedColumns"]), state
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert (f"/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning&viewStateShareKey="
            f"{parents[0].info.run_id}") in r.stdout, r.stdout[-2000:]
    # one output dir per trial number, and the results file with the best trial
    sweep_dir = next((tmp_path / "multirun").glob("*/*/optimization_results.yaml")).parent
    assert sorted(p.name for p in sweep_dir.iterdir() if p.name.isdigit()) == [str(i) for i in range(6)]
    import yaml

    res = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert res["counted_trials"] == 6 and "best_value" in res and res["best_config"]["dataset"]["name"] == "digits"
    assert "6/6 trials" in r.stdout


def test_over_budget_points_are_never_trained(tmp_path: Path):
    """Over budget.max_params: PRUNED+infeasible in Optuna, an INFEASIBLE MLflow run, no training.
    A config that cannot be built is FAIL, not a crash. An all-infeasible grid stops before launching."""
    args = sweep_args("budget", "hydra/sweeper/sampler=grid", "hydra.sweeper.n_trials=10",
                      "hydra.sweeper.max_failure_rate=0.5", "budget.max_params=20000",
                      "model.channels=choice([8,16],[64,128],[8,16,32])")
    r = train(tmp_path, args)
    assert r.returncode == 0, show(r)
    trials = {str(t.params["model.channels"]): t for t in study(tmp_path, "budget").trials}
    assert len(trials) == 3
    small, big, bad = trials["[8,16]"], trials["[64,128]"], trials["[8,16,32]"]
    assert small.state.name == "COMPLETE"
    assert big.state.name == "PRUNED" and big.user_attrs["infeasible"] is True
    assert big.user_attrs["n_params"] > 20000 and "budget" in big.user_attrs["reason"]
    # the samplers' constraint, written before launch for a refused trial and while the job runs for a trained one
    assert big.system_attrs["constraints:n_params_over_budget"] > 0
    assert small.system_attrs["constraints:n_params_over_budget"] < 0 and small.user_attrs["n_params"] < 20000
    assert bad.state.name == "FAIL" and bad.user_attrs["fail_reason"]
    by_trial = {int(x.data.tags["sweeps.trial"]): x for x in runs(tmp_path, "budget") if "sweeps.trial" in x.data.tags}
    refused = by_trial[big.number]
    assert refused.data.tags["sweeps.state"] == "INFEASIBLE" and refused.info.status == "FINISHED"
    assert int(refused.data.params["n_params"]) == big.user_attrs["n_params"]
    assert "best_val_acc" not in refused.data.metrics  # never trained
    assert by_trial[bad.number].info.status == "FAILED"
    assert by_trial[small.number].data.tags["sweeps.state"] == "COMPLETE"
    assert "1 infeasible" in r.stdout

    r = train(tmp_path, sweep_args("nothing_fits", "hydra/sweeper/sampler=grid", "budget.max_params=100",
                                   "model.channels=choice([8,16],[64,128])"))
    assert r.returncode == 2
    text = r.stdout + r.stderr
    assert "No point of the search space fits the parameter budget" in text and "Nothing was launched" in text
    assert not runs(tmp_path, "nothing_fits") or all(
        x.data.tags.get("sweeps.role") == "parent" for x in runs(tmp_path, "nothing_fits"))


def test_sphere_example_runs_with_only_the_sweeper_name_changed(tmp_path: Path):
    r = subprocess.run([sys.executable, str(SPHERE), "--multirun"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=180, env=_env())
    assert r.returncode == 0, show(r)
    trials = study(tmp_path, "sphere").trials
    assert len(trials) == 20 and all(t.state.name == "COMPLETE" for t in trials)
    assert all(t.value == t.params["x"] ** 2 + t.params["y"] ** 2 for t in trials)
    import yaml

    res = yaml.safe_load(next((tmp_path / "multirun").glob("*/*/optimization_results.yaml")).read_text())
    assert res["best_value"] == min(t.value for t in trials)
    # the same command again: the study is complete, nothing more runs
    r = subprocess.run([sys.executable, str(SPHERE), "--multirun"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=180, env=_env())
    assert r.returncode == 0 and len(study(tmp_path, "sphere").trials) == 20, show(r)


@pytest.fixture(scope="module")
def prune_and_nan(tmp_path_factory):
    """One grid sweep: two good learning rates, one useless (tiny), one that diverges (NaN) in epoch 1.

    The grid sampler's order is fixed by its seed (0: 0.1, 1e12, 1e-7, 0.05), so the useless
    rate runs after a completed good one and the median pruner can compare it."""
    root = tmp_path_factory.mktemp("prune")
    r = train(root, sweep_args("prune", "hydra/sweeper/sampler=grid", "hydra.sweeper.sampler.seed=0",
                               "hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=1",
                               "hydra.sweeper.max_failure_rate=0.5", "optim=sgd", "trainer.epochs=3",
                               "optim.lr=choice(0.05,1e-7,0.1,1e12)"))
    return root, r


def test_pruner_prunes_bad_learning_rates(prune_and_nan):
    root, r = prune_and_nan
    assert r.returncode == 0, show(r)
    trials = study(root, "prune").trials
    assert len(counted(trials)) == 4
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert any(t.params["optim.lr"] == 1e-7 for t in pruned), [(t.params, t.state) for t in trials]
    assert all(t.params["optim.lr"] != 0.1 for t in pruned)  # the first complete trial is the reference
    states = {x.data.tags.get("sweeps.trial"): x.data.tags.get("sweeps.state") for x in runs(root, "prune")}
    assert all(states[str(t.number)] == "PRUNED" for t in pruned)


def test_a_sweep_keeps_only_the_best_weights_of_finished_trials(prune_and_nan):
    """trainer.keep_checkpoints=best (the default): a COMPLETE trial keeps best.pt (the tested weights,
    about 4 bytes a parameter) and drops last.pt (optimizer state, for resume); a PRUNED or FAIL one
    keeps nothing. Counted in bytes: what the sweep leaves is the finished trials' best.pt and no more."""
    root, r = prune_and_nan
    assert r.returncode == 0, show(r)
    sweep_dir = next((root / "multirun").glob("*/*/optimization_results.yaml")).parent
    trials = study(root, "prune").trials
    kept = 0
    for t in counted(trials):
        files = sorted(p.name for p in (sweep_dir / str(t.number)).glob("*.pt"))
        if t.state.name == "COMPLETE":
            assert files == ["best.pt"], (t.number, files)
            size = (sweep_dir / str(t.number) / "best.pt").stat().st_size
            assert size < 4 * t.user_attrs["n_params"] + 64_000, (t.number, size)  # weights, no optimizer
            kept += size
        else:
            assert files == [], (t.number, t.state, files)
    assert kept and sum(p.stat().st_size for p in (root / "multirun").rglob("*.pt")) == kept


def test_diverging_trial_fails_and_the_sweep_goes_on(prune_and_nan):
    root, r = prune_and_nan
    assert r.returncode == 0, show(r)
    trials = study(root, "prune").trials
    nan = next(t for t in trials if t.params["optim.lr"] == 1e12)
    assert nan.state.name == "FAIL" and "diverged" in nan.user_attrs["fail_reason"].lower()
    assert any(t.state.name in ("COMPLETE", "PRUNED") and t.number > nan.number for t in trials)
    assert "1 failed" in r.stdout


@pytest.mark.slow
def test_sigkilled_sweep_resumes_to_exactly_n_trials(tmp_path: Path):
    args = sweep_args("killed", "hydra/sweeper/sampler=grid", "hydra.sweeper.n_trials=3", "trainer.epochs=6", "trainer.limit_train_batches=null",
                      "optim.lr=choice(0.001,0.002,0.003)")
    proc, victim, _ = interrupt_mid_trial(tmp_path, args, "killed", signal.SIGKILL)
    assert study(tmp_path, "killed").trials[victim.number].state.name == "RUNNING"
    r = train(tmp_path, args)
    assert r.returncode == 0, show(r)
    trials = study(tmp_path, "killed").trials
    done = counted(trials)
    assert len(done) == 3 and all(t.state.name == "COMPLETE" for t in done)
    lrs = [t.params["optim.lr"] for t in done]
    assert sorted(lrs) == [0.001, 0.002, 0.003]  # every point once, the killed one re-run
    killed = trials[victim.number]
    assert killed.state.name == "FAIL" and killed.user_attrs["interrupted"] is True
    orphan = next(x for x in runs(tmp_path, "killed") if x.info.run_id == victim.user_attrs["mlflow_run_id"])
    assert orphan.info.status == "KILLED"


def test_a_trial_whose_job_ended_before_its_process_died_is_recorded_not_rerun(tmp_path: Path):
    """The window between a job's end and the study's tell: the process dies there (state
    written as it stands then: trial RUNNING, owner gone, MLflow run FINISHED). The re-run
    takes the result from the MLflow run instead of training that point again."""
    import json
    import sqlite3

    args = sweep_args("ended", "hydra.sweeper.n_trials=1", "optim.lr=interval(0.001,0.01)")
    r = train(tmp_path, args)
    assert r.returncode == 0, show(r)
    (done,) = study(tmp_path, "ended").trials
    (run,) = [x for x in runs(tmp_path, "ended") if "sweeps.trial" in x.data.tags]
    assert done.state.name == "COMPLETE" and run.info.status == "FINISHED"

    gone = subprocess.Popen(["true"])
    gone.wait()
    db = sqlite3.connect(tmp_path / "multirun" / "optuna.db")
    with db:
        db.execute("UPDATE trials SET state='RUNNING', datetime_complete=NULL WHERE trial_id=?", (done._trial_id,))
        db.execute("DELETE FROM trial_values WHERE trial_id=?", (done._trial_id,))
        owner = json.loads(db.execute("SELECT value_json FROM trial_user_attributes WHERE trial_id=? AND "
                                      "key='owner'", (done._trial_id,)).fetchone()[0])
        db.execute("UPDATE trial_user_attributes SET value_json=? WHERE trial_id=? AND key='owner'",
                   (json.dumps({**owner, "pid": gone.pid}), done._trial_id))
    db.close()

    r = train(tmp_path, args)
    assert r.returncode == 0, show(r)
    assert "its job had ended: recorded COMPLETE" in r.stdout + r.stderr, show(r)
    (again,) = study(tmp_path, "ended").trials  # nothing new was asked or trained
    assert again.state.name == "COMPLETE" and again.value == pytest.approx(run.data.metrics["best_val_acc"])
    assert again.value == pytest.approx(done.value) and again.user_attrs["recovered"] is True
    assert [x.info.run_id for x in runs(tmp_path, "ended") if "sweeps.trial" in x.data.tags] == [run.info.run_id]


@pytest.mark.slow
def test_sigint_marks_the_trial_interrupted_and_rerun_resumes(tmp_path: Path):
    args = sweep_args("sigint", "hydra/sweeper/sampler=grid", "hydra.sweeper.n_trials=2", "trainer.epochs=6", "trainer.limit_train_batches=null",
                      "optim.lr=choice(0.001,0.002)")
    proc, victim, out = interrupt_mid_trial(tmp_path, args, "sigint", signal.SIGINT)
    assert proc.returncode == 130, out[-4000:]
    assert "Re-run the same command" in out
    trial = study(tmp_path, "sigint").trials[victim.number]
    assert trial.state.name == "FAIL" and trial.user_attrs["interrupted"] is True
    run = next(x for x in runs(tmp_path, "sigint") if x.info.run_id == victim.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED"
    r = train(tmp_path, args)
    assert r.returncode == 0, show(r)
    done = counted(study(tmp_path, "sigint").trials)
    assert len(done) == 2 and sorted(t.params["optim.lr"] for t in done) == [0.001, 0.002]


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_two_sweep_processes_share_one_study(tmp_path: Path, storage: str):
    """Also on Optuna's journal file storage, the no-server option on a shared file system."""
    journal = f"journal:///{tmp_path / 'shared-fs' / 'optuna.log'}"
    args = sweep_args("shared", "hydra/sweeper/sampler=random", "hydra.sweeper.n_trials=5",
                      "optim.lr=interval(0.001,0.01)", *([f"hydra.sweeper.storage='{journal}'"] if storage == "journal" else []))
    procs = [start(tmp_path, args + [f"hydra.sweeper.sampler.seed={i}"]) for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(o[-3000:] for o in outs)
    if storage == "journal":
        import optuna

        from sweeps_optuna.storage import open_storage

        assert not (tmp_path / "multirun" / "optuna.db").exists()
        trials = optuna.load_study(study_name="shared", storage=open_storage(journal)).trials
    else:
        trials = study(tmp_path, "shared").trials
    done = counted(trials)
    assert len(done) == 5 and all(t.state.name == "COMPLETE" for t in done)
    assert all(t.user_attrs.get("surplus") for t in trials if t not in done)
    owners = {t.user_attrs["owner"]["pid"] for t in done}
    assert len(owners) == 2  # both processes trained
    all_runs = runs(tmp_path, "shared")
    assert len([x for x in all_runs if x.data.tags.get("sweeps.role") == "parent"]) == 1
    assert len([x for x in all_runs if "sweeps.trial" in x.data.tags]) == 5
