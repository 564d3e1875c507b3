"""The figures of one sweep, drawn by ``sweeps.plots`` from the report's rows.

A figure that cannot be drawn (too few trials, a failing Optuna plot) costs
only a note: the table is the report, the figures illustrate it. A
replicated sweep's bars and points carry their 95% intervals, and their
titles say so.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from sweeps.report.labels import axis_name, label_keys
from sweeps.report.ranking import sort_key
from sweeps.report.rows import Row, Sweep
from sweeps.report.stats import Dist
from sweeps.report.tables import replicated
from sweeps_optuna.contract import COMPLETE

Made = list[tuple[str, Path]]  # (title, file) of each figure drawn, in the report's order


def slug(text: str) -> str:
    """``text`` as a file-name part: the figures of several sweeps share one folder."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:60] or "x"


def figures(sweep: Sweep, out: Path, prefix: str, axes: dict[str, list[Row]] | None, top_k: int,
            client) -> Made:
    made: Made = []

    def attempt(title: str, fn, *args, **kwargs):
        try:
            made.append((title, fn(*args, **kwargs)))
        except Exception as e:  # noqa: BLE001 - one figure failing does not sink the report
            sweep.notes.append(f"{title}: not drawn ({type(e).__name__}: {e}).")

    _sweep_figures(sweep, out, prefix, axes, attempt)
    if sweep.study is not None:
        _optuna_figures(sweep, out, prefix, attempt)
    else:
        sweep.notes.append("No Optuna study found for this experiment: optimization history and importances skipped.")
    _learning_curves(sweep, out, prefix, top_k, client, attempt)
    return made


def _sweep_figures(sweep: Sweep, out: Path, prefix: str, axes: dict[str, list[Row]] | None,
                   attempt: Callable) -> None:
    """Accuracy against size for the whole sweep, then one bar chart per ablation axis."""
    from sweeps import plots

    caption = f" ({plots.ERROR_BARS})" if replicated(sweep) else ""
    scatter, bar_chart = plots.accuracy_vs_params, plots.axis_bars
    points = [{"n_params": r.n_params, "val_acc": r.val_acc, "label": r.label, "state": r.state,
               "val_err": half_ci(r.dist("best_val_acc"))} for r in sweep.rows]
    attempt("Validation accuracy vs parameter count" + caption, scatter, points,
            out / f"{prefix}val_acc_vs_params.png", sweep.budget,
            f"{sweep.title}: validation accuracy vs parameters")

    groups = axes or {"trials": sweep.rows}
    for axis, rows in groups.items():
        ranked = [r for r in sorted(rows, key=sort_key(sweep)) if r.val_acc is not None][:20]
        if not ranked:
            continue
        bars = [{"label": r.label, "val_acc": r.val_acc, "test_acc": r.test_acc, "best": r.best,
                 "val_err": half_ci(r.dist("best_val_acc")),
                 "test_err": half_ci(r.dist("test_acc"))} for r in ranked]
        title = f"Ablation: {axis}" if axes else "Trials by validation accuracy"
        attempt(title + caption, bar_chart,
                axis if axes else ", ".join(map(axis_name, label_keys(sweep.rows))) or "run",
                bars, out / f"{prefix}ablation_{slug(axis)}.png",
                f"{sweep.title}: {axis}" if axes else f"{sweep.title}: top {len(bars)} runs")


def half_ci(d: Dist | None) -> float:
    """The 95% interval's half-width in percent points (the tables' interval), 0 for a single run."""
    if d is None:
        return 0.0
    low, high = d.ci95
    return 100 * (high - low) / 2


def _optuna_figures(sweep: Sweep, out: Path, prefix: str, attempt: Callable) -> None:
    """Optuna's history and importances, where the study has what they need (else a note why not)."""
    study = sweep.study
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == COMPLETE]
    if not complete:
        sweep.notes.append("Optuna optimization history: skipped, the study has no complete trial.")
    else:
        attempt("Optuna optimization history", _optuna, "history", study, out / f"{prefix}optuna_history.png",
                sweep.objective)
    varying = {k for t in complete for k in t.params if len({str(u.params.get(k)) for u in complete}) > 1}
    if len(complete) < 2 or not varying:
        sweep.notes.append(
            f"Optuna hyperparameter importances: skipped, they need at least 2 complete trials and a "
            f"parameter that varies among them (the study has {len(complete)} complete, "
            f"{len(varying)} varying).")
    else:
        attempt("Optuna hyperparameter importances", _optuna, "importances", study,
                out / f"{prefix}optuna_importances.png", sweep.objective)


def _optuna(kind: str, study, path: Path, objective: str) -> Path:
    from sweeps import plots

    # Optuna plots one value per trial: a multi-objective study is shown by its first, as it is ranked.
    target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
    return plots.optuna_figure(kind, study, path, target_name=objective, target=target)


def _learning_curves(sweep: Sweep, out: Path, prefix: str, top_k: int, client, attempt: Callable) -> None:
    """The per-epoch curves of the best ``top_k`` complete runs, read back from MLflow."""
    from sweeps import plots

    best = [r for r in sorted(sweep.rows, key=sort_key(sweep)) if r.run_id and r.state == COMPLETE][:top_k]
    if not best:
        return
    curves = {}
    for r in best:
        curves[r.label or r.run_name] = {key: _history(client, r, key) for key in ("val_acc", "val_loss", "train_loss")}
    attempt(f"Learning curves of the top {len(best)}", plots.overlaid_curves, curves,
            out / f"{prefix}top_k_learning_curves.png", f"{sweep.title}: top {len(best)} runs")



def _history(client, row: Row, key: str) -> list[tuple[int, float]]:
    """A row's per-epoch ``key``: its run's, else the mean at each epoch over its replicates' runs."""
    own = [(m.step, m.value) for m in client.get_metric_history(row.run_id, key)]
    if own or not row.replicates:
        return own
    by_step: dict[int, list[float]] = {}
    for rep in row.replicates:
        for m in client.get_metric_history(rep.run_id, key):
            by_step.setdefault(m.step, []).append(m.value)
    return [(step, sum(vs) / len(vs)) for step, vs in sorted(by_step.items())]
