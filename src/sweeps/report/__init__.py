"""``python -m sweeps.report <sweep dir | experiment>...``: tables and figures of a sweep.

Reads the MLflow store (and the Optuna study, where one is found) and writes
``report.md`` -- the seeds' table format, one table per ablation axis -- plus
PNG figures: validation accuracy against parameter count with the budget line
and the Pareto front, one bar chart per ablation axis, Optuna's optimization
history and hyperparameter importances, and the learning curves of the best
trials. The files are written into the sweep dir (or ``--out``, default
``reports/<experiment>/``) and logged as artifacts to the sweep's parent run.

Several targets give one section per experiment (or per study, when an
experiment holds several sweeps).

A trial trained over several seeds (replicates) is one row whose cells are
``mean ± std (n)``; each table then compares its rows with a baseline row
(Welch's t-test, 95% CIs) and ★ goes to every row tied with the best.

One module per step, each importing only those before it: ``targets`` (what a command-line target points at), ``names`` (a run name's
overrides), ``stats`` (a row's distribution over seeds, Welch's test), ``rows`` (Row and Sweep, from runs and trials), ``ranking``
(objectives and the Pareto front), ``load`` (a target's runs and study into
Sweeps), ``labels`` (what tells rows apart, ablation axes), ``tables``
(markdown), ``figures``, ``build`` (report.md, logged to the parent run) and
``cli``. MLflow, Optuna and matplotlib are imported where they are used, so
that importing the package does not load them.
"""

from sweeps.errors import ReportError
from sweeps.report.build import build
from sweeps.report.cli import default_out, main
from sweeps.report.figures import figures
from sweeps.report.labels import ablation_axes, label_keys, label_rows, pick_baseline
from sweeps.report.load import load_sweeps, open_study
from sweeps.report.names import name_tokens, split_tokens
from sweeps.report.ranking import mark_best, mark_pareto_front, set_objectives, sort_key
from sweeps.report.rows import Replicate, Row, Sweep, row_from_run, row_from_trial
from sweeps.report.stats import Diff, Dist, dist, welch
from sweeps.report.tables import HEADER, replicated, state_text, table
from sweeps.report.targets import Target, resolve_targets, target_from_dir

__all__ = [
    "HEADER", "Diff", "Dist", "Replicate", "ReportError", "Row", "Sweep", "Target", "ablation_axes", "build",
    "default_out", "dist", "figures", "label_keys", "label_rows", "load_sweeps", "main", "mark_best",
    "mark_pareto_front", "name_tokens", "open_study", "pick_baseline", "replicated", "resolve_targets",
    "row_from_run", "row_from_trial", "set_objectives", "sort_key", "split_tokens", "state_text", "table",
    "target_from_dir", "welch",
]
