"""Trials launched through submitit (hydra/launcher=local and slurm) report to the
sweeper as local ones do.

`hydra/launcher=slurm` goes as far as this machine can without SLURM: the real
sweep submits through submitit to an `sbatch` on PATH that keeps the script it
was given and refuses the job, as a cluster that is down would."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
from conftest import TINY, mlflow_runs, run_module

FAKE_SBATCH = """#!/bin/sh
# Keep the batch script (the last argument), then refuse like a cluster that is down.
for last; do :; done
cp "$last" "$SBATCH_SCRIPT_COPY"
echo "sbatch: error: Batch job submission failed: Unable to contact slurm controller" >&2
exit 1
"""


def test_slurm_launcher_writes_the_batch_script_and_a_refused_submission_fails_the_trial(project: Path):
    bindir = project / "bin"
    bindir.mkdir()
    (bindir / "sbatch").write_text(FAKE_SBATCH)
    (bindir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for it before submitting
    for tool in ("sbatch", "srun"):
        (bindir / tool).chmod(0o755)
    script = project / "submitted.sh"
    env = {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "SBATCH_PARTITION": "gpu-short",
           "SBATCH_SCRIPT_COPY": str(script), "SWEEPS_OPTUNA_STORAGE": ""}
    res = run_module("sweeps.train", [
        "--multirun", "hydra/sweeper=sweeps_optuna", "hydra/launcher=slurm", "hydra.sweeper.n_trials=1",
        "hydra.sweeper.n_jobs=1", "hydra.sweeper.study_name=slurm", "hydra.sweep.dir=multirun/slurm",
        "tracking.experiment=slurm", *TINY, "optim.lr=interval(0.001, 0.1)"], cwd=project, env=env)

    # The script submitit wrote from conf/hydra/launcher/slurm.yaml.
    text = script.read_text()
    for flag in ("#SBATCH --gpus-per-node=1", "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --mem=32GB", "#SBATCH --time=240", "#SBATCH --partition=gpu-short",
                 "#SBATCH --requeue", "#SBATCH --signal=USR2@120"):
        assert flag in text, f"{flag} missing from:\n{text}"

    # The refused submission is that trial's failure, recorded in both stores; the sweep stops with status 1.
    assert res.returncode == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    trials = optuna.load_study(study_name="slurm",
                               storage=f"sqlite:///{project / 'multirun' / 'optuna.db'}").get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL]
    assert "Unable to contact slurm controller" in trials[0].user_attrs["fail_reason"]
    runs = [r for r in mlflow_runs(project, "slurm") if r.data.tags.get("sweeps.trial") == "0"]
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert "Unable to contact slurm controller" in runs[0].data.tags["sweeps.reason"]


def test_a_trial_run_by_submitit_local_is_pruned_as_a_local_one(project: Path):
    """The job, a separate process, reports each epoch to the study and raises TrialPruned;
    the sweeper gets it back through submitit's pickled result."""
    res = run_module("sweeps.train", [
        "--multirun", "hydra/sweeper=sweeps_optuna", "hydra/launcher=local", "hydra/sweeper/pruner=threshold",
        "hydra.sweeper.pruner.lower=1.01", "hydra.sweeper.n_trials=1", "hydra.sweeper.n_jobs=1",
        "hydra.sweeper.study_name=pruned", "hydra.sweep.dir=multirun/pruned", "tracking.experiment=pruned",
        "tracking.log_model=false", *TINY, "optim.lr=interval(0.001, 0.1)"], cwd=project,
        env={"SWEEPS_OPTUNA_STORAGE": ""})
    assert res.returncode == 0, res.stderr[-3000:]
    (trial,) = optuna.load_study(study_name="pruned",
                                 storage=f"sqlite:///{project / 'multirun' / 'optuna.db'}").get_trials()
    assert trial.state == optuna.trial.TrialState.PRUNED, trial.user_attrs
    assert list(trial.intermediate_values) == [1] and "pruned at epoch 1" in trial.user_attrs["reason"]
    (run,) = [r for r in mlflow_runs(project, "pruned") if r.data.tags.get("sweeps.trial") == "0"]
    assert run.info.status == "FINISHED" and run.data.tags["sweeps.state"] == "PRUNED"
    assert (project / "multirun" / "pruned" / ".submitit").is_dir()  # it did go through submitit
