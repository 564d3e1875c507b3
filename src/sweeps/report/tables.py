"""The markdown table of a sweep, in the seeds' results format.

One line per row; a trial that has no result says why in the Test Accuracy
column (pruned, failed, over the budget), so every trial of the study is
accounted for in the table.
"""

from __future__ import annotations

from sweeps.report.ranking import sort_key
from sweeps.report.rows import Row, Sweep
from sweeps_optuna.contract import COMPLETE, INFEASIBLE_STATE, INTERRUPTED_STATE, PRUNED, RUNNING

HEADER = "| Method | # of parameters | # of epochs | Train Accuracy | Validation Accuracy | Test Accuracy | Run |"
ALIGN = "| :----: | :----: | :----: | :----: | :----: | :----: | :----: |"
MISSING = "–"


def pct_text(v: float | None) -> str:
    """A fraction as the report writes a percent ("91.23"), or '–'."""
    from sweeps.plots import percent

    p = percent(v)
    return MISSING if p is None else f"{p:.2f}"


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


def table(rows: list[Row], sweep: Sweep) -> list[str]:
    lines = [HEADER, ALIGN]
    for r in sorted(rows, key=sort_key(sweep)):
        method = f"**★ {r.label}**" if r.best else (f"◆ {r.label}" if r.pareto else r.label)
        val = pct_text(r.val_acc)
        if r.best:
            val = f"**{val}**"
        test = pct_text(r.test_acc) if r.state == COMPLETE else state_text(r, sweep.budget)
        run = f"`{r.run_id}`" if r.run_id else (f"trial {r.trial}" if r.trial is not None else MISSING)
        cells = [method, f"{r.n_params:,}" if r.n_params is not None else MISSING,
                 str(r.epochs) if r.epochs is not None else ("0" if r.state == INFEASIBLE_STATE else MISSING),
                 pct_text(r.train_acc), val, test, run]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines
