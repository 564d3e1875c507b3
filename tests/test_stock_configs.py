"""Configs written for the stock hydra-optuna-sweeper run unchanged, and no sampler error leaves a trial RUNNING.

The stock plugin's own suite (``tests/stock_optuna``) covers its examples; here:
lightning-hydra-template's ``hparams_search/mnist_optuna.yaml`` (its parameter
names mapped to ours, nothing else changed: ``override /hydra/sweeper: optuna``,
the stock ``_target_`` pinned, ``hydra.mode: MULTIRUN``) through
``python -m sweeps.train --config-dir``; the samplers the stock plugin offers
(``cmaes`` must work, ``motpe`` is named as removed); a sampler that raises;
and ``make dashboard`` serving the study database.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest

from conftest import TINY, mlflow_runs, nothing_running, run_module
from servers import HOST, free_port, stop_group

REPO = Path(__file__).resolve().parents[1]
SPHERE = Path(__file__).resolve().parent / "stock_optuna" / "example"

# lightning-hydra-template, configs/hparams_search/mnist_optuna.yaml (MIT), as it is but for the
# names under params: model.optimizer.lr -> optim.lr, datamodule.batch_size -> trainer.batch_size,
# model.net.lin{1,2,3}_size -> our model's stem and head widths; optimized_metric -> objective.
LHT_MNIST_OPTUNA = """\
# @package _global_

defaults:
  - override /hydra/sweeper: optuna

objective: best_val_acc

hydra:
  mode: "MULTIRUN"

  sweeper:
    _target_: hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper
    storage: null
    study_name: null
    n_jobs: 1
    direction: maximize
    n_trials: 20
    sampler:
      _target_: optuna.samplers.TPESampler
      seed: 1234
      n_startup_trials: 10
    params:
      optim.lr: interval(0.0001, 0.1)
      trainer.batch_size: choice(32, 64)
      model.stem_channels: choice(4, 8)
      model.head: choice(16, 32)
"""


def test_lightning_hydra_template_mnist_optuna_runs_unchanged(project):
    conf = project / "lht_configs"
    (conf / "hparams_search").mkdir(parents=True)
    (conf / "hparams_search" / "mnist_optuna.yaml").write_text(LHT_MNIST_OPTUNA)
    tiny = [a for a in TINY if not a.startswith(("trainer.batch_size=", "model.stem_channels=", "model.head="))]
    args = ["--config-dir", str(conf), "hparams_search=mnist_optuna", *tiny, "trainer.epochs=1",
            "hydra.sweeper.n_trials=2", "tracking.log_model=false", "tracking.log_figures=false"]
    proc = run_module("sweeps.train", args, project, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "[sweep] study 'mnist_optuna'" in out and "sampler TPESampler" in out, out[-3000:]
    study = optuna.load_study(study_name="mnist_optuna", storage=f"sqlite:///{project / 'multirun' / 'optuna.db'}")
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"], trials
    assert all(set(t.params) == {"optim.lr", "trainer.batch_size", "model.stem_channels", "model.head"}
               for t in trials), [t.params for t in trials]
    assert all(0.0001 <= t.params["optim.lr"] <= 0.1 for t in trials)
    finished = {r.data.tags.get("sweeps.trial"): r for r in mlflow_runs(project) if r.info.status == "FINISHED"}
    for t in trials:
        run = finished[str(t.number)]
        assert run.data.metrics["best_val_acc"] == pytest.approx(t.value), (t.number, run.data.metrics)
    nothing_running(project)


def _sphere(args: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SWEEPS_OPTUNA_STORAGE"}
    return subprocess.run([sys.executable, str(cwd / "sphere.py"), "--multirun", "hydra.sweep.dir=sweep",
                           "hydra.job.chdir=False", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**env, "PYTHONPATH": f"{cwd}{os.pathsep}{env.get('PYTHONPATH', '')}"})


@pytest.fixture
def sphere_app(tmp_path: Path) -> Path:
    """The stock plugin's example app, in a folder of its own (its study goes to multirun/optuna.db there)."""
    app = tmp_path / "app"
    shutil.copytree(SPHERE, app)
    return app


def _trials(app: Path, name: str = "sphere") -> list:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{app / 'multirun' / 'optuna.db'}").get_trials()


def test_cmaes_sampler_runs(sphere_app):
    proc = _sphere(["hydra/sweeper/sampler=cmaes", "hydra.sweeper.sampler.seed=1", "hydra.sweeper.n_trials=4"],
                   sphere_app)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    trials = _trials(sphere_app)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4, [(t.state, t.user_attrs) for t in trials]
    assert len({t.params["x"] for t in trials}) > 1  # CMA-ES sampled, not one fixed point


def test_motpe_is_named_as_removed_with_its_replacement(sphere_app):
    proc = _sphere(["hydra/sweeper/sampler=motpe", "hydra.sweeper.n_trials=2"], sphere_app)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    for fragment in ("hydra/sweeper/sampler=motpe", "no longer exists", "hydra/sweeper/sampler=tpe",
                     "override /hydra/sweeper/sampler: tpe"):
        assert fragment in out, out[-3000:]
    assert not (sphere_app / "multirun" / "optuna.db").exists() or not optuna.get_all_study_summaries(
        f"sqlite:///{sphere_app / 'multirun' / 'optuna.db'}")


BROKEN_SAMPLER = '''
import optuna


class BrokenSampler(optuna.samplers.RandomSampler):
    """Raises inside Optuna's ask, as a sampler with a missing package or a bug does."""

    def sample_independent(self, study, trial, param_name, param_distribution):
        raise RuntimeError("boom in the sampler")
'''


def test_a_sampler_that_raises_fails_its_trial_with_the_reason(sphere_app):
    (sphere_app / "broken.py").write_text(BROKEN_SAMPLER)
    proc = _sphere(["hydra/sweeper/sampler=random", "hydra.sweeper.sampler._target_=broken.BrokenSampler",
                    "hydra.sweeper.n_trials=3", "hydra.sweeper.max_failure_rate=0.5"], sphere_app)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    trials = _trials(sphere_app)
    assert trials and all(t.state.name == "FAIL" for t in trials), [(t.number, t.state) for t in trials]
    assert len(trials) == 2  # one more failure than max_failure_rate allows, then the sweep stops
    for t in trials:
        assert t.user_attrs["fail_reason"] == "the sampler BrokenSampler failed: RuntimeError: boom in the sampler"
    assert "Error: trial 1 failed: the sampler BrokenSampler failed" in proc.stderr, proc.stderr[-2000:]


def test_make_dashboard_serves_the_study_database(tmp_path):
    db = tmp_path / "optuna.db"
    study = optuna.create_study(study_name="dashboard-check", storage=f"sqlite:///{db}")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    port = free_port()
    proc = subprocess.Popen(["make", "-s", "-C", str(REPO), "dashboard", f"DB={db}", f"DASHBOARD_PORT={port}",
                             f"BIN={Path(sys.executable).parent}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, answer = time.monotonic() + 60, None
        while time.monotonic() < deadline and answer is None:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            try:
                with urllib.request.urlopen(f"http://{HOST}:{port}/api/studies", timeout=2) as resp:
                    answer = json.loads(resp.read())
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        assert answer is not None, "optuna-dashboard did not answer within 60 s"
        studies = {s["study_name"]: s for s in answer["study_summaries"]}
        assert "dashboard-check" in studies, answer
    finally:
        stop_group(proc)


def test_make_dashboard_without_a_database_says_what_to_do(tmp_path):
    proc = subprocess.run(["make", "-s", "-C", str(REPO), "dashboard", f"DB={tmp_path / 'none.db'}",
                           f"BIN={Path(sys.executable).parent}"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert f"no study database at {tmp_path / 'none.db'}: run a sweep first (make demo)" in proc.stderr
