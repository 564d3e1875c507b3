"""Does pruning pay off? The same sweep with each pruner, on the same sampler seeds.

    python benchmarks/pruning.py                               # 30 trials x 9 epochs, seeds 0-4, 5 pruners
    python benchmarks/pruning.py --pruners none successive_halving:min_resource=2 --seeds 0 1 2
    python benchmarks/pruning.py --pruners none hyperband:min_resource=2,reduction_factor=3
    python benchmarks/pruning.py --override dataset.val_fraction=0.1   # the default 144-image split
    python benchmarks/pruning.py --trials 16 --epochs 8 --limit-train-batches 6 --override trainer.batch_size=128
    python benchmarks/pruning.py --quick                        # the suite's tiny run

Each run is a real ``python -m sweeps.train`` sweep in a fresh folder: the tiny
digits model, ``optim.lr`` log-uniform over 1e-4..1 (where many trials are
hopeless, as in a real lr search), TPE with the given seed, one process. For
each pruner it prints the epochs trained (the epochs every trial reported to the
study, summed), wall seconds, the best validation accuracy per seed and its
mean and worst change against no pruning on the same seed; then the pruners
that train at most half the epochs and keep the unpruned best: its mean over
the seeds within ``--tolerance`` points (the verdict), and on every seed (also
printed). The mean is the verdict because one seed's best is a maximum over
the trials TPE happened to draw: without pruning it moves by up to a point
between seeds, so two sweeps agree on a seed to half a point by luck as often
as by merit. Machine-readable lines start with ``pruning``.
The epochs and best values of a seed are the same on every run (seeded
sampler, seeded training, one thread); the seconds are the machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Batch 32: a digits epoch is 36 steps, a pass that teaches, as a CIFAR epoch does; an epoch of a
# few steps leaves every trial near chance at the first rungs, where pruners decide.
# A 431-image validation split (30% of digits' train split): one image is 0.23 points, under the
# 0.5-point tolerance; on the default 144-image split one image is 0.69 points, so "the same best"
# would mean the same image count, a coin flip between two sweeps that draw different trials.
MODEL = ["trainer.batch_size=32", "dataset=digits", "dataset.val_fraction=0.3", "model.channels=[8,16]",
         "model.blocks=[1,1]", "model.stem_channels=8", "model.pool=4", "model.head=[]", "trainer.progress=false",
         "tracking.log_model=false", "tracking.log_figures=false"]


def epochs_trained(root: Path) -> int:
    """Every epoch any trial trained, from MLflow: one val_acc point per epoch (the study holds
    per-epoch values only when a pruner asks for them)."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = [r for r in client.search_runs(ids, max_results=10000) if "sweeps.trial" in r.data.tags] if ids else []
    return sum(len(client.get_metric_history(r.info.run_id, "val_acc")) for r in runs)


def sweep(pruner: str, seed: int, trials: int, epochs: int, extra: list[str]) -> dict:
    import optuna

    name, _, settings = pruner.partition(":")  # e.g. successive_halving:min_resource=2,reduction_factor=3
    chosen = [f"hydra.sweeper.pruner.{kv}" for kv in settings.split(",") if kv]
    with tempfile.TemporaryDirectory(prefix=f"pruning_{name}_{seed}_") as tmp:
        args = ["--multirun", "hydra/sweeper=sweeps_optuna", f"hydra/sweeper/pruner={name}", *chosen,
                "hydra.sweeper.n_jobs=1", f"hydra.sweeper.n_trials={trials}", "hydra/sweeper/sampler=tpe",
                f"hydra.sweeper.sampler.seed={seed}", "hydra.sweeper.max_failure_rate=1.0",
                "optim.lr=tag(log, interval(1e-4, 1.0))", f"trainer.epochs={epochs}", *MODEL, *extra]
        env = {k: v for k, v in os.environ.items() if k not in ("SWEEPS_OPTUNA_STORAGE", "MLFLOW_TRACKING_URI")}
        # One thread: a CPU convolution's sums differ with the thread count, and a sweep's best with
        # them, so a seed's figures are the same on every run only at a fixed count (and two runs of
        # this script can share a 2-core machine).
        env["OMP_NUM_THREADS"] = "1"
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "sweeps.train", *args], cwd=tmp, capture_output=True, text=True,
                              timeout=7200, env=env)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{pruner} seed {seed}:\n{(proc.stdout + proc.stderr)[-3000:]}")
        study = optuna.load_study(study_name="train", storage=f"sqlite:///{Path(tmp) / 'multirun' / 'optuna.db'}")
        trials_ = study.get_trials(deepcopy=False)
        return {"pruner": pruner, "seed": seed, "wall_s": round(wall, 1), "epochs": epochs_trained(Path(tmp)),
                "pruned": sum(t.state.name == "PRUNED" for t in trials_),
                "best": study.best_value}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pruners", nargs="+", default=["none", "successive_halving:min_resource=2", "hyperband",
                                                      "successive_halving", "median"],
                    help="conf names of hydra/sweeper/pruner, each optionally with :key=value,... settings")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=9)
    ap.add_argument("--limit-train-batches", type=int, default=None,
                    help="batches per epoch (default: the whole split), for a shorter run of the same comparison")
    ap.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE",
                    help="more overrides for every sweep, e.g. dataset.val_fraction=0.1 (the default 144-image split)")
    ap.add_argument("--tolerance", type=float, default=0.5, help="points of accuracy (default 0.5)")
    ap.add_argument("--quick", action="store_true", help="2 pruners, 1 seed, 2 trials of 2 epochs, 3 batches each")
    args = ap.parse_args()
    extra: list[str] = [f"trainer.limit_train_batches={args.limit_train_batches}"] if args.limit_train_batches else []
    if args.quick:
        args.pruners, args.seeds, args.trials, args.epochs = ["none", "median"], [0], 2, 2
        extra = ["trainer.limit_train_batches=3", "trainer.limit_eval_batches=2"]
    extra += args.override
    results = {p: [] for p in args.pruners}
    for seed in args.seeds:  # interleaved, so that the machine's load hits every pruner alike
        for pruner in args.pruners:
            r = sweep(pruner, seed, args.trials, args.epochs, extra)
            results[pruner].append(r)
            print(f"pruning {json.dumps(r)}", flush=True)
    print(f"\n{args.trials} trials x up to {args.epochs} epochs"
          + (f" of {args.limit_train_batches} batches" if args.limit_train_batches else "")
          + (f", {' '.join(args.override)}" if args.override else "")
          + f", TPE seeds {args.seeds} ({os.cpu_count()} CPUs)")
    print("| pruner | epochs trained | vs none | wall s | best val acc per seed | mean / worst change, points "
          "| pruned trials |\n|---|---|---|---|---|---|---|")
    base = {r["seed"]: r for r in results.get("none", [])}
    base_epochs = sum(r["epochs"] for r in base.values())

    def change(rs: list[dict]) -> list[float]:
        """Points of best val acc against no pruning on the same seed."""
        return [100 * (r["best"] - base[r["seed"]]["best"]) for r in rs if r["seed"] in base]

    for pruner, rs in results.items():
        epochs = sum(r["epochs"] for r in rs)
        ratio = f"{epochs / base_epochs:.2f}x" if base_epochs else "n/a"
        bests = " / ".join(f"{100 * r['best']:.2f}" for r in rs)
        deltas = change(rs)
        moved = f"{statistics.mean(deltas):+.2f} / {min(deltas):+.2f}" if deltas and pruner != "none" else ""
        print(f"| {pruner} | {epochs} | {ratio} | {sum(r['wall_s'] for r in rs):.0f} | {bests} | {moved} | "
              f"{sum(r['pruned'] for r in rs)} |")
    if base:
        cheap = {p: rs for p, rs in results.items() if p != "none" and 2 * sum(r["epochs"] for r in rs) <= base_epochs}
        good = [p for p, rs in cheap.items() if statistics.mean(change(rs)) >= -args.tolerance]
        strict = [p for p, rs in cheap.items() if min(change(rs)) >= -args.tolerance]
        print(f"pruning {json.dumps({'recommended': good, 'on_every_seed': strict, 'tolerance_pp': args.tolerance})}")
        print(f"recommended (>= 2x fewer epochs, mean best over the seeds within {args.tolerance} points of "
              f"no pruning's): {', '.join(good) or 'none of them'}; within it on every seed: "
              f"{', '.join(strict) or 'none of them'}")


if __name__ == "__main__":
    main()
