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
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_trains_one_epoch(project, name):
    proc = run_module("sweeps.train", [f"experiment={name}", *SHORT, *EXTRA.get(name, [])], project)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = mlflow_runs(project, name)
    assert run.info.status == "FINISHED"
    assert run.data.params["dataset.name"] == "digits"
    assert run.data.metrics["epochs_run"] == 1


def test_every_seed_has_a_recipe():
    for prefix in ("seed000", "seed001", "seed002", "seed003", "seed004"):
        assert any(e.startswith(prefix) for e in EXPERIMENTS), prefix
