"""``python -m sweeps.report``'s command line: arguments in, one line per outcome out.

A ReportError or an unreadable store is the user's to fix: one paragraph on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from sweeps.report.build import build
from sweeps.cli import print_error
from sweeps.errors import ReportError
from sweeps.report.figures import slug
from sweeps.report.load import load_sweeps
from sweeps.report.targets import Target, resolve_targets


def default_out(targets: list[Target]) -> Path:
    """The sweep dir of a single sweep (the report sits beside its jobs), else ``reports/<experiments>/``."""
    if len(targets) == 1 and targets[0].sweep_dir is not None:
        return targets[0].sweep_dir
    names = [slug(t.experiment) for t in targets]
    return Path("reports") / ("+".join(dict.fromkeys(names))[:100])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sweeps.report",
        description="Markdown tables and PNG figures of one or more sweeps, read from MLflow (and Optuna).")
    parser.add_argument("targets", nargs="+", metavar="SWEEP_DIR_OR_EXPERIMENT",
                        help="a sweep dir (multirun/<date>/<time>) or an MLflow experiment name; several give "
                             "one section each")
    parser.add_argument("--tracking-uri", help="the MLflow store (default: tracking.uri of the sweep, else "
                                               "MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlruns/mlflow.db)")
    parser.add_argument("--storage", help="the Optuna storage URL (default: trial.storage of the sweep, else "
                                          "<cwd>/multirun/optuna.db when present)")
    parser.add_argument("--out", type=Path, help="output dir (default: the sweep dir, or reports/<experiment>/)")
    parser.add_argument("--baseline", metavar="ROW",
                        help="the row every other row of a table is compared with, where rows trained over several "
                             "seeds: a row's label, run name, run id or overrides (e.g. optim=sgd). Default: each "
                             "table's baseline (an ablation's, a seed table's prev_best), else its best row")
    parser.add_argument("--top-k", type=int, default=5, help="runs in the overlaid learning curves (default 5)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from mlflow.exceptions import MlflowException

    try:
        targets = resolve_targets(args.targets, args.tracking_uri, args.storage)
        sweeps = [s for t in targets for s in load_sweeps(t)]
        out = args.out or default_out(targets)
        report = build(sweeps, out, args.top_k, args.baseline)
    except ReportError as e:
        print_error(str(e))
        return 2
    except MlflowException as e:
        print_error(f"could not read the MLflow store ({e.message.splitlines()[0] if e.message else e}). "
                    "Check --tracking-uri (or MLFLOW_TRACKING_URI) and that the server or database is reachable.")
        return 2
    n_files = sum(len(s.files) for s in sweeps)
    print(f"wrote {report} and {n_files} figure(s) in {out}")
    for s in sweeps:
        if s.parent_run_id:
            print(f"logged to parent run {s.parent_run_id} ({s.title}) under artifacts/report/")
    return 0
