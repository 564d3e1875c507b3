"""``report.md``: one section per sweep, its tables, figures and notes, logged to its parent run.

The report is written to disk first and logged after, so a tracking server
that refuses the artifacts costs a warning, not the report. Everything in it
goes through ``redact``: a logged report is read by whoever reads the server.
"""

from __future__ import annotations

import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

from sweeps_optuna.storage import redact
from sweeps.report.figures import Made, figures, slug
from sweeps.report.labels import ablation_axes, axis_name, label_keys, label_rows
from sweeps.report.ranking import sort_key
from sweeps.report.rows import Row, Sweep
from sweeps.report.tables import objective_text, pct_text, table
from sweeps_optuna.contract import COMPLETE, STATES


def build(sweeps: list[Sweep], out: Path, top_k: int = 5) -> Path:
    import mlflow

    out.mkdir(parents=True, exist_ok=True)
    many = len(sweeps) > 1
    lines = _preamble(sweeps)
    for sweep in sweeps:
        client = mlflow.MlflowClient(tracking_uri=sweep.tracking_uri)
        lines.extend(_section(sweep, out, f"{slug(sweep.title)}__" if many else "", top_k, client))
    report = out / "report.md"
    report.write_text(redact("\n".join(lines).rstrip() + "\n"))  # it is logged to the tracking server
    _log_to_parents(sweeps, report)
    return report


def _preamble(sweeps: list[Sweep]) -> list[str]:
    lines = ["# Sweep report", ""]
    lines.append(f"Generated {datetime.now():%Y-%m-%d %H:%M} by `python -m sweeps.report` from "
                 + ", ".join(f"`{u}`" for u in dict.fromkeys(s.tracking_uri for s in sweeps)) + ".")
    lines.append("Accuracies in percent; the Run column is the MLflow run id; ★ marks the best complete run"
                 + ("; ◆ a run on the Pareto front of a multi-objective sweep." if any(
                     len(s.objectives) > 1 for s in sweeps) else "."))
    lines.append("")
    return lines


def _section(sweep: Sweep, out: Path, prefix: str, top_k: int, client) -> list[str]:
    label_rows(sweep.rows)
    ranked = sorted(sweep.rows, key=sort_key(sweep))
    multi = len(sweep.objectives) > 1
    best = None if multi else next((r for r in ranked if r.state == COMPLETE and r.objective is not None), None)
    if best is not None:
        best.best = True
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
    if axes:
        for axis, rows in axes.items():
            lines.extend([f"### Ablation: {axis}", "", *table(rows, sweep), ""])
    else:
        keys = label_keys(sweep.rows)
        lines.append("### Results" + (f": {', '.join(axis_name(k) for k in keys)}" if keys else ""))
        lines.extend(["", *table(sweep.rows, sweep), ""])
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
        lines.append(f"Best: **{best.label}**, validation {pct_text(best.val_acc)}%, test {pct_text(best.test_acc)}%, "
                     f"{best.n_params:,} parameters" if best.n_params is not None else
                     f"Best: **{best.label}**, validation {pct_text(best.val_acc)}%")
        lines[-1] += f" (run `{best.run_id}`)." if best.run_id else "."
    return lines


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
