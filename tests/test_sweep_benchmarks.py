"""benchmarks/sweep_overhead.py and benchmarks/pruning.py run tiny on the CPU and print parseable figures."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str, cwd: Path) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("SWEEPS_OPTUNA_STORAGE", "MLFLOW_TRACKING_URI")}
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return [(line.split(" ", 1)[0], json.loads(line.split(" ", 1)[1])) for line in proc.stdout.splitlines()
            if line.startswith(("overhead {", "phase {", "pruning {", "first_step {", "step_gap {"))]


def test_sweep_overhead_quick(tmp_path):
    lines = _run("sweep_overhead.py", "--quick", cwd=tmp_path)
    rows = {r["contender"]: r for kind, r in lines if kind == "overhead"}
    assert set(rows) == {"ours, SQLite", "ours, journal", "Hydra basic sweeper", "plain Optuna loop, SQLite"}, rows
    for name, r in rows.items():
        assert r["trials"] == 3 and r["wall_s"] > 0 and r["cpu_ms_per_trial"] > 0, (name, r)
        assert math.isfinite(r["ms_between"]) and r["ms_between"] >= 0, (name, r)
    phases = [r for kind, r in lines if kind == "phase"]
    assert len(phases) == 3 and all(math.isfinite(p["median_s"]) for p in phases), phases
    assert phases[2]["median_s"] > 0  # the timed run trains
    (gap,) = [r for kind, r in lines if kind == "step_gap"]
    assert gap["n"] == 1 and 0 < gap["median_s"] < phases[0]["median_s"] + phases[1]["median_s"] + phases[2]["median_s"]


def test_pruning_quick(tmp_path):
    lines = _run("pruning.py", "--quick", cwd=tmp_path)
    runs = [r for kind, r in lines if kind == "pruning" and "pruner" in r]
    assert [(r["pruner"], r["seed"]) for r in runs] == [("none", 0), ("median", 0)], runs
    for r in runs:
        assert r["epochs"] >= 2 and 0 <= r["best"] <= 1 and r["wall_s"] > 0, r  # 2 trials, each >= 1 epoch
    none = runs[0]
    assert none["epochs"] == 4 and none["pruned"] == 0  # no pruner: every trial trains its 2 epochs
    verdict = [r for kind, r in lines if kind == "pruning" and "recommended" in r]
    assert verdict and verdict[0]["tolerance_pp"] == 0.5
    assert set(verdict[0]["on_every_seed"]) <= set(verdict[0]["recommended"]) <= {"median"}  # within on every seed: within on the mean


def test_first_step_once(tmp_path):
    lines = _run("first_step.py", "--repeats", "1", cwd=tmp_path)
    cases = {r["case"]: r for kind, r in lines if kind == "first_step"}
    assert set(cases) == {"tracking", "no tracking", "imports only"}, cases
    assert all(len(r["runs"]) == 1 and r["median_s"] > 0 for r in cases.values()), cases
    for case in ("tracking", "no tracking"):  # the first step comes before the first epoch ends
        assert 0 < cases[case]["first_step_median_s"] < cases[case]["median_s"], cases
