"""The report's data: one Row per trial, gathered into one Sweep per study.

A trial is read from its MLflow run where it has one (the run holds the
metrics), else from its Optuna trial (a trial refused before its run started
still belongs in the table). The names of tags, user attrs and states are the
sweeper's (``sweeps_optuna.contract``).

A trial trained over several seeds is still one row: its run holds the means
(so every single-value view of it stays right), and the row keeps each
replicate's final metrics, from which its spread and tests are computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweeps.report.names import name_tokens
from sweeps.report.stats import Dist, dist
from sweeps_optuna import contract as c
from sweeps_optuna.storage import redact

# The final metrics the trainer aggregates over a trial's replicates.
REPLICATED = ("best_val_acc", "test_acc", "best_val_loss", "test_loss", "train_acc_at_best")


@dataclass
class Replicate:
    """One seed of a replicated trial: its own run, its final metrics."""

    index: int | None
    seed: int | None
    run_id: str
    state: str
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Row:
    run_name: str
    run_id: str | None = None
    trial: int | None = None
    state: str = c.COMPLETE
    reason: str = ""
    n_params: int | None = None
    epochs: int | None = None
    best_epoch: int | None = None
    train_acc: float | None = None
    val_acc: float | None = None
    test_acc: float | None = None
    objective: float | None = None
    tokens: dict[str, str] = field(default_factory=dict)
    label: str = ""
    best: bool = False
    values: list[float | None] = field(default_factory=list)  # one per objective of a multi-objective sweep
    pareto: bool = False
    replicates: list[Replicate] = field(default_factory=list)  # by index; empty for a run of one seed
    aggregates: dict[str, Dist] = field(default_factory=dict)  # {metric: Dist} from the trial run's m_mean/_std/_n

    def dist(self, metric: str) -> Dist | None:
        """``metric`` over the complete replicates (else the trial run's aggregates); None for one seed."""
        if self.state != c.COMPLETE:
            return None
        found = dist([r.metrics[metric] for r in self.replicates if r.state == c.COMPLETE and metric in r.metrics])
        return found or self.aggregates.get(metric)

    @property
    def n(self) -> int:
        """How many seeds the row's values are the mean of (1: a single run)."""
        return max((d.n for d in (self.dist(m) for m in REPLICATED) if d is not None), default=1)


@dataclass
class Sweep:
    experiment: str
    experiment_id: str
    tracking_uri: str
    study_name: str | None = None
    parent_run_id: str | None = None
    rows: list[Row] = field(default_factory=list)
    study: Any = None
    objective: str = "best_val_acc"
    maximize: bool = True
    objectives: list[tuple[str, bool]] = field(default_factory=list)  # (metric, maximize); two or more: Pareto
    budget: int | None = None
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    @property
    def title(self) -> str:
        if self.study_name and self.study_name != self.experiment:
            return f"{self.experiment} / {self.study_name}"
        return self.experiment


def as_float(value: Any) -> float | None:
    """A recorded number, or None where it is missing, not a number or NaN (a cell shows '–')."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def as_int(value: Any) -> int | None:
    """``as_float``, rounded: MLflow keeps every metric (and an int param read back) as a float or string."""
    v = as_float(value)
    return None if v is None else int(round(v))


def _aggregates(metrics: dict[str, float]) -> dict[str, Dist]:
    out = {}
    for key in metrics:
        name = key.removesuffix("_mean")
        if key.endswith("_mean") and f"{name}_std" in metrics and f"{name}_n" in metrics:
            n, std = as_int(metrics[f"{name}_n"]), as_float(metrics[f"{name}_std"])
            mean = as_float(metrics[key])
            if n is not None and n >= 2 and std is not None and mean is not None:
                out[name] = Dist(mean, std, n)
    return out


def replicate_from_run(run) -> Replicate:
    tags = run.data.tags
    state = tags.get(c.TAG_STATE) or c.STATE_OF_STATUS.get(run.info.status, run.info.status)
    return Replicate(as_int(tags.get(c.TAG_REPLICATE)), as_int(tags.get(c.TAG_REPLICATE_SEED)), run.info.run_id,
                     state, {k: v for k, v in run.data.metrics.items() if as_float(v) is not None})


def row_from_run(client, run, replicates: list | tuple = ()) -> Row:
    """The row of a trial's run; ``replicates``: the runs of its seeds, when it trained several."""
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    # A long name was cut to fit MLflow's 250 characters; the tag keeps every override.
    name = tags.get(c.TAG_OVERRIDES) or run.info.run_name or tags.get("mlflow.runName") or run.info.run_id
    state = tags.get(c.TAG_STATE) or c.STATE_OF_STATUS.get(run.info.status, run.info.status)
    row = Row(run_name=name, run_id=run.info.run_id, trial=as_int(tags.get(c.TAG_TRIAL)), state=state,
              reason=tags.get(c.TAG_REASON, ""), tokens=name_tokens(name))
    row.n_params = as_int(params.get("n_params")) or as_int(metrics.get("n_params"))
    if state == c.COMPLETE:
        row.epochs = as_int(metrics.get("epochs_run"))
        row.best_epoch = as_int(metrics.get("best_epoch"))
        row.val_acc = as_float(metrics.get("best_val_acc"))
        row.test_acc = as_float(metrics.get("test_acc"))
        row.train_acc = as_float(metrics.get("train_acc_at_best"))
    elif "val_acc" in metrics:  # stopped early: its best epoch so far, from the per-epoch history
        history = client.get_metric_history(run.info.run_id, "val_acc")
        if history:
            best = max(history, key=lambda m: m.value)
            row.val_acc, row.best_epoch = best.value, best.step
            row.epochs = max(m.step for m in history)
            row.train_acc = next((m.value for m in client.get_metric_history(run.info.run_id, "train_acc")
                                  if m.step == best.step), None)
    row.replicates = sorted((replicate_from_run(r) for r in replicates),
                            key=lambda r: (r.index is None, r.index or 0))
    row.aggregates = _aggregates(metrics)
    return row


def _trial_reason(attrs: dict[str, Any]) -> str | None:
    return attrs.get(c.FAIL_REASON) or attrs.get(c.REASON)


def row_from_trial(trial) -> Row:
    """A row for an Optuna trial that has no MLflow run (e.g. refused before it started)."""
    attrs = trial.user_attrs
    state = c.trial_state(trial)
    overrides = attrs.get(c.OVERRIDES)  # the sweeper's command-line overrides of the trial
    if isinstance(overrides, list) and overrides:
        name = ",".join(str(o) for o in overrides)
    else:
        name = ",".join(f"{k}={v}" for k, v in trial.params.items()) or f"trial {trial.number}"
    row = Row(run_name=name, trial=trial.number, state=state, reason=str(_trial_reason(attrs) or ""),
              n_params=as_int(attrs.get(c.N_PARAMS)), tokens=name_tokens(name))
    if trial.intermediate_values:
        row.epochs = max(trial.intermediate_values)
    if state == c.COMPLETE and trial.values:
        row.objective = trial.values[0]
    return row


def merge_trials(sweep: Sweep) -> None:
    """Add the Optuna trials that have no MLflow run; fill what a run lacks from its trial.

    The sweeper decides some things before a run exists (the model size, an
    infeasible verdict), and only the study records them.
    """
    if sweep.study is None:
        return
    by_run = {r.run_id: r for r in sweep.rows if r.run_id}
    by_trial = {r.trial: r for r in sweep.rows if r.trial is not None}
    unrecorded = []
    for trial in sweep.study.get_trials(deepcopy=False):
        row = by_run.get(trial.user_attrs.get(c.RUN_ID)) or by_trial.get(trial.number)
        if row is None:
            row = row_from_trial(trial)
            # the value the study holds, where its run is gone (mlruns/ deleted, another store)
            metric = {"best_val_acc": "val_acc", "test_acc": "test_acc"}.get(sweep.objective)
            if metric and row.objective is not None:
                setattr(row, metric, row.objective)
            if trial.user_attrs.get(c.RUN_ID):
                unrecorded.append(trial.number)
            sweep.rows.append(row)
            continue
        if row.trial is None:
            row.trial = trial.number
        if row.n_params is None:
            row.n_params = as_int(trial.user_attrs.get(c.N_PARAMS))
        if trial.user_attrs.get(c.INFEASIBLE) and row.state != c.INFEASIBLE_STATE:
            row.state = c.INFEASIBLE_STATE
        reason = _trial_reason(trial.user_attrs)
        if not row.reason and reason:
            row.reason = str(reason)
    if unrecorded:
        sweep.notes.append(f"Trial(s) {', '.join(map(str, unrecorded))} have no MLflow run in {redact(sweep.tracking_uri)} "
                           "(mlruns/ deleted, or tracking pointed elsewhere): their rows show the values the "
                           "Optuna study holds.")
