"""Bad sweep input ends before any trial runs, with one paragraph and exit status 2."""

from __future__ import annotations

import pytest

from conftest import TINY, mlflow_runs, run_module

SWEEP = ["--multirun", "hydra/sweeper=sweeps_optuna", "hydra.sweeper.n_trials=1", *TINY]
CASES = [
    (["optim.lr=interval(0.1,0.001)"], ["search space cannot be built", "low=0.1, high=0.001", "low < high"]),
    (["optim.lr=interval(0.001,0.1)", "hydra.sweeper.storage=postgresql://nobody@127.0.0.1:1/x"],
     ["hydra.sweeper.storage=postgresql://nobody@127.0.0.1:1/x cannot be opened", "hydra.sweeper.storage=null"]),
    (["optim.lr=interval(0.001,0.1)", "tracking.uri=http://127.0.0.1:9"],
     ["tracking.uri=http://127.0.0.1:9 cannot be reached", "tracking.uri=null"]),
]


@pytest.mark.parametrize("args,expected", CASES, ids=["inverted-interval", "storage", "tracking-uri"])
def test_sweep_input_errors(project, args, expected):
    proc = run_module("sweeps.train", SWEEP + args, project, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    for fragment in expected:
        assert fragment in out, out[-3000:]
    assert not mlflow_runs(project) if (project / "mlruns" / "mlflow.db").exists() else True


def test_unreachable_tracking_server_fails_fast(project):
    proc = run_module("sweeps.train", [*TINY, "tracking.uri=http://127.0.0.1:9"], project, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "tracking.uri=http://127.0.0.1:9 cannot be reached" in proc.stderr.strip().splitlines()[-1]
