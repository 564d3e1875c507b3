"""Replicates: one configuration trained with K seeds, and the statistics of their results.

A single run's accuracy is one draw from a distribution whose spread (a few
tenths of a point for a CIFAR ResNet) is as large as most ablation effects, so
a table row is only worth comparing as a mean with its spread. ``replicates=K``
trains the config with seeds ``seed, seed+1, ...`` (or ``replicate_seeds``);
each replicate is its own MLflow run, a child of the config's run, which holds
the aggregates. The sweeper's objective is one aggregate (``replicate_aggregate``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

from sweeps import objectives
from sweeps.errors import ConfigError

# The final metrics that get mean, std, sem, n and a 95% CI in the config's run.
AGGREGATED = ("best_val_acc", "test_acc", "best_val_loss", "test_loss", "train_acc_at_best", "epochs_run",
              "best_epoch", "wall_time_s")
AGGREGATES = ("mean", "median", "worst", "mean_minus_std")
STATS = ("mean", "std", "sem", "n", "ci95_low", "ci95_high")


def seeds(cfg: DictConfig) -> list[int]:
    """The replicates' seeds: ``replicate_seeds``, else ``seed, seed+1, ...`` (``replicates`` of them)."""
    count = cfg.get("replicates", 1)
    if isinstance(count, bool) or not isinstance(count, int):
        raise ConfigError(f"replicates={count!r} is not an integer: the number of seeds each configuration trains "
                          "with; e.g. replicates=3 (or replicate_seeds=[0,1,2]).")
    if count < 1:
        raise ConfigError(f"replicates={count} must be at least 1 (1 trains each configuration once); "
                          "e.g. replicates=3.")
    given = cfg.get("replicate_seeds")
    if given is None:
        return [int(cfg.seed) + i for i in range(count)]
    if not isinstance(given, (ListConfig, list)) or not given:
        raise ConfigError(f"replicate_seeds={given!r} is not a list of seeds; e.g. replicate_seeds=[0,1,2].")
    values = list(given)
    if any(isinstance(s, bool) or not isinstance(s, int) for s in values):
        raise ConfigError(f"replicate_seeds={values} must hold integers only; e.g. replicate_seeds=[0,1,2].")
    if len(set(values)) != len(values):
        twice = sorted({s for s in values if values.count(s) > 1})
        raise ConfigError(f"replicate_seeds={values} repeats seed(s) {twice}: replicates of one seed train the same "
                          "model and would count one result several times; give distinct seeds.")
    if count not in (1, len(values)):
        raise ConfigError(f"replicates={count} but replicate_seeds={values} has {len(values)} seeds; drop replicates "
                          f"(the seeds' count is used) or write replicates={len(values)}.")
    return [int(s) for s in values]


def check(cfg: DictConfig) -> None:
    """Every replicate setting, before anything is built (``sweeps.config.validate``)."""
    seeds(cfg)
    aggregate = cfg.get("replicate_aggregate", "mean")
    if aggregate not in AGGREGATES:
        raise ConfigError(f"replicate_aggregate={aggregate!r} is not one of {', '.join(AGGREGATES)}: what the sweeper "
                          "optimizes over a configuration's replicates; e.g. replicate_aggregate=median.")


def with_seed(cfg: DictConfig, seed: int) -> DictConfig:
    """The config of one replicate: the same config with its own seed, trained as a single run."""
    copy = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    OmegaConf.set_struct(copy, False)
    copy.seed = int(seed)
    copy.replicates, copy.replicate_seeds = 1, None
    return copy


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample std (ddof=1), its standard error, n and the Student-t 95% CI of the mean: the
    report's own statistics (``sweeps.report.stats``), so that what a run logs and what the report
    shows are one computation; a single value has no spread (std 0, its CI the value)."""
    from sweeps.report.stats import dist

    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not xs:
        return {}
    d = dist(xs)
    if d is None:
        return {"mean": xs[0], "std": 0.0, "sem": 0.0, "n": 1.0, "ci95_low": xs[0], "ci95_high": xs[0]}
    low, high = d.ci95
    return {"mean": d.mean, "std": d.std, "sem": d.sem, "n": float(d.n), "ci95_low": low, "ci95_high": high}


def aggregate(name: str, values: Sequence[float], how: str) -> float:
    """The one number the sweeper sees for a metric over the replicates.

    ``worst`` and ``mean_minus_std`` take the metric's bad side: the lowest accuracy, the
    highest loss; for a loss ``mean_minus_std`` is the mean plus one std.
    """
    import statistics

    xs = [float(v) for v in values]
    up = objectives.maximize(name)
    if how == "median":
        return float(statistics.median(xs))
    if how == "worst":
        return min(xs) if up else max(xs)
    s = summarize(xs)
    if how == "mean_minus_std":
        return s["mean"] - s["std"] if up else s["mean"] + s["std"]
    return s["mean"]


def final_metrics(finals: Sequence[dict[str, float]], how: str) -> dict[str, float]:
    """The config run's metrics: each aggregated metric's mean under its own name (what the
    report, the UI's view and a recovering sweeper read), its statistics as ``<name>_<stat>``,
    and the chosen aggregate as ``<name>_<how>``."""
    out: dict[str, float] = {}
    for name in AGGREGATED:
        values = [f[name] for f in finals if name in f]
        if not values:
            continue
        s = summarize(values)
        out[name] = s["mean"]
        out.update({f"{name}_{k}": v for k, v in s.items()})
        if how != "mean":
            out[f"{name}_{how}"] = aggregate(name, values, how)
    out["n_params"] = finals[0]["n_params"]
    return out


def objective_key(name: str, how: str) -> str:
    """The config run's metric that holds the objective ``name`` aggregated by ``how``."""
    return name if how == "mean" or name not in AGGREGATED else f"{name}_{how}"
