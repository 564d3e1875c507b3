"""The markdown table of a sweep, in the seeds' results format.

One line per row; a trial that has no result says why in the Test Accuracy
column (pruned, failed, over the budget), so every trial of the study is
accounted for in the table.

A sweep whose rows trained over several seeds shows each accuracy as
``mean ± std (n=K)`` and adds the difference of every row to its table's
baseline, with the 95% interval and a mark where Welch's test finds it real.
A sweep of single runs keeps the seeds' format exactly.
"""

from __future__ import annotations

from sweeps.report.ranking import sort_key
from sweeps.report.rows import Row, Sweep
from sweeps.report.stats import Dist, welch
from sweeps_optuna.contract import COMPLETE, INFEASIBLE_STATE, INTERRUPTED_STATE, PRUNED, RUNNING

HEADER = "| Method | # of parameters | # of epochs | Train Accuracy | Validation Accuracy | Test Accuracy | Run |"
ALIGN = "| :----: | :----: | :----: | :----: | :----: | :----: | :----: |"
MISSING = "–"
BETTER, WORSE = "▲", "▼"  # significantly better / worse than the table's baseline
BASELINE = "baseline"


def pct_text(v: float | None) -> str:
    """A fraction as the report writes a percent ("91.23"), or '–'."""
    from sweeps.plots import percent

    p = percent(v)
    return MISSING if p is None else f"{p:.2f}"


def is_accuracy(name: str) -> bool:
    return name.endswith("_acc") or name == "train_acc_at_best"


def dist_text(d: Dist) -> str:
    """``91.23 ± 0.45 (n=3)``: an accuracy's mean and sample std in percent, and how many seeds."""
    return f"{100 * d.mean:.2f} ± {100 * d.std:.2f} (n={d.n})"


def acc_text(row: Row, metric: str, value: float | None) -> str:
    """A row's accuracy cell: ``mean ± std (n)`` over its seeds, or as today for a single run."""
    d = row.dist(metric)
    return dist_text(d) if d is not None else pct_text(value)


def replicated(sweep: Sweep) -> bool:
    """Whether any row of the sweep is a distribution: then its tables compare rows with a baseline."""
    return any(r.dist(m) is not None for r in sweep.rows for m in (sweep.objective, "test_acc"))


def delta_columns(sweep: Sweep) -> list[tuple[str, bool, str]]:
    """(metric, maximize, header) of each difference a replicated table shows: the objective, and test accuracy."""
    def header(name: str) -> str:
        shown = {"best_val_acc": "Validation", "test_acc": "Test"}.get(name, f"`{name}`")
        return f"Δ {shown} vs baseline ({'pp, ' if is_accuracy(name) else ''}95% CI)"

    cols = [(sweep.objective, sweep.maximize, header(sweep.objective))]
    if sweep.objective != "test_acc":
        cols.append(("test_acc", True, header("test_acc")))
    return cols


def _number(name: str, v: float) -> str:
    return f"{100 * v:+.2f}" if is_accuracy(name) else f"{v:+.4g}"


def _single(row: Row, metric: str, objective: str) -> float | None:
    if metric == objective:
        return row.objective
    return {"best_val_acc": row.val_acc, "test_acc": row.test_acc, "train_acc_at_best": row.train_acc}.get(metric)


def delta_text(row: Row, base: Row | None, metric: str, maximize: bool, objective: str) -> str:
    """``+1.23 [+0.50, +1.96] ▲``: row minus baseline, Welch–Satterthwaite 95% CI, mark if significant.

    Where either row is a single run there is no interval and no test: the
    bare difference, or '–' where a value is missing.
    """
    if base is None or row.state != COMPLETE:
        return MISSING
    if row is base:
        return BASELINE
    a, b = row.dist(metric), base.dist(metric)
    if a is not None and b is not None:
        d = welch(a, b)
        mark = (f" {BETTER if (d.diff > 0) == maximize else WORSE}") if d.significant and d.diff != 0 else ""
        return f"{_number(metric, d.diff)} [{_number(metric, d.low)}, {_number(metric, d.high)}]{mark}"
    va, vb = _single(row, metric, objective), _single(base, metric, objective)
    return MISSING if va is None or vb is None else _number(metric, va - vb)


def objective_text(name: str, value: float) -> str:
    if name == "n_params" or name == "epochs_run":
        return f"{name} {int(value):,}"
    return f"{name} {pct_text(value)}%" if name.endswith("_acc") or name == "train_acc_at_best" else f"{name} {value:.4g}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def state_text(row: Row, budget: int | None) -> str:
    """What a row without a test accuracy shows in its place: how far it got, or why it stopped."""
    if row.state == PRUNED:
        return f"PRUNED at epoch {row.epochs}" if row.epochs else "PRUNED"
    if row.state == INTERRUPTED_STATE:
        return f"INTERRUPTED at epoch {row.epochs}" if row.epochs else "INTERRUPTED"
    if row.state == RUNNING:
        return "RUNNING"
    if row.state == INFEASIBLE_STATE:
        if row.n_params is not None and budget:
            return f"INFEASIBLE: {row.n_params:,} params, {row.n_params - budget:,} over the {budget:,} budget"
        return "INFEASIBLE: " + (row.reason[:100] or "over the parameter budget")
    reason = row.reason.strip().splitlines()[0] if row.reason.strip() else "no reason recorded"
    return f"FAIL: {reason[:100]}" + ("…" if len(reason) > 100 else "")


def table(rows: list[Row], sweep: Sweep, baseline: Row | None = None) -> list[str]:
    """The table of ``rows``; a replicated sweep's adds each row's difference to ``baseline``."""
    deltas = delta_columns(sweep) if replicated(sweep) else []
    header, align = HEADER, ALIGN
    if deltas:
        header = HEADER.removesuffix(" Run |") + "".join(f" {h} |" for _, _, h in deltas) + " Run |"
        align = ALIGN + " :----: |" * len(deltas)
    lines = [header, align]
    for r in sorted(rows, key=sort_key(sweep)):
        method = f"**★ {r.label}**" if r.best else (f"◆ {r.label}" if r.pareto else r.label)
        val = acc_text(r, "best_val_acc", r.val_acc)
        if r.best:
            val = f"**{val}**"
        test = acc_text(r, "test_acc", r.test_acc) if r.state == COMPLETE else state_text(r, sweep.budget)
        run = f"`{r.run_id}`" if r.run_id else (f"trial {r.trial}" if r.trial is not None else MISSING)
        cells = [method, f"{r.n_params:,}" if r.n_params is not None else MISSING,
                 str(r.epochs) if r.epochs is not None else ("0" if r.state == INFEASIBLE_STATE else MISSING),
                 acc_text(r, "train_acc_at_best", r.train_acc), val, test,
                 *(delta_text(r, baseline, m, up, sweep.objective) for m, up, _ in deltas), run]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines
