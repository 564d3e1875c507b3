"""Interrupted and resumed trainings, with real signals sent to real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import mlflow
import pytest

from conftest import GOOD_LR, RECORDED, TINY, mlflow_runs, nothing_running, run_module, stores

# Enough batches per epoch that a signal lands inside a later epoch.
LONGER = [a for a in TINY if not a.startswith(("trainer.limit_train", "trainer.epochs"))] + ["trainer.epochs=4"]


def _start(args, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([sys.executable, "-m", "sweeps.train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(proc, text, timeout=240):
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if text in line:
            return
    proc.kill()
    raise AssertionError(f"never saw {text!r}:\n{''.join(seen)[-3000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", ["device", "dataloader"])
def test_sigterm_run_is_killed_then_resumes_to_the_same_result(project, pipeline):
    """SIGTERM is what SLURM sends on preemption; Ctrl-C takes the same path."""
    base = LONGER + [f"trainer.pipeline={pipeline}"]
    ref = run_module("sweeps.train", base + ["tracking.experiment=ref", f"hydra.run.dir={project}/ref"], project)
    assert ref.returncode == 0, ref.stderr[-3000:]
    (ref_run,) = mlflow_runs(project, "ref")

    run_dir = project / "interrupted"
    args = base + ["tracking.experiment=cut", f"hydra.run.dir={run_dir}"]
    proc = _start(args, project)
    _wait_for(proc, "epoch 2:")
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0
    assert "Traceback" not in out, out[-3000:]
    assert "trainer.resume=true" in out
    (cut,) = mlflow_runs(project, "cut")
    assert cut.info.status == "KILLED"
    assert cut.data.tags["sweeps.state"] == "INTERRUPTED"

    resumed = run_module("sweeps.train", args + ["trainer.resume=true"], project)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (done,) = mlflow_runs(project, "cut")
    assert done.info.run_id == cut.info.run_id, "the resumed training continues its own MLflow run"
    assert done.info.status == "FINISHED"
    assert "sweeps.reason" not in done.data.tags, "why it stopped last time no longer holds"
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    assert sorted({m.step for m in client.get_metric_history(done.info.run_id, "val_acc")}) == [1, 2, 3, 4]
    for metric in ("best_val_acc", "test_acc", "train_acc_at_best"):
        assert done.data.metrics[metric] == pytest.approx(ref_run.data.metrics[metric], abs=1e-9), metric


# Two places where Python mishandles a Ctrl-C on its own; the hook sends one there, once,
# just before training starts:
# * a finalizer, as the garbage collector runs it (seen with SQLAlchemy's and GitPython's):
#   Python prints "Exception ignored in ..." and drops the KeyboardInterrupt;
# * code run by exec() of a string (as dataclasses do when torch imports its modules lazily):
#   a KeyboardInterrupt passing out of it makes the interpreter end by SIGINT (exit -2) at
#   exit, even when the program caught it and asked for another status.
SIGINT_HOOK = textwrap.dedent('''
    import os, signal
    from sweeps import engine

    class Finalizer:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)  # its handler runs in here; Python ignores what it raises
            for _ in range(1000):
                pass

    original = engine.Training.__init__
    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if os.environ["SWEEPS_TEST_SIGINT_IN"] == "finalizer":
            Finalizer()  # dropped at once
        else:
            exec("import signal\\nsignal.raise_signal(signal.SIGINT)\\nfor _ in range(1000): pass")
    engine.Training.__init__ = init
''')


@pytest.mark.parametrize(("where", "mode"), [("finalizer", "run"), ("finalizer", "sweep"), ("exec", "sweep")])
def test_a_ctrl_c_where_python_drops_it_still_stops_the_run_with_130(project, mode, where):
    hook = project / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SIGINT_HOOK)
    env = {"PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]), "SWEEPS_TEST_SIGINT_IN": where}
    args = TINY + ["tracking.experiment=ctrl-c", "augment=norm", "tracking.log_figures=false"]
    if mode == "sweep":
        args = ["--multirun", "hydra/sweeper=sweeps_optuna", "hydra.sweeper.n_jobs=1", "hydra.sweeper.n_trials=2",
                "hydra.sweeper.study_name=ctrl-c", GOOD_LR, *args]
    r = run_module("sweeps.train", args, project, env=env)
    out = r.stdout + r.stderr
    assert ("Exception ignored" in out) == (where == "finalizer"), out[-3000:]  # the hook did its part
    assert r.returncode == 130, out[-3000:]
    (run,) = [x for x in mlflow_runs(project, "ctrl-c") if x.data.tags.get("sweeps.role") != "parent"]
    assert run.info.status == "KILLED" and run.data.tags["sweeps.state"] == "INTERRUPTED"
    assert "val_acc" not in run.data.metrics  # stopped before its first epoch ended
    if mode == "sweep":
        import optuna

        trial, *queued = optuna.load_study(study_name="ctrl-c", storage=f"sqlite:///{project / 'multirun' / 'optuna.db'}").trials
        assert trial.state.name == "FAIL" and trial.user_attrs["interrupted"] is True
        assert [t.state.name for t in queued] == ["WAITING"]  # its point, queued again for the re-run
        assert "Re-run the same command" in out


def test_diverging_run_fails_at_the_step(project):
    proc = run_module("sweeps.train", TINY + ["optim=sgd", "optim.lr=1e12", "tracking.experiment=div"], project)
    assert proc.returncode != 0
    (run,) = mlflow_runs(project, "div")
    assert run.info.status == "FAILED"
    assert "diverged at epoch 1 step" in run.data.tags["sweeps.reason"]


DISK_CASES = {
    "run-dir-under-a-file": (["hydra.run.dir={root}/a_file/run"],
                             ["the run's output directory {root}/a_file/run (hydra.run.dir) cannot be created: "
                              "{root}/a_file is a regular file", "point hydra.run.dir to a writable directory"]),
    "run-dir-in-proc": (["hydra.run.dir=/proc/sweeps-run"],
                        ["the run's output directory /proc/sweeps-run (hydra.run.dir) cannot be written: "
                         "creating a file in /proc fails", "point hydra.run.dir to a writable directory"]),
    "mlruns-under-a-file": (["paths.mlruns={root}/a_file/mlruns"],
                            ["the MLflow store {root}/a_file/mlruns (paths.mlruns) cannot be created",
                             "point paths.mlruns to a writable directory"]),
    "data-under-a-file": (["paths.data={root}/a_file/data"],
                          ["the data directory {root}/a_file/data (paths.data) cannot be created",
                           "point paths.data to a writable directory"]),
    "disk-full": (["paths.min_free_mb=100000000"],
                  ["the run's output directory", "is on a disk with only", "MB free ({root})",
                   "less than paths.min_free_mb=100000000", "free some space there"]),
}


@pytest.mark.parametrize("case", list(DISK_CASES))
def test_unwritable_dir_or_full_disk_stops_a_run_before_it_starts(recorded_project, case):
    """Exit 2 and one paragraph naming the directory, before Hydra creates its output dir; the
    stores (which hold an earlier sweep) are untouched. Root can write anywhere, so an unwritable
    place is one under a regular file or in /proc, and a full disk is a minimum above the free space."""
    root, before = recorded_project
    (root / "a_file").write_text("a regular file, not a directory\n")
    args, expected = ([a.format(root=root) for a in x] for x in DISK_CASES[case])
    proc = run_module("sweeps.train", TINY + args, root, timeout=120)
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), proc.stderr[-3000:]
    for fragment in expected:
        assert fragment in last, last
    assert not (root / "outputs").exists(), "the refused run created its output directory"
    assert stores(root) == before
    nothing_running(root)


def test_full_disk_in_a_sweep_job_fails_that_trial_before_it_trains(recorded_project):
    """The disk fills up during a sweep (here: the trial's own paths.min_free_mb is above the free
    space, the sweep's is not): the job stops before its MLflow run opens; the trial is FAIL and its
    run FAILED, both with the message; the earlier trial and run are untouched, nothing is RUNNING."""
    root, before = recorded_project
    proc = run_module("sweeps.train", RECORDED + ["hydra.sweeper.n_trials=2", GOOD_LR,
                                               "paths.min_free_mb=choice(100000000)"], root, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode in (0, 1), out[-3000:]  # 1: more failures than max_failure_rate allows
    assert "Traceback" not in out, out[-3000:]
    after = stores(root)
    ((_, old_trials),) = before["studies"].values()
    ((_, trials),) = after["studies"].values()
    assert trials[:1] == old_trials
    assert [t[1] for t in trials[1:]] == ["FAIL"], trials
    assert "is on a disk with only" in trials[1][4] and "paths.min_free_mb=100000000" in trials[1][4]
    new_runs = {k: v for k, v in after["runs"].items() if k not in before["runs"]}
    ((status, state, _, metrics),) = new_runs.values()
    assert (status, state) == ("FAILED", "FAIL") and "best_val_acc" not in metrics
    for run_id, (old_status, old_state, _, old_metrics) in before["runs"].items():
        assert after["runs"][run_id][:2] == (old_status, old_state)
        assert after["runs"][run_id][3] == old_metrics
    nothing_running(root)



# Two trials, the one that cannot fit first (the grid sampler's order for this seed; asserted below).
OOM_SWEEP = ["--multirun", "hydra/sweeper=sweeps_optuna", "hydra/sweeper/sampler=grid", "hydra.sweeper.sampler.seed=1",
             "hydra.sweeper.n_jobs=1", "hydra.sweeper.n_trials=2", "hydra.sweeper.max_failure_rate=1.0",
             "trainer.epochs=1", "trainer.progress=false", "trainer.limit_train_batches=1",
             "trainer.limit_eval_batches=1", "tracking.experiment=oom"]


def _assert_oom_then_normal(project, big: int, small: int, model: str):
    """Both stores: the big batch FAILed naming batch size and model, then the small one ran normally."""
    import optuna

    runs = {r.data.params["trainer.batch_size"]: r for r in mlflow_runs(project, "oom")
            if "trainer.batch_size" in r.data.params}
    assert runs[str(big)].info.status == "FAILED"
    reason = runs[str(big)].data.tags["sweeps.reason"]
    assert f"trainer.batch_size={big}" in reason and f"model={model}" in reason and "memory" in reason, reason
    assert runs[str(small)].info.status == "FINISHED"
    assert "test_acc" in runs[str(small)].data.metrics
    trials = optuna.load_study(study_name="train", storage=f"sqlite:///{project / 'multirun' / 'optuna.db'}").trials
    by_batch = {t.params["trainer.batch_size"]: t for t in trials}
    assert by_batch[big].number < by_batch[small].number, "the trial that ran out of memory must come first"
    assert by_batch[big].state == optuna.trial.TrialState.FAIL
    assert f"trainer.batch_size={big}" in by_batch[big].user_attrs["fail_reason"]
    assert by_batch[small].state == optuna.trial.TrialState.COMPLETE
    assert by_batch[small].value == runs[str(small)].data.metrics["best_val_acc"]
    nothing_running(project)


# The process may map this much memory; 20,000 CIFAR-size images through the stem alone need more.
CPU_CAP_MB = 6000
FAKE_20K = ["dataset=fake", "dataset.train_size=25000", "dataset.test_size=1000"]
TINY_MODEL = [a for a in TINY if a.startswith("model.")]


def test_cpu_out_of_memory_fails_the_trial_and_the_next_one_runs(project):
    """A real allocation failure (the process's memory capped): FAIL with batch size and model; the sweep goes on."""
    args = [*OOM_SWEEP, *FAKE_20K, *TINY_MODEL, "trainer.batch_size=choice(20000,64)"]
    proc = run_module("sweeps.train", args, project, timeout=300, address_space_mb=CPU_CAP_MB)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_oom_then_normal(project, 20000, 64, "resnet18_trunc")


def test_out_of_memory_in_a_single_run_is_one_paragraph(project):
    args = [*FAKE_20K, *TINY_MODEL, "trainer.batch_size=20000", "trainer.epochs=1", "trainer.progress=false",
            "trainer.limit_train_batches=1", "trainer.limit_eval_batches=1"]
    proc = run_module("sweeps.train", args, project, timeout=300, address_space_mb=CPU_CAP_MB)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "error: out of CPU memory training model=resnet18_trunc" in proc.stderr
    assert "lower trainer.batch_size" in proc.stderr
    (run,) = mlflow_runs(project)
    assert run.info.status == "FAILED" and "trainer.batch_size=20000" in run.data.tags["sweeps.reason"]


@pytest.mark.gpu
def test_gpu_out_of_memory_fails_the_trial_and_frees_memory(project):
    """A batch that cannot fit on the GPU: the trial FAILs with the batch size named; the next one runs."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    args = [*OOM_SWEEP, "dataset=fake", "dataset.train_size=70000", "trainer.eval_batch_size=512",
            "trainer.precision=fp32", "model=resnet18_trunc", "trainer.batch_size=choice(60000,64)"]
    proc = run_module("sweeps.train", args, project, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_oom_then_normal(project, 60000, 64, "resnet18_trunc")
