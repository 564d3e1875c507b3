"""How long a single ``python -m sweeps.train`` takes to its first step and its first epoch, with MLflow and without.

    python benchmarks/first_step.py                 # 3 repeats each, interleaved
    python benchmarks/first_step.py --repeats 1     # the suite's tiny run

A run opens its MLflow record in a background thread once its first step is
done, so recording should cost the first step nothing: the seconds from the
process's start to its first step (its first backward, timed from outside by
``step_clock``'s hook) with ``tracking.enabled=true`` against ``false`` say
what it still costs, and ``imports only`` (a process that only imports what a
run needs before its first step: torch, Hydra, the trainer) says what the
imports alone take. The first epoch's end is timed too: its line is logged
once its metrics are in MLflow (a kill after the line never loses them), so
with MLflow it marks the first epoch recorded. Each run is a fresh process in
a fresh folder whose MLflow store exists already (a project's usual state).
Lines for machines start with ``first_step``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from step_clock import clocked_env, steps

TINY = ["dataset=digits", "model.channels=[8,16]", "model.blocks=[1,1]", "model.stem_channels=8", "model.pool=4",
        "model.head=[]", "trainer.batch_size=64", "trainer.epochs=1", "trainer.limit_train_batches=3",
        "trainer.limit_eval_batches=2", "trainer.progress=false", "tracking.log_figures=false",
        "tracking.log_model=false"]
IMPORTS = "import sweeps.run"  # what a run needs before its first step (MLflow: in the background)
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[sweeps\.train\]\[INFO\] - epoch 1:", re.M)


def to_first_epoch(cwd: Path, tracking: bool, env: dict) -> tuple[float, float]:
    """Seconds from the process's start to its first step, and to its first epoch's log line."""
    env, clock = clocked_env(env, cwd / "clock")
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "sweeps.train", *TINY, f"tracking.enabled={str(tracking).lower()}"],
                          cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    found = STAMP.search(proc.stdout)
    if proc.returncode != 0 or not found or not steps(clock):
        raise RuntimeError(f"tracking={tracking}: exit {proc.returncode}\n{(proc.stdout + proc.stderr)[-2000:]}")
    epoch = datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() - start
    return steps(clock)[0][0] - start, epoch


def imports(env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", IMPORTS], check=True, env=env, timeout=300)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    times: dict[str, list[float]] = {"tracking": [], "no tracking": [], "imports only": []}
    first: dict[str, list[float]] = {"tracking": [], "no tracking": []}
    with tempfile.TemporaryDirectory(prefix="first_step_") as tmp:
        cwd = Path(tmp)
        to_first_epoch(cwd, True, env)  # the store and the dataset cache exist from here on
        for _ in range(args.repeats):  # interleaved: a change in the machine's load hits all three
            for case, tracking in (("tracking", True), ("no tracking", False)):
                step, epoch = to_first_epoch(cwd, tracking, env)
                first[case].append(step)
                times[case].append(epoch)
            times["imports only"].append(imports(env))
    print(f"seconds from process start to the first step and to the first epoch's end, medians of {args.repeats} "
          f"({os.cpu_count()} CPUs)")
    for name, values in times.items():
        row = {"case": name, "median_s": round(statistics.median(values), 2), "runs": [round(v, 2) for v in values]}
        if name in first:
            row.update(first_step_median_s=round(statistics.median(first[name]), 2),
                       first_step_runs=[round(v, 2) for v in first[name]])
        print(f"first_step {json.dumps(row)}")
    median = {k: statistics.median(v) for k, v in first.items()}
    print(f"MLflow's cost to the first step: {median['tracking'] - median['no tracking']:+.2f} s, to the first epoch "
          f"recorded: {statistics.median(times['tracking']) - statistics.median(times['no tracking']):+.2f} s; "
          f"the imports alone: {statistics.median(times['imports only']):.2f} s")


if __name__ == "__main__":
    main()
