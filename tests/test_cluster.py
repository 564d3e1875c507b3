"""Sweeps beyond one machine, with the real components on loopback.

A throwaway PostgreSQL server (initdb + pg_ctl) holds both the Optuna study and,
in a second database, the store of an MLflow tracking server started the way
`make server` starts it. Sweep processes run trials through submitit
(hydra/launcher=local, the same code path as hydra/launcher=slurm) and meet
only through those two servers, as sweeps on separate hosts would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY
from servers import MlflowServer, Postgres, pg_bindir

pytestmark = pytest.mark.slow

if pg_bindir() is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must have PostgreSQL (initdb, pg_ctl): .ci/run installs it from Debian's packages")
    pytest.skip("PostgreSQL is not installed (apt-get install postgresql)", allow_module_level=True)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A PostgreSQL server with an `optuna` and an `mlflow` database, and an MLflow server on the latter."""
    root = tmp_path_factory.mktemp("lab")
    pg = Postgres().start()
    server = None
    try:
        optuna_url = pg.create_database("optuna")
        server = MlflowServer(pg.create_database("mlflow"), root / "server-artifacts", root).start()
        yield {"pg": pg, "optuna_url": optuna_url, "tracking": server.base, "root": root}
    finally:
        if server is not None:
            server.stop()
        pg.stop()


def sweep_cmd(lab: dict, study: str, n_trials: int, sweep_dir: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "sweeps.train", "--multirun",
        "hydra/sweeper=sweeps_optuna", "hydra/launcher=local", "hydra/sweeper/pruner=median",
        f"hydra.sweeper.study_name={study}", f"hydra.sweeper.n_trials={n_trials}", "hydra.sweeper.n_jobs=1",
        "hydra.sweeper.heartbeat_interval=5", f"hydra.sweep.dir={sweep_dir}",
        f"tracking.uri={lab['tracking']}", f"tracking.experiment={study}", "tracking.log_model=false",
        *TINY, "optim.lr=tag(log, interval(0.001, 0.1))", *extra,
    ]


def start(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """A sweep process in a session of its own, so that killing it kills its submitit jobs too."""
    full = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    full.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(cmd, cwd=cwd, env=full, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 420) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 0, log.read_text()[-4000:]


def load_trials(url: str, study: str):
    import optuna

    return optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)


def counted(trials) -> list:
    from optuna.trial import TrialState

    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.FAIL and not t.user_attrs.get("interrupted") and not t.user_attrs.get("surplus"))]


def server_runs(lab: dict, experiment: str):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=lab["tracking"])
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} on the tracking server"
    return client, client.search_runs([exp.experiment_id], run_view_type=mlflow.entities.ViewType.ALL,
                                      max_results=1000)


def assert_no_password(lab: dict, client, runs, tmp: Path) -> None:
    """The database password appears in no param, tag or artifact of any run."""
    password = lab["pg"].password
    for run in runs:
        for key, value in {**run.data.params, **run.data.tags}.items():
            assert password not in value, f"run {run.info.run_id}: {key} = {value}"
        dst = tmp / "artifacts" / run.info.run_id
        dst.mkdir(parents=True)
        client.download_artifacts(run.info.run_id, "", str(dst))
        for f in dst.rglob("*"):
            if f.is_file():
                assert password.encode() not in f.read_bytes(), f"run {run.info.run_id}: artifact {f.relative_to(dst)}"


def test_processes_opening_an_empty_database_together_all_get_the_study_storage(lab, tmp_path):
    """Sweeps on several hosts that start at once all run Optuna's CREATE TABLEs on an empty
    database; the losers of that race must open the schema the winner made, not give up."""
    url = lab["pg"].create_database("race")
    go = tmp_path / "go"
    code = ("import os, sys, time\n"
            "from sweeps_optuna.storage import open_storage\n"
            f"while not os.path.exists({str(go)!r}): time.sleep(0.005)\n"
            "open_storage(sys.argv[1])\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(6)]
    time.sleep(4)  # every process has imported Optuna and waits for the signal
    go.touch()
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, "\n".join(o[-1500:] for o in outs if o)


def test_two_sweep_processes_share_one_postgres_study_and_mlflow_server(lab, tmp_path):
    """Two sweeps (one reads the URL from the env var, one was given it on the command line) run
    exactly n_trials trials of one study together, none twice; each trial is one run on the server."""
    from optuna.trial import TrialState

    study, n_trials, url = "shared", 3, lab["optuna_url"]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [
        start(sweep_cmd(lab, study, n_trials, "multirun/a"), tmp_path, {"SWEEPS_OPTUNA_STORAGE": url}, logs[0]),
        start(sweep_cmd(lab, study, n_trials, "multirun/b", f"hydra.sweeper.storage='{url}'"), tmp_path,
              {"SWEEPS_OPTUNA_STORAGE": ""}, logs[1]),
    ]
    for proc, log in zip(procs, logs):
        finish(proc, log)

    trials = load_trials(url, study)
    done = counted(trials)
    assert len(done) == n_trials and all(t.state == TrialState.COMPLETE for t in done), \
        [(t.number, t.state, t.user_attrs) for t in trials]
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    owners = {t.user_attrs["owner"]["pid"] for t in done}
    assert len(owners) == 2, "both processes must have run trials"
    # Each job reported its epochs to the study through the env-var URL (the pruner's input).
    assert all(len(t.intermediate_values) == 2 for t in done), [t.intermediate_values for t in done]

    client, runs = server_runs(lab, study)
    children = [r for r in runs if "sweeps.trial" in r.data.tags]
    numbers = sorted(int(r.data.tags["sweeps.trial"]) for r in children)
    assert numbers == sorted(t.number for t in done), numbers
    assert all(r.info.status == "FINISHED" for r in children)
    assert {r.data.tags.get("mlflow.parentRunId") for r in children} <= {r.info.run_id for r in runs}
    for t in done:  # the server holds each trial's metrics, as the study holds its value
        run = next(r for r in children if int(r.data.tags["sweeps.trial"]) == t.number)
        assert run.data.metrics["best_val_acc"] == pytest.approx(t.value)

    # No password in what was logged, nor in what the jobs saved of their config.
    assert_no_password(lab, client, runs, tmp_path)
    for saved in (tmp_path / "multirun").rglob("[0-9]*/.hydra/*.yaml"):
        if "overrides" in saved.name or "config" in saved.name:
            assert lab["pg"].password not in saved.read_text(), saved


def test_a_killed_sweep_process_loses_no_finished_trial(lab, tmp_path):
    """SIGKILL one of two sweep processes (and its running submitit job) mid-trial: the other
    process reaps the orphaned trial, re-queues it and completes the study; nothing finished is lost."""
    from optuna.trial import TrialState

    study, n_trials, url = "killed", 3, lab["optuna_url"]
    env = {"SWEEPS_OPTUNA_STORAGE": url}
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    # b trains longer (its own fixed overrides, so both must allow the study to differ from theirs),
    # so that it is surely mid-training when it is killed.
    changes = "hydra.sweeper.allow_study_changes=true"
    a = start(sweep_cmd(lab, study, n_trials, "multirun/a", changes), tmp_path, env, log_a)
    b = start(sweep_cmd(lab, study, n_trials, "multirun/b", "trainer.limit_train_batches=null", "trainer.epochs=20",
                        changes), tmp_path, env, log_b)
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=lab["tracking"])

    def training(t) -> bool:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        return run.info.status == "RUNNING" and "val_acc" in run.data.metrics  # an epoch done, more to come

    # Wait until a trial has finished and process b is in the middle of training one.
    deadline, victim = time.monotonic() + 240, None
    while time.monotonic() < deadline and victim is None:
        time.sleep(0.5)
        assert b.poll() is None, log_b.read_text()[-3000:]
        try:
            trials = load_trials(url, study)
        except KeyError:
            continue  # the study is not created yet
        b_pids = {t.user_attrs.get("owner", {}).get("pid") for t in trials} - {a.pid}
        finished = [t for t in trials if t.state == TrialState.COMPLETE]
        running_b = [t for t in trials if t.state == TrialState.RUNNING and t.user_attrs.get("owner", {}).get("pid") in b_pids
                     and "mlflow_run_id" in t.user_attrs]
        if finished and running_b and training(running_b[0]):
            victim = running_b[0]
    assert victim is not None, "never saw a finished trial and a running one of process b"
    before = {t.number: t.value for t in finished}
    os.killpg(b.pid, signal.SIGKILL)
    b.wait(timeout=30)
    finish(a, log_a)

    trials = {t.number: t for t in load_trials(url, study)}
    assert len(counted(trials.values())) == n_trials
    assert all(trials[n].state == TrialState.COMPLETE and trials[n].value == v for n, v in before.items())
    killed = trials[victim.number]
    assert killed.state == TrialState.FAIL and killed.user_attrs.get("interrupted") is True
    assert any(t.params == killed.params and t.state == TrialState.COMPLETE for t in trials.values()
               if t.number > killed.number), "the interrupted trial's params must run again"
    assert not [t for t in trials.values() if t.state == TrialState.RUNNING]

    client, runs = server_runs(lab, study)
    by_trial: dict[int, list] = {}
    for r in runs:
        if "sweeps.trial" in r.data.tags:
            by_trial.setdefault(int(r.data.tags["sweeps.trial"]), []).append(r)
    assert all(len(v) == 1 for v in by_trial.values()), {k: len(v) for k, v in by_trial.items()}
    assert by_trial[victim.number][0].info.status == "KILLED"
    for t in counted(trials.values()):
        assert by_trial[t.number][0].info.status == "FINISHED"
    assert_no_password(lab, client, runs, tmp_path)
