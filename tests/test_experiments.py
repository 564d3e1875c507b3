"""Each seed's recipe (conf/experiment/) trains for one epoch on digits, for real."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import mlflow_runs, run_module
from sweeps.paths import CONF_DIR

EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))
SHORT = ["dataset=digits", "trainer.epochs=1", "trainer.batch_size=16", "trainer.eval_batch_size=64",
         "trainer.limit_train_batches=2", "trainer.limit_eval_batches=1", "trainer.progress=false"]
# Offline stand-ins where a recipe needs the network or an ImageNet-sized input.
EXTRA = {"seed004_finetune": ["model.pretrained=false", "model.upsample=64"]}


@pytest.mark.slow
def test_every_experiment_trains_one_epoch(project):
    """All recipes in one ``--multirun`` (Hydra's basic sweeper, each a job of the real entrypoint in
    one process: imports and the dataset cache once), then those that need offline stand-ins."""
    plain = [n for n in EXPERIMENTS if n not in EXTRA]
    proc = run_module("sweeps.train", ["--multirun", f"experiment={','.join(plain)}", *SHORT], project, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    for name, extra in EXTRA.items():
        proc = run_module("sweeps.train", [f"experiment={name}", *SHORT, *extra], project)
        assert proc.returncode == 0, (name, proc.stderr[-3000:])
    for name in EXPERIMENTS:
        (run,) = mlflow_runs(project, name)
        assert run.info.status == "FINISHED", name
        assert run.data.params["dataset.name"] == "digits", name
        assert run.data.metrics["epochs_run"] == 1, name


def test_every_seed_has_a_recipe():
    for prefix in ("seed000", "seed001", "seed002", "seed003", "seed004"):
        assert any(e.startswith(prefix) for e in EXPERIMENTS), prefix
