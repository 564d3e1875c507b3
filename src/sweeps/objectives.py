"""The final metrics a run reports: which way each is better, and what a pruner watches.

One table, read by the config check (what ``objective`` may name), the sweeper's
hooks (the study's directions when ``hydra.sweeper.direction`` is null), the
trial link (the per-epoch value reported to the pruner) and the report (how
rows are ranked).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    maximize: bool
    per_epoch: str | None = None  # the epoch metric a pruner compares, when there is one


METRICS = {
    "best_val_acc": Metric(True, "val_acc"),
    "best_val_loss": Metric(False, "val_loss"),
    "test_acc": Metric(True),
    "test_loss": Metric(False),
    "train_acc_at_best": Metric(True),
    "n_params": Metric(False),
    "epochs_run": Metric(False),
}
# What ``objective`` may name (a run reports each of them when it completes).
OBJECTIVES = tuple(METRICS)
# Reported too, never optimized.
EXTRA_MINIMIZED = ("wall_time_s",)


def maximize(name: str) -> bool:
    """Whether higher is better for ``name`` (unknown names: lower, as for a loss)."""
    metric = METRICS.get(name)
    return metric.maximize if metric is not None else False


def direction(name: str) -> str:
    return "maximize" if maximize(name) else "minimize"


def per_epoch(name: str) -> str | None:
    metric = METRICS.get(name)
    return metric.per_epoch if metric is not None else None
