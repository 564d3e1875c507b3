"""``report.md``: one section per sweep, its tables, figures and notes, logged to its parent run.

The report is written to disk first and logged after, so a tracking server
that refuses the artifacts costs a warning, not the report. Everything in it
goes through ``redact``: a logged report is read by whoever reads the server.
A replicated sweep's report states the test behind its marks, so that a reader
can tell a real difference from a lucky seed without knowing the code.
"""

from __future__ import annotations

import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

from sweeps.errors import ReportError
from sweeps_optuna.storage import redact
from sweeps.report.figures import Made, figures, slug
from sweeps.report.labels import ablation_axes, axis_name, label_keys, label_rows, matches, pick_baseline
from sweeps.report.ranking import mark_best, sort_key
from sweeps.report.rows import Row, Sweep
from sweeps.report.stats import ALPHA, TEST_NAME
from sweeps.report.tables import BETTER, WORSE, objective_text, pct_text, replicated, table
from sweeps_optuna.contract import COMPLETE, STATES


def build(sweeps: list[Sweep], out: Path, top_k: int = 5, baseline: str | None = None) -> Path:
    """``baseline``: the row (label, run name or id, or overrides) each table is compared with, where it has it."""
    import mlflow

    out.mkdir(parents=True, exist_ok=True)
    many = len(sweeps) > 1
    lines = _preamble(sweeps)
    for sweep in sweeps:
        client = mlflow.MlflowClient(tracking_uri=sweep.tracking_uri)
        lines.extend(_section(sweep, out, f"{slug(sweep.title)}__" if many else "", top_k, client, baseline))
    if baseline and not any(matches(r, baseline) for s in sweeps for r in s.rows):
        labels = sorted({r.label for s in sweeps for r in s.rows if r.label})
        raise ReportError(f"--baseline {baseline!r} names no row of the report: give a row's label, run name, "
                          f"run id or overrides (e.g. optim=sgd). Its rows: {'; '.join(repr(x) for x in labels[:20])}"
                          + ("; ..." if len(labels) > 20 else "") + ".")  # labels hold commas themselves
    report = out / "report.md"
    report.write_text(redact("\n".join(lines).rstrip() + "\n"))  # it is logged to the tracking server
    _log_to_parents(sweeps, report)
    return report


def _preamble(sweeps: list[Sweep]) -> list[str]:
    lines = ["# Sweep report", ""]
    lines.append(f"Generated {datetime.now():%Y-%m-%d %H:%M} by `python -m sweeps.report` from "
                 + ", ".join(f"`{u}`" for u in dict.fromkeys(s.tracking_uri for s in sweeps)) + ".")
    reps = any(replicated(s) for s in sweeps)
    lines.append("Accuracies in percent; the Run column is the MLflow run id; ★ marks the best complete run"
                 + (" and every run statistically tied with it" if reps else "")
                 + ("; ◆ a run on the Pareto front of a multi-objective sweep." if any(
                     len(s.objectives) > 1 for s in sweeps) else "."))
    if reps:
        lines.extend(["", _replicates_text()])
    lines.append("")
    return lines


def _replicates_text() -> str:
    level = f"{100 * (1 - ALPHA):.0f}%"
    return (f"Replicates: a row trained over several seeds shows `mean ± std (n=K)`, the mean and sample standard "
            f"deviation over its K seeds (a row of one run shows its value alone). Each Δ column is the row's mean "
            f"minus its table's baseline row's, in percentage points for accuracies, with the {level} confidence "
            f"interval of that difference (Welch–Satterthwaite); {BETTER} / {WORSE} mark a difference that "
            f"{TEST_NAME} finds significant (p < {ALPHA:g}), better / worse. A row that is tied with the best "
            f"(the same test on the objective finds no significant difference) also gets ★. Rows or baselines of "
            f"a single run get the bare difference: no interval, no test.")


def _section(sweep: Sweep, out: Path, prefix: str, top_k: int, client, baseline: str | None = None) -> list[str]:
    label_rows(sweep.rows)
    ranked = sorted(sweep.rows, key=sort_key(sweep))
    best = mark_best(sweep, ranked)
    axes = ablation_axes(sweep.rows)  # relabels the rows of an ablation by their difference from its baseline
    lines = [f"## {sweep.title}", ""]
    meta = [f"experiment `{sweep.experiment}` (id {sweep.experiment_id})"]
    if sweep.study_name:
        meta.append(f"study `{sweep.study_name}`")
    if sweep.parent_run_id:
        meta.append(f"parent run `{sweep.parent_run_id}`")
    lines.append("; ".join(meta) + ".")
    lines.append("")
    lines.extend(_summary(sweep, ranked, best))
    lines.append("")
    reps = replicated(sweep)
    if baseline and reps and not any(matches(r, baseline) for r in sweep.rows if r.state == COMPLETE):
        sweep.notes.append(f"--baseline {baseline!r} names no complete row of this sweep: each table is compared "
                           "with its own baseline.")

    def one_table(rows: list[Row]) -> list[str]:
        if not reps:
            return table(rows, sweep)
        base = pick_baseline(sorted(rows, key=sort_key(sweep)), baseline)
        said = [f"Baseline: **{base.label}**." if base is not None else "No complete row to compare with.", ""]
        return [*said, *table(rows, sweep, base)]

    if axes:
        for axis, rows in axes.items():
            lines.extend([f"### Ablation: {axis}", "", *one_table(rows), ""])
    else:
        keys = label_keys(sweep.rows)
        lines.append("### Results" + (f": {', '.join(axis_name(k) for k in keys)}" if keys else ""))
        lines.extend(["", *one_table(sweep.rows), ""])
    made = figures(sweep, out, prefix, axes, top_k, client)
    sweep.files = [p for _, p in made]
    lines.extend(_figure_lines(made))
    if sweep.notes:
        lines.extend(["Notes:", ""])
        lines.extend(f"- {n}" for n in dict.fromkeys(sweep.notes))
        lines.append("")
    return lines


def _summary(sweep: Sweep, ranked: list[Row], best: Row | None) -> list[str]:
    """The counts per state, what ranks the rows, and the best run or the Pareto front."""
    counts = Counter(r.state for r in sweep.rows)
    summary = ", ".join(f"{counts[s]} {s.lower()}" for s in STATES if counts[s])
    lines = [f"{len(sweep.rows)} runs: {summary}. Ranked by `{sweep.objective}` "
             f"({'higher' if sweep.maximize else 'lower'} is better)"
             + (f"; parameter budget {sweep.budget:,}." if sweep.budget else ".")]
    if len(sweep.objectives) > 1:
        front = [r for r in ranked if r.pareto]
        goals = " and ".join(f"`{n}` ({'higher' if up else 'lower'} is better)" for n, up in sweep.objectives)
        lines.append(f"Multi-objective: {goals}. ◆ marks the {len(front)} run(s) on the Pareto front, "
                     "where no other complete run is at least as good on every objective and better on one: "
                     + "; ".join(f"**{r.label}** ({', '.join(objective_text(n, v) for (n, _), v in zip(sweep.objectives, r.values))})"
                                 for r in front) + ".")
    if best is not None:
        val, test = _pct(best, "best_val_acc", best.val_acc), _pct(best, "test_acc", best.test_acc)
        lines.append(f"Best: **{best.label}**, validation {val}, test {test}, "
                     f"{best.n_params:,} parameters" if best.n_params is not None else
                     f"Best: **{best.label}**, validation {val}")
        lines[-1] += f" (run `{best.run_id}`)." if best.run_id else "."
        ties = [r for r in ranked if r.best and r is not best]
        if ties:
            lines.append(f"★ also marks {len(ties)} run(s) statistically tied with it: {TEST_NAME} on "
                         f"`{sweep.objective}` over their seeds finds no significant difference (p ≥ {ALPHA:g}) "
                         "-- " + ", ".join(f"**{r.label}**" for r in ties) + ".")
        elif best.dist(sweep.objective) is not None:
            lines.append(f"No other run of several seeds is statistically tied with it ({TEST_NAME} on `{sweep.objective}`, "
                         f"p < {ALPHA:g} against each).")
    return lines


def _pct(row: Row, metric: str, value: float | None) -> str:
    d = row.dist(metric)
    return f"{100 * d.mean:.2f} ± {100 * d.std:.2f}% (n={d.n})" if d is not None else f"{pct_text(value)}%"


def _figure_lines(made: Made) -> list[str]:
    if not made:
        return []
    lines = ["### Figures", ""]
    for title, path in made:
        lines.extend([f"**{title}**", "", f"![{title}]({path.name})", ""])
    return lines


def _log_to_parents(sweeps: list[Sweep], report: Path) -> None:
    """The report and each sweep's figures as artifacts of its parent run, where the MLflow UI shows them."""
    import mlflow

    for sweep in sweeps:
        if not sweep.parent_run_id:
            continue
        client = mlflow.MlflowClient(tracking_uri=sweep.tracking_uri)
        try:
            client.log_artifact(sweep.parent_run_id, str(report), "report")
            for path in sweep.files:
                client.log_artifact(sweep.parent_run_id, str(path), "report")
        except Exception as e:  # noqa: BLE001 - the files on disk are the report
            print(f"warning: could not log the report to the parent run {sweep.parent_run_id}: "
                  f"{type(e).__name__}: {e}", file=sys.stderr)
