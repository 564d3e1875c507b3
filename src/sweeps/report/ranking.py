"""Which metric ranks a sweep's rows, which way is better, and which rows no other beats.

The objective is what the runs were optimized for (their ``objective``
param); its direction is the study's, or where there is no study,
``sweeps.objectives``' -- the table the sweeper's hooks read too. Over
several seeds the best is no single row: every row the test cannot tell from
the best is as good a choice, and is marked as one.
"""

from __future__ import annotations

from collections.abc import Callable

from sweeps import objectives
from sweeps.report.rows import Row, Sweep, as_float, as_int
from sweeps.report.stats import tied
from sweeps_optuna.contract import COMPLETE, STATES

# The objectives a Row holds itself; any other is read from its run's metrics.
_ROW_FIELD = {"best_val_acc": "val_acc", "test_acc": "test_acc", "train_acc_at_best": "train_acc",
              "n_params": "n_params", "epochs_run": "epochs"}


def set_objectives(sweep: Sweep, runs: list) -> None:
    """The sweep's objectives, directions and budget from its runs, and each complete row's values."""
    params = next((r.data.params for r in runs if "objective" in r.data.params), {})
    names = [n.strip().strip("'\"") for n in str(params.get("objective", "best_val_acc")).strip("[]").split(",")]
    directions = [d.name == "MAXIMIZE" for d in sweep.study.directions] if sweep.study is not None else []
    if len(directions) != len(names):
        directions = [objectives.maximize(n) for n in names]
    sweep.objectives = list(zip(names, directions))
    sweep.objective = names[0]  # a multi-objective study is ranked by its first objective, and its front marked
    sweep.maximize = directions[0]
    budget = next((r.data.params.get("budget.max_params") for r in runs if "budget.max_params" in r.data.params), None)
    sweep.budget = as_int(budget)
    by_id = {r.info.run_id: r for r in runs}

    def value(row: Row, name: str) -> float | None:
        if name in _ROW_FIELD:
            return getattr(row, _ROW_FIELD[name])
        return as_float(by_id[row.run_id].data.metrics.get(name)) if row.run_id in by_id else None

    for row in sweep.rows:
        if row.state != COMPLETE:
            continue
        row.values = [value(row, name) for name, _ in sweep.objectives]
        row.objective = row.values[0]
    if len(sweep.objectives) > 1:
        mark_pareto_front(sweep.rows, [up for _, up in sweep.objectives])


def mark_pareto_front(rows: list[Row], maximize: list[bool]) -> None:
    """``pareto`` on each complete row that no other complete row dominates: at least as good on
    every objective and better on one (Optuna's ``best_trials``, recomputed from the runs)."""
    scored = [(r, [v if up else -v for v, up in zip(r.values, maximize)]) for r in rows
              if r.state == COMPLETE and r.values and None not in r.values]
    for row, mine in scored:
        row.pareto = not any(all(o >= m for o, m in zip(other, mine)) and other != mine for _, other in scored)


def sort_key(sweep: Sweep) -> Callable[[Row], tuple]:
    """Rows in the contract's order of states, each state best first.

    A complete row ranks by the objective; any other by the validation
    accuracy it reached before it stopped, which says how far it got.
    """
    order = {s: i for i, s in enumerate(STATES)}

    def key(row: Row):
        rank = order.get(row.state, len(STATES))
        value = row.objective if row.state == COMPLETE else row.val_acc
        if value is None:
            return (rank, 1, 0.0, row.trial or 0)
        sign = -1 if (sweep.maximize or row.state != COMPLETE) else 1
        return (rank, 0, sign * value, row.trial or 0)

    return key


def mark_best(sweep: Sweep, ranked: list[Row]) -> Row | None:
    """The best complete row of a single-objective sweep, ``best`` set on it and on every row tied with it."""
    if len(sweep.objectives) > 1:
        return None
    best = next((r for r in ranked if r.state == COMPLETE and r.objective is not None), None)
    if best is None:
        return None
    best.best = True
    top = best.dist(sweep.objective)
    for r in ranked:
        if r.state == COMPLETE and r.objective is not None and tied(top, r.dist(sweep.objective)):
            r.best = True
    return best
