"""What a sweep costs besides its trials: ours on each storage against Hydra's basic sweeper,
a plain Optuna loop and (given its venv) the stock hydra-optuna-sweeper.

    python benchmarks/sweep_overhead.py                       # 30 trials, medians of 3
    python benchmarks/sweep_overhead.py --trials 30 --repeats 3 --stock-python /path/venv/bin/python
    python benchmarks/sweep_overhead.py --quick               # the suite's tiny run

Every contender runs the same trivial task (the stock docs' sphere function:
the trial itself costs nothing) as its own process, interleaved repeat by
repeat so that a change in the machine's load hits all of them alike. For each:
total wall seconds, CPU milliseconds per trial (the process's user + system
time over the trials), and milliseconds between trials (from the end of one
task call to the start of the next, written by the task itself). The stock
plugin pins optuna<3, so it needs a venv of its own (``--stock-python``):
``python -m venv /tmp/stock && /tmp/stock/bin/pip install hydra-optuna-sweeper==1.3.0``.

Then ``--train`` times a real ``python -m sweeps.train`` sweep of the tiny
digits model (in-process trials) from its log: per trial, the sweeper's time
between trials (the trial's config is composed there, once, for its budget
check and its launch), the job's time outside training and testing, and training;
and, timed by ``step_clock``'s hook on every backward, the seconds from one
trial's last training step to the next trial's first (testing, records, the
sweeper's bookkeeping, the next job's set-up and model), the figure that
matters when a trial takes seconds.

Machine-readable lines start with ``overhead`` and ``phase``.
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

REPO = Path(__file__).resolve().parents[1]
TIMES_ENV = "SWEEP_OVERHEAD_TIMES"

SPHERE = '''
import json, os, time

import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path=None)
def sphere(cfg: DictConfig) -> float:
    start = time.time()
    value = float(cfg.x) ** 2 + float(cfg.y) ** 2
    with open(os.environ["{env}"], "a") as out:
        out.write(json.dumps([start, time.time()]) + "\\n")
    return value


if __name__ == "__main__":
    sphere()
'''.replace("{env}", TIMES_ENV)

PLAIN_OPTUNA = '''
import json, os, sys, time

import optuna

optuna.logging.set_verbosity(optuna.logging.WARNING)
n, storage = int(sys.argv[1]), sys.argv[2]


def sphere(trial):
    x, y = trial.suggest_float("x", -5.5, 5.5, step=0.5), trial.suggest_categorical("y", [-5, 0, 5])
    start = time.time()
    value = x ** 2 + y ** 2
    with open(os.environ["{env}"], "a") as out:
        out.write(json.dumps([start, time.time()]) + "\\n")
    return value


optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0)).optimize(sphere, n_trials=n)
'''.replace("{env}", TIMES_ENV)

SPACE = ["+x=range(-5.5,5.5,step=0.5)", "+y=choice(-5,0,5)"]  # the stock docs' space; no config file


def contenders(n: int, stock_python: str | None) -> dict[str, callable]:
    """name -> fn(work dir) giving the command line."""
    ours = ["--multirun", "hydra/sweeper=sweeps_optuna", "hydra/sweeper/sampler=random",
            "hydra.sweeper.sampler.seed=0", f"hydra.sweeper.n_trials={n}", "hydra.sweeper.n_jobs=1"]
    out = {
        "ours, SQLite": lambda d: [sys.executable, str(d / "sphere.py"), *ours,
                                   f"hydra.sweeper.storage=sqlite:///{d}/optuna.db", *_swept(), f"hydra.sweep.dir={d}/s"],
        "ours, journal": lambda d: [sys.executable, str(d / "sphere.py"), *ours,
                                    f"hydra.sweeper.storage=journal:///{d}/optuna.log", *_swept(),
                                    f"hydra.sweep.dir={d}/s"],
        "Hydra basic sweeper": lambda d: [sys.executable, str(d / "sphere.py"), "--multirun", "+y=0",
                                          "+x=" + ",".join(str(i) for i in range(n)), f"hydra.sweep.dir={d}/s"],
        "plain Optuna loop, SQLite": lambda d: [sys.executable, str(d / "plain.py"), str(n), f"sqlite:///{d}/plain.db"],
    }
    if stock_python:
        stock = ["--multirun", "hydra/sweeper=optuna", "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=0",
                 f"hydra.sweeper.n_trials={n}", "hydra.sweeper.n_jobs=1"]
        out["stock 1.3.0, in memory"] = lambda d: [stock_python, str(d / "sphere.py"), *stock, *_swept(),
                                                   f"hydra.sweep.dir={d}/s"]
        out["stock 1.3.0, SQLite"] = lambda d: [stock_python, str(d / "sphere.py"), *stock, *_swept(),
                                                f"hydra.sweeper.storage=sqlite:///{d}/stock.db",
                                                "hydra.sweeper.study_name=s", f"hydra.sweep.dir={d}/s"]
    return out


def _swept() -> list[str]:
    return list(SPACE)


def measure(cmd_of, workdir: Path) -> dict[str, float]:
    workdir.mkdir(parents=True)
    (workdir / "sphere.py").write_text(SPHERE)
    (workdir / "plain.py").write_text(PLAIN_OPTUNA)
    times = workdir / "times.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "SWEEPS_OPTUNA_STORAGE"}
    env.update({TIMES_ENV: str(times), "PYTHONUNBUFFERED": "1"})
    cmd = cmd_of(workdir)
    if cmd[0] != sys.executable:
        env.pop("PYTHONPATH", None)  # another venv (the stock plugin's): none of ours on its path
    before = os.times()
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - start
    after = os.times()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd_of(workdir)[:3]} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    calls = [json.loads(line) for line in times.read_text().splitlines()]
    gaps = [b[0] - a[1] for a, b in zip(calls, calls[1:])]
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return {"wall_s": wall, "trials": len(calls), "cpu_ms_per_trial": 1000 * cpu / max(len(calls), 1),
            "ms_between": 1000 * statistics.median(gaps) if gaps else float("nan")}


def overhead(n: int, repeats: int, stock_python: str | None) -> None:
    runs: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="sweep_overhead_") as tmp:
        for r in range(repeats):  # interleaved: one of each, then again
            for name, cmd_of in contenders(n, stock_python).items():
                runs.setdefault(name, []).append(measure(cmd_of, Path(tmp) / f"{r}-{len(runs[name])}-{_slug(name)}"))
    print(f"\n{n} trials of the sphere task, medians of {repeats} (load {os.getloadavg()[0]:.1f})")
    print("| contender | total wall s | CPU ms per trial | ms between trials |\n|---|---|---|---|")
    for name, results in runs.items():
        med = {k: statistics.median(x[k] for x in results) for k in results[0]}
        assert all(x["trials"] == n for x in results), (name, [x["trials"] for x in results])
        print(f"| {name} | {med['wall_s']:.1f} | {med['cpu_ms_per_trial']:.0f} | {med['ms_between']:.0f} |")
        print(f"overhead {json.dumps({'contender': name, **{k: round(v, 3) for k, v in med.items()}})}")


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def _when(line: str) -> float | None:
    m = STAMP.match(line)
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() if m else None


def train_phases(n: int) -> None:
    """A real sweep of the tiny digits model, its log read back into phases per trial."""
    args = ["--multirun", "hydra/sweeper=sweeps_optuna", "hydra.sweeper.n_jobs=1", f"hydra.sweeper.n_trials={n}",
            "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=0", "optim.lr=interval(0.01,0.1)",
            "dataset=digits", "model.channels=[8,16]", "model.blocks=[1,1]", "model.stem_channels=8", "model.pool=4",
            "model.head=[]", "trainer.epochs=2", "trainer.progress=false", "tracking.log_model=false"]
    with tempfile.TemporaryDirectory(prefix="sweep_phases_") as tmp:
        env = {k: v for k, v in os.environ.items() if k not in ("SWEEPS_OPTUNA_STORAGE", "MLFLOW_TRACKING_URI")}
        env, clock = clocked_env(env, Path(tmp) / "clock")
        proc = subprocess.run([sys.executable, "-m", "sweeps.train", *args], cwd=tmp, capture_output=True, text=True,
                              timeout=1800, env=env)
        backwards = steps(clock)
    log = (proc.stdout + proc.stderr).splitlines()
    if proc.returncode != 0:
        raise RuntimeError("\n".join(log[-40:]))
    launched, told, trained = {}, {}, {}
    current = None
    for line in log:
        t = _when(line)
        if (m := re.search(r"\] trial (\d+): ", line)) and t:
            current = int(m.group(1))
            launched[current] = t
        elif (m := re.search(r"\] trial (\d+) (COMPLETE|PRUNED|FAIL)", line)) and t:
            told[int(m.group(1))] = t
        elif current is not None and (m := re.search(r"done: .* \| ([\d.]+)s \|", line)):
            trained[current] = float(m.group(1))
    numbers = sorted(set(launched) & set(told) & set(trained))
    between = [launched[b] - told[a] for a, b in zip(numbers, numbers[1:])]
    job = [told[k] - launched[k] - trained[k] for k in numbers]
    fit = [trained[k] for k in numbers]
    # each trial's steps lie between its launch line and the next one's
    starts = [launched[k] for k in numbers] + [float("inf")]
    per_trial = [[b for b in backwards if lo <= b[0] < hi] for lo, hi in zip(starts, starts[1:])]
    step_gap = [nxt[0][0] - cur[-1][1] for cur, nxt in zip(per_trial, per_trial[1:]) if cur and nxt]
    print(f"\nA sweeps.train sweep of {len(numbers)} tiny digits trials (2 epochs, in-process), medians per trial:")
    print("| phase | s |\n|---|---|")
    for name, values in (("sweeper, between trials (tell, reap, ask, compose, count, launch)", between),
                         ("job outside its timed run (MLflow run, data, records)", job),
                         ("the job's timed run (model, training, test, figures)", fit)):
        value = statistics.median(values) if values else float("nan")
        print(f"| {name} | {value:.2f} |")
        print(f"phase {json.dumps({'phase': name.split(',')[0].split(' (')[0], 'median_s': round(value, 3)})}")
    gap = statistics.median(step_gap) if step_gap else float("nan")
    print(f"From a trial's last training step to the next trial's first: {gap:.2f} s median, "
          f"{max(step_gap, default=float('nan')):.2f} s max")
    print(f"step_gap {json.dumps({'median_s': round(gap, 3), 'max_s': round(max(step_gap, default=gap), 3), 'n': len(step_gap)})}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--stock-python", help="the python of a venv with hydra-optuna-sweeper 1.3.0 (optuna<3)")
    ap.add_argument("--train", type=int, default=0, metavar="N", help="also time a real N-trial sweeps.train sweep")
    ap.add_argument("--quick", action="store_true", help="3 trials, 1 repeat, a 2-trial training sweep")
    args = ap.parse_args()
    if args.quick:
        args.trials, args.repeats, args.train = 3, 1, 2
    print(f"python {sys.version.split()[0]} | {os.cpu_count()} CPUs")
    if args.trials:  # --trials 0 --train N: the training sweep alone
        overhead(args.trials, args.repeats, args.stock_python)
    if args.train:
        train_phases(args.train)


if __name__ == "__main__":
    main()
