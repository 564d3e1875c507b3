"""What tells a sweep's rows apart: their labels, and the ablation axes they lie on.

A label shows only the overrides that vary across the rows it sits among, so
a row reads as its difference from the others; rows that each change one
thing from a common baseline are split into one table per thing changed.
Each table's rows are compared with one of them, its baseline: the
ablation's baseline, a seed table's previous best, else the table's best.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from sweeps.report.names import BARE, name_tokens
from sweeps_optuna.contract import COMPLETE

if TYPE_CHECKING:
    from sweeps.report.rows import Row

# The config group whose options are named rows of a table of configurations.
ROWS_GROUP = "hparams_search/rows/"
# Labels of a row that is a table's own reference point (an ablation's, a seed table's previous best).
BASELINE_LABELS = ("baseline", "prev_best", "prev best", "defaults")


def rounded(value: str) -> str:
    """A float as a label shows it: 4 significant digits (a sampled 0.0012345678901234 is 0.001235)."""
    try:
        number = float(value)
    except ValueError:
        return value
    if any(c in value for c in ".eE") and number == number and abs(number) != float("inf"):
        return f"{number:.4g}"
    return value


def token_text(key: str, value: str) -> str:
    if key.startswith(ROWS_GROUP):
        return value  # a named table row (hparams_search/rows/<table>=<row>) says what it is
    return key if value == BARE else f"{key}={rounded(value)}"


def axis_name(key: str) -> str:
    return key[len(ROWS_GROUP):] if key.startswith(ROWS_GROUP) else key


def label_keys(rows: list[Row]) -> list[str]:
    """The keys that vary across ``rows``, sorted."""
    return [k for k in sorted({k for r in rows for k in r.tokens})
            if len({r.tokens.get(k, "") for r in rows}) > 1]


def label_rows(rows: list[Row]) -> list[str]:
    """The keys that vary across ``rows``; each row's label shows only those."""
    varying = label_keys(rows)
    for r in rows:
        shown = [token_text(k, r.tokens[k]) for k in varying if k in r.tokens]
        r.label = ", ".join(shown) if shown else ("defaults" if len(rows) > 1 else r.run_name)
    return varying


def ablation_axes(rows: list[Row]) -> dict[str, list[Row]] | None:
    """{axis: rows} when the rows are one-factor-at-a-time changes from a baseline, else None.

    A key's baseline is its most common value (absent = the config default)
    when that value is strictly the most common; a row's axis is the set of
    keys where it differs from the baseline.
    """
    keys = sorted({k for r in rows for k in r.tokens})
    base: dict[str, str | None] = {}
    for k in keys:
        counts = Counter(r.tokens.get(k, "") for r in rows).most_common()
        if len(counts) == 1:
            continue  # the same for every row: not an axis
        top = counts[0]
        base[k] = top[0] if top[1] >= 2 and top[1] > counts[1][1] else None
    axes: dict[str, list[Row]] = {}
    baseline: list[Row] = []
    labels: dict[int, str] = {}
    for r in rows:
        diff = [k for k, b in base.items() if b is None or r.tokens.get(k, "") != b]
        if diff:
            axes.setdefault(" + ".join(axis_name(k) for k in diff), []).append(r)
            labels[id(r)] = ", ".join(token_text(k, r.tokens[k]) if k in r.tokens else f"{k}=(default)"
                                      for k in diff)
        else:
            baseline.append(r)
    single = [a for a in axes if " + " not in a]
    n_single = sum(len(axes[a]) for a in single)
    n_other = sum(len(v) for v in axes.values())
    if len(axes) < 2 or len(single) < 2 or n_single * 2 < n_other:
        return None
    out = {}
    for axis, members in axes.items():
        out[axis] = baseline + members
    shown = ", ".join(token_text(k, b) for k, b in base.items() if b)
    for r in rows:
        r.label = labels.get(id(r), f"baseline ({shown})" if shown else "baseline")
    return out


def matches(row: Row, wanted: str) -> bool:
    """Whether ``--baseline wanted`` names the row: its label, run name or id, or overrides it has."""
    if wanted in (row.label, row.run_name, row.run_id) or (row.trial is not None and wanted == f"trial {row.trial}"):
        return True
    tokens = name_tokens(wanted)
    return bool(tokens) and all(row.tokens.get(k) == v for k, v in tokens.items())


def pick_baseline(ranked: list[Row], wanted: str | None = None) -> Row | None:
    """The complete row a table compares the others with: ``wanted``'s, else its own baseline, else its first.

    ``ranked``: the table's rows, best first. A ``wanted`` that no row of this
    table matches gives the table's default (the caller says so).
    """
    complete = [r for r in ranked if r.state == COMPLETE and r.objective is not None]
    if wanted:
        chosen = [r for r in complete if matches(r, wanted)]
        if chosen:
            return chosen[0]
    own = [r for r in complete if r.label.split(" (")[0] in BASELINE_LABELS]
    return (own or complete or [None])[0]
