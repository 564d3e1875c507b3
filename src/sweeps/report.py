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
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra_plugins.sweeps_optuna_sweeper.storage import REDACTED, STORAGE_ENV, default_storage_url, redact, sqlite_path
from sweeps.config import select_or_none as _select
from sweeps.tracking import local_store_uri

HEADER = "| Method | # of parameters | # of epochs | Train Accuracy | Validation Accuracy | Test Accuracy | Run |"
ALIGN = "| :----: | :----: | :----: | :----: | :----: | :----: | :----: |"
STATES = ("COMPLETE", "PRUNED", "INTERRUPTED", "RUNNING", "FAIL", "INFEASIBLE")
MINIMIZED = ("best_val_loss", "test_loss", "n_params", "epochs_run", "wall_time_s")
TOKEN_SKIP = ("trial.", "hydra.", "tracking.", "paths.")
ROWS_GROUP = "hparams_search/rows/"
BARE = "\x00"  # the value of a run-name token without '=' (e.g. a hand-written run name)

log = logging.getLogger("sweeps.report")


class ReportError(Exception):
    """A user-facing problem, printed as one paragraph (exit status 2)."""


# ----------------------------------------------------------------- the data


@dataclass
class Row:
    run_name: str
    run_id: str | None = None
    trial: int | None = None
    state: str = "COMPLETE"
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


@dataclass
class Target:
    """Where one command-line target points: an experiment in a store, maybe a study."""

    experiment: str
    tracking_uri: str
    sweep_dir: Path | None = None
    study_name: str | None = None
    storage: str | None = None


# -------------------------------------------------------- finding the sweep


def _load_job_config(job: Path):
    """A job's composed config with ``${hydra:...}`` resolvable from its hydra.yaml."""
    from omegaconf import OmegaConf

    text = (job / ".hydra" / "config.yaml").read_text().replace("${hydra:", "${hydra.")
    cfg = OmegaConf.create(text)
    hydra_yaml = job / ".hydra" / "hydra.yaml"
    if hydra_yaml.is_file():
        try:
            hydra_cfg = OmegaConf.load(hydra_yaml)
            cfg = OmegaConf.merge(cfg, {"hydra": {"runtime": hydra_cfg.hydra.runtime}})
        except Exception:  # noqa: BLE001 - best effort; paths fall back below
            pass
    return cfg


def _job_dirs(path: Path) -> list[Path]:
    if (path / ".hydra" / "config.yaml").is_file():
        return [path]
    jobs = [p.parent.parent for p in path.glob("*/.hydra/config.yaml")]
    return sorted(jobs, key=lambda p: (len(p.name), p.name))


def _default_store(root: Path) -> str:
    return local_store_uri(root / "mlruns")


def target_from_dir(path: Path, uri_flag: str | None, storage_flag: str | None) -> Target | None:
    """The experiment, store and study a sweep dir (or a single run dir) belongs to."""
    from omegaconf import OmegaConf

    jobs = _job_dirs(path)
    results = path / "optimization_results.yaml"
    if not jobs and not results.is_file():
        return None
    experiment = study = storage = uri = mlruns = None
    for job in jobs:
        cfg = _load_job_config(job)
        experiment = experiment or _select(cfg, "tracking.experiment")
        study = study or _select(cfg, "trial.study")
        storage = storage or _select(cfg, "trial.storage")
        uri = uri or _select(cfg, "tracking.uri")
        mlruns = mlruns or _select(cfg, "paths.mlruns")
        if experiment and study and storage and mlruns:
            break
    if results.is_file():
        res = OmegaConf.to_container(OmegaConf.load(results), resolve=False) or {}
        experiment = experiment or res.get("experiment")
        study = study or res.get("study_name") or res.get("name")
        storage = storage or res.get("storage")
    if not experiment:
        raise ReportError(
            f"{path} looks like a sweep dir but none of its jobs' .hydra/config.yaml names "
            "tracking.experiment, so its MLflow experiment is unknown; pass the experiment name "
            "instead (python -m sweeps.report <experiment>)."
        )
    root = path.resolve().parents[2] if len(path.resolve().parents) > 2 else path.resolve()
    if uri_flag:
        uri = uri_flag
    elif not uri:
        uri = os.environ.get("MLFLOW_TRACKING_URI") or (
            local_store_uri(str(mlruns)) if mlruns else _default_store(root))
    if storage and REDACTED in str(storage):  # the results file hides the password: take the URL from its env var
        storage = os.environ.get(STORAGE_ENV)
    return Target(str(experiment), str(uri), path, str(study) if study else None,
                  storage_flag or (str(storage) if storage else None))


def _check_store(uri: str) -> None:
    db = sqlite_path(uri)
    if db is not None:
        if not db.is_file():
            raise ReportError(
                f"there is no MLflow store at {uri} (no file {db}). Run the report from the project "
                "root where sweeps.train wrote mlruns/, or pass --tracking-uri URI (or set "
                "MLFLOW_TRACKING_URI) to the store the runs were recorded in."
            )


def _client(uri: str):
    import mlflow

    _check_store(uri)
    return mlflow.MlflowClient(tracking_uri=uri)


def resolve_targets(names: list[str], uri_flag: str | None, storage_flag: str | None) -> list[Target]:
    default_uri = uri_flag or os.environ.get("MLFLOW_TRACKING_URI") or _default_store(Path.cwd())
    targets = []
    for name in names:
        path = Path(name)
        if path.is_dir():
            target = target_from_dir(path, uri_flag, storage_flag)
            if target is not None:
                targets.append(target)
                continue
        _check_store(default_uri)
        client = _client(default_uri)
        if client.get_experiment_by_name(name) is not None:
            targets.append(Target(name, default_uri, storage=storage_flag))
            continue
        known = sorted(e.name for e in client.search_experiments() if e.name != "Default")
        what = (f"{name} is a directory but not a sweep dir (no optimization_results.yaml and no "
                "job subdirectory with .hydra/config.yaml)" if path.is_dir()
                else f"{name!r} is neither a sweep dir nor an MLflow experiment in {default_uri}")
        listing = ", ".join(known) if known else "none -- the store holds no experiments yet"
        raise ReportError(
            f"{what}. Pass a sweep dir (multirun/<date>/<time>) or one of the known experiments: "
            f"{listing}. Use --tracking-uri URI for another store."
        )
    return targets


# --------------------------------------------------------- reading the runs


def _open_study(name: str | None, storage: str | None, notes: list[str]):
    if not name or not storage:
        return None
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = str(storage)
    try:
        if storage.startswith("journal://"):
            path = Path(storage[len("journal://"):])
            if not path.is_file():
                notes.append(f"Optuna journal {path} not found; Optuna figures skipped.")
                return None
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            backend = JournalStorage(JournalFileBackend(str(path)))
        else:
            db = sqlite_path(storage)
            if db is not None and not db.is_file():
                notes.append(f"Optuna storage {storage} not found; Optuna figures skipped.")
                return None
            backend = storage
        return optuna.load_study(study_name=name, storage=backend)
    except Exception as e:  # noqa: BLE001 - the MLflow side still makes a report
        notes.append(f"Optuna study {name!r} could not be loaded from {storage} ({type(e).__name__}: {e}); "
                     "Optuna figures skipped.")
        return None


def _all_runs(client, experiment_id: str) -> list:
    from mlflow.entities import ViewType

    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                                  page_token=token, order_by=["attributes.start_time ASC"])
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def split_tokens(run_name: str) -> list[str]:
    """``optim=sgd,model.channels=[8,16]`` -> ['optim=sgd', 'model.channels=[8,16]']."""
    tokens, depth, cur = [], 0, ""
    for ch in run_name:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth = max(depth - 1, 0)
        if ch == "," and depth == 0:
            tokens.append(cur)
            cur = ""
        else:
            cur += ch
    tokens.append(cur)
    return [t.strip() for t in tokens if t.strip()]


def name_tokens(run_name: str) -> dict[str, str]:
    """{key: value} of a run name made of overrides; 'defaults' (no override) is {}."""
    out = {}
    if run_name == "defaults":
        return out
    for token in split_tokens(run_name):
        key, eq, value = token.partition("=")
        key = key.lstrip("+~")
        if key.startswith(TOKEN_SKIP):
            continue
        out[key] = value if eq else BARE
    return out


def _int(value: Any) -> int | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else int(round(v))


def _float(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


_STATUS_STATE = {"FINISHED": "COMPLETE", "FAILED": "FAIL", "KILLED": "INTERRUPTED", "RUNNING": "RUNNING",
                 "SCHEDULED": "RUNNING"}


def row_from_run(client, run) -> Row:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    # A long name was cut to fit MLflow's 250 characters; the tag keeps every override.
    name = tags.get("sweeps.overrides") or run.info.run_name or tags.get("mlflow.runName") or run.info.run_id
    state = tags.get("sweeps.state") or _STATUS_STATE.get(run.info.status, run.info.status)
    row = Row(run_name=name, run_id=run.info.run_id, trial=_int(tags.get("sweeps.trial")), state=state,
              reason=tags.get("sweeps.reason", ""), tokens=name_tokens(name))
    row.n_params = _int(params.get("n_params")) or _int(metrics.get("n_params"))
    if state == "COMPLETE":
        row.epochs = _int(metrics.get("epochs_run"))
        row.best_epoch = _int(metrics.get("best_epoch"))
        row.val_acc = _float(metrics.get("best_val_acc"))
        row.test_acc = _float(metrics.get("test_acc"))
        row.train_acc = _float(metrics.get("train_acc_at_best"))
    elif "val_acc" in metrics:
        history = client.get_metric_history(run.info.run_id, "val_acc")
        if history:
            best = max(history, key=lambda m: m.value)
            row.val_acc, row.best_epoch = best.value, best.step
            row.epochs = max(m.step for m in history)
            row.train_acc = next((m.value for m in client.get_metric_history(run.info.run_id, "train_acc")
                                  if m.step == best.step), None)
    return row


def row_from_trial(trial) -> Row:
    """A row for an Optuna trial that has no MLflow run (e.g. refused before it started)."""
    attrs = trial.user_attrs
    state = "INFEASIBLE" if attrs.get("infeasible") else {"COMPLETE": "COMPLETE", "PRUNED": "PRUNED",
                                                           "FAIL": "FAIL", "RUNNING": "RUNNING",
                                                           "WAITING": "RUNNING"}.get(trial.state.name, trial.state.name)
    overrides = attrs.get("overrides")  # the sweeper's command-line overrides of the trial
    if isinstance(overrides, list) and overrides:
        name = ",".join(str(o) for o in overrides)
    else:
        name = ",".join(f"{k}={v}" for k, v in trial.params.items()) or f"trial {trial.number}"
    row = Row(run_name=name, trial=trial.number, state=state,
              reason=str(attrs.get("fail_reason") or attrs.get("reason") or ""),
              n_params=_int(attrs.get("n_params")), tokens=name_tokens(name))
    if trial.intermediate_values:
        step = max(trial.intermediate_values)
        row.epochs = step
    if state == "COMPLETE" and trial.values:
        row.objective = trial.values[0]
    return row


def load_sweeps(target: Target) -> list[Sweep]:
    """One Sweep per study (parent run) of the target's experiment; single runs form their own."""
    client = _client(target.tracking_uri)
    exp = client.get_experiment_by_name(target.experiment)
    if exp is None:
        raise ReportError(
            f"the sweep dir {target.sweep_dir} names the MLflow experiment {target.experiment!r}, which is "
            f"not in {target.tracking_uri}. Its runs may have been recorded elsewhere: pass --tracking-uri URI."
        )
    runs = _all_runs(client, exp.experiment_id)
    if not runs:
        raise ReportError(
            f"the MLflow experiment {target.experiment!r} in {target.tracking_uri} has no runs (it may have "
            "been created by a sweep that was stopped before its first trial started, or its runs were "
            "deleted). Run the sweep again, or pick another experiment."
        )
    by_id = {r.info.run_id: r for r in runs}
    parents = {r.data.tags["mlflow.parentRunId"] for r in runs if "mlflow.parentRunId" in r.data.tags}
    parents |= {r.info.run_id for r in runs if r.data.tags.get("sweeps.role") == "parent"}
    groups: dict[str | None, list] = {}
    for r in runs:
        if r.info.run_id in parents:
            continue
        groups.setdefault(r.data.tags.get("mlflow.parentRunId"), []).append(r)
    # A sweep whose trials have not started yet still has its parent run.
    for pid in parents:
        groups.setdefault(pid, [])

    notes: list[str] = []
    study = _open_study(target.study_name, target.storage, notes)
    wanted_parent = study.user_attrs.get("mlflow_parent_run_id") if study is not None else None
    if target.study_name is not None:
        if wanted_parent is None:
            wanted_parent = next((pid for pid in parents if pid in by_id and by_id[pid].info.run_name ==
                                  target.study_name), None)
        if wanted_parent is None:
            wanted_parent = next((pid for pid, rs in groups.items() if pid and any(
                r.data.tags.get("sweeps.study") == target.study_name for r in rs)), None)
        if wanted_parent is not None:
            groups = {wanted_parent: groups.get(wanted_parent, [])}
        else:
            groups = {k: [r for r in v if r.data.tags.get("sweeps.study") == target.study_name]
                      for k, v in groups.items()}
            groups = {k: v for k, v in groups.items() if v}

    sweeps = []
    for pid, members in groups.items():
        study_name = target.study_name
        if study_name is None and pid in by_id:
            study_name = by_id[pid].info.run_name
        if study_name is None:
            study_name = next((r.data.tags["sweeps.study"] for r in members if "sweeps.study" in r.data.tags), None)
        sweep = Sweep(target.experiment, exp.experiment_id, target.tracking_uri, study_name, pid)
        sweep.notes = list(notes)
        if study is not None and (target.study_name is not None or study.study_name == study_name):
            sweep.study = study
        elif study_name and target.storage is None and target.sweep_dir is None:
            default_db = Path.cwd() / "multirun" / "optuna.db"
            if default_db.is_file() and pid is not None:
                sweep.study = _open_study(study_name, default_storage_url(Path.cwd()), sweep.notes)
        sweep.rows = [row_from_run(client, r) for r in members]
        _merge_trials(sweep)
        _objective(sweep, members + ([by_id[pid]] if pid in by_id else []))
        if not sweep.rows:
            sweep.notes.append("the sweep has no trials yet.")
        sweeps.append(sweep)
    if not sweeps or not any(s.rows for s in sweeps):
        raise ReportError(
            f"the MLflow experiment {target.experiment!r} in {target.tracking_uri} has no trial runs"
            + (f" for study {target.study_name!r}" if target.study_name else "")
            + " (only parent runs, or none). Wait for the sweep's first trials, or pick another experiment."
        )
    return [s for s in sweeps if s.rows]


def _merge_trials(sweep: Sweep) -> None:
    """Add the Optuna trials that have no MLflow run; fill missing counts from the study."""
    if sweep.study is None:
        return
    by_run = {r.run_id: r for r in sweep.rows if r.run_id}
    by_trial = {r.trial: r for r in sweep.rows if r.trial is not None}
    for trial in sweep.study.get_trials(deepcopy=False):
        row = by_run.get(trial.user_attrs.get("mlflow_run_id")) or by_trial.get(trial.number)
        if row is None:
            sweep.rows.append(row_from_trial(trial))
            continue
        if row.trial is None:
            row.trial = trial.number
        if row.n_params is None:
            row.n_params = _int(trial.user_attrs.get("n_params"))
        if trial.user_attrs.get("infeasible") and row.state != "INFEASIBLE":
            row.state = "INFEASIBLE"
        reason = trial.user_attrs.get("fail_reason") or trial.user_attrs.get("reason")
        if not row.reason and reason:
            row.reason = str(reason)


def _objective(sweep: Sweep, runs: list) -> None:
    params = next((r.data.params for r in runs if "objective" in r.data.params), {})
    names = [n.strip().strip("'\"") for n in str(params.get("objective", "best_val_acc")).strip("[]").split(",")]
    directions = [d.name == "MAXIMIZE" for d in sweep.study.directions] if sweep.study is not None else []
    if len(directions) != len(names):
        directions = [n not in MINIMIZED for n in names]
    sweep.objectives = list(zip(names, directions))
    objective = names[0]  # a multi-objective study is ranked by its first objective, and its front marked
    sweep.objective = objective
    sweep.maximize = directions[0]
    budget = next((r.data.params.get("budget.max_params") for r in runs if "budget.max_params" in r.data.params), None)
    sweep.budget = _int(budget)
    lookup = {"best_val_acc": "val_acc", "test_acc": "test_acc", "train_acc_at_best": "train_acc", "n_params": "n_params",
              "epochs_run": "epochs"}
    by_id = {r.info.run_id: r for r in runs}

    def value(row: Row, name: str) -> float | None:
        if name in lookup:
            return getattr(row, lookup[name])
        return _float(by_id[row.run_id].data.metrics.get(name)) if row.run_id in by_id else None

    for row in sweep.rows:
        if row.state != "COMPLETE":
            continue
        row.values = [value(row, name) for name, _ in sweep.objectives]
        row.objective = row.values[0]
    if len(sweep.objectives) > 1:
        mark_pareto_front(sweep.rows, [maximize for _, maximize in sweep.objectives])


def mark_pareto_front(rows: list[Row], maximize: list[bool]) -> None:
    """``pareto`` on each complete row that no other complete row dominates: at least as good on
    every objective and better on one (Optuna's ``best_trials``, recomputed from the runs)."""
    scored = [(r, [v if up else -v for v, up in zip(r.values, maximize)]) for r in rows
              if r.state == "COMPLETE" and r.values and None not in r.values]
    for row, mine in scored:
        row.pareto = not any(all(o >= m for o, m in zip(other, mine)) and other != mine for _, other in scored)


# ------------------------------------------------------------ the tables


def _objective_text(name: str, value: float) -> str:
    if name == "n_params" or name == "epochs_run":
        return f"{name} {int(value):,}"
    return f"{name} {_pct(value)}%" if name.endswith("_acc") or name == "train_acc_at_best" else f"{name} {value:.4g}"


def _sort_key(sweep: Sweep):
    order = {s: i for i, s in enumerate(STATES)}

    def key(row: Row):
        rank = order.get(row.state, len(STATES))
        value = row.objective if row.state == "COMPLETE" else row.val_acc
        if value is None:
            return (rank, 1, 0.0, row.trial or 0)
        sign = -1 if (sweep.maximize or row.state != "COMPLETE") else 1
        return (rank, 0, sign * value, row.trial or 0)

    return key


def label_rows(rows: list[Row]) -> list[str]:
    """The keys that vary across ``rows``; each row's label shows only those."""
    keys = sorted({k for r in rows for k in r.tokens})
    varying = [k for k in keys if len({r.tokens.get(k, "") for r in rows}) > 1]
    for r in rows:
        shown = [_token(k, r.tokens[k]) for k in varying if k in r.tokens]
        r.label = ", ".join(shown) if shown else ("defaults" if len(rows) > 1 else r.run_name)
    return varying


def _token(key: str, value: str) -> str:
    if key.startswith(ROWS_GROUP):
        return value  # a named table row (hparams_search/rows/<table>=<row>) says what it is
    return key if value == BARE else f"{key}={value}"


def _axis_name(key: str) -> str:
    return key[len(ROWS_GROUP):] if key.startswith(ROWS_GROUP) else key


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
            axes.setdefault(" + ".join(_axis_name(k) for k in diff), []).append(r)
            labels[id(r)] = ", ".join(_token(k, r.tokens[k]) if k in r.tokens else f"{k}=(default)" for k in diff)
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
    shown = ", ".join(_token(k, b) for k, b in base.items() if b)
    for r in rows:
        r.label = labels.get(id(r), f"baseline ({shown})" if shown else "baseline")
    return out


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def state_text(row: Row, budget: int | None) -> str:
    if row.state == "PRUNED":
        return f"PRUNED at epoch {row.epochs}" if row.epochs else "PRUNED"
    if row.state == "INTERRUPTED":
        return f"INTERRUPTED at epoch {row.epochs}" if row.epochs else "INTERRUPTED"
    if row.state == "RUNNING":
        return "RUNNING"
    if row.state == "INFEASIBLE":
        if row.n_params is not None and budget:
            return f"INFEASIBLE: {row.n_params:,} params, {row.n_params - budget:,} over the {budget:,} budget"
        return "INFEASIBLE: " + (row.reason[:100] or "over the parameter budget")
    reason = row.reason.strip().splitlines()[0] if row.reason.strip() else "no reason recorded"
    return f"FAIL: {reason[:100]}" + ("…" if len(reason) > 100 else "")


def table(rows: list[Row], sweep: Sweep) -> list[str]:
    lines = [HEADER, ALIGN]
    for r in sorted(rows, key=_sort_key(sweep)):
        method = f"**★ {r.label}**" if r.best else (f"◆ {r.label}" if r.pareto else r.label)
        complete = r.state == "COMPLETE"
        val = _pct(r.val_acc) if r.val_acc is not None else "–"
        if r.best:
            val = f"**{val}**"
        test = _pct(r.test_acc) if complete else state_text(r, sweep.budget)
        run = f"`{r.run_id}`" if r.run_id else (f"trial {r.trial}" if r.trial is not None else "–")
        cells = [method, f"{r.n_params:,}" if r.n_params is not None else "–",
                 str(r.epochs) if r.epochs is not None else ("0" if r.state == "INFEASIBLE" else "–"),
                 _pct(r.train_acc), val, test, run]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


# ----------------------------------------------------------- the figures


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:60] or "x"


def figures(sweep: Sweep, out: Path, prefix: str, axes: dict[str, list[Row]] | None, top_k: int,
            client) -> list[tuple[str, Path]]:
    from sweeps import plots

    made: list[tuple[str, Path]] = []

    def attempt(title: str, fn, *args, **kwargs):
        try:
            made.append((title, fn(*args, **kwargs)))
        except Exception as e:  # noqa: BLE001 - one figure failing does not sink the report
            sweep.notes.append(f"{title}: not drawn ({type(e).__name__}: {e}).")

    points = [{"n_params": r.n_params, "val_acc": r.val_acc, "label": r.label, "state": r.state}
              for r in sweep.rows]
    attempt("Validation accuracy vs parameter count", plots.accuracy_vs_params, points,
            out / f"{prefix}val_acc_vs_params.png", sweep.budget,
            f"{sweep.title}: validation accuracy vs parameters")

    groups = axes or {"trials": sweep.rows}
    for axis, rows in groups.items():
        ranked = [r for r in sorted(rows, key=_sort_key(sweep)) if r.val_acc is not None][:20]
        if not ranked:
            continue
        bars = [{"label": r.label, "val_acc": r.val_acc, "test_acc": r.test_acc, "best": r.best} for r in ranked]
        title = f"Ablation: {axis}" if axes else "Trials by validation accuracy"
        attempt(title, plots.axis_bars, axis if axes else ", ".join(map(_axis_name, label_keys(sweep.rows))) or "run",
                bars, out / f"{prefix}ablation_{_slug(axis)}.png",
                f"{sweep.title}: {axis}" if axes else f"{sweep.title}: top {len(bars)} runs")

    if sweep.study is not None:
        study = sweep.study
        complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
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
    else:
        sweep.notes.append("No Optuna study found for this experiment: optimization history and importances skipped.")

    best = [r for r in sorted(sweep.rows, key=_sort_key(sweep)) if r.run_id and r.state == "COMPLETE"][:top_k]
    if best:
        curves = {}
        for r in best:
            curves[r.label or r.run_name] = {
                key: [(m.step, m.value) for m in client.get_metric_history(r.run_id, key)]
                for key in ("val_acc", "val_loss", "train_loss")}
        attempt(f"Learning curves of the top {len(best)}", plots.overlaid_curves, curves,
                out / f"{prefix}top_k_learning_curves.png", f"{sweep.title}: top {len(best)} runs")
    return made


def label_keys(rows: list[Row]) -> list[str]:
    return [k for k in sorted({k for r in rows for k in r.tokens})
            if len({r.tokens.get(k, "") for r in rows}) > 1]


def _optuna(kind: str, study, path: Path, objective: str) -> Path:
    from sweeps import plots

    if len(study.directions) > 1:
        return _optuna_multi(kind, study, path, objective)
    return plots.optuna_figure(kind, study, path, target_name=objective)


def _optuna_multi(kind: str, study, path: Path, objective: str) -> Path:
    import warnings

    import optuna.visualization.matplotlib as ovm

    from sweeps import plots

    import matplotlib.pyplot as plt

    with warnings.catch_warnings(), plt.style.context("default"):
        warnings.simplefilter("ignore")
        fn = ovm.plot_optimization_history if kind == "history" else ovm.plot_param_importances
        ax = fn(study, target=lambda t: t.values[0], target_name=objective)
    fig = ax.figure
    fig.set_size_inches(8, 5)
    return plots._save(fig, path)


# ------------------------------------------------------------ the report


def build(sweeps: list[Sweep], out: Path, top_k: int = 5) -> Path:
    import mlflow

    out.mkdir(parents=True, exist_ok=True)
    many = len(sweeps) > 1
    lines = ["# Sweep report", ""]
    lines.append(f"Generated {datetime.now():%Y-%m-%d %H:%M} by `python -m sweeps.report` from "
                 + ", ".join(f"`{u}`" for u in dict.fromkeys(s.tracking_uri for s in sweeps)) + ".")
    lines.append("Accuracies in percent; the Run column is the MLflow run id; ★ marks the best complete run"
                 + ("; ◆ a run on the Pareto front of a multi-objective sweep." if any(
                     len(s.objectives) > 1 for s in sweeps) else "."))
    lines.append("")
    for sweep in sweeps:
        client = mlflow.MlflowClient(tracking_uri=sweep.tracking_uri)
        prefix = f"{_slug(sweep.title)}__" if many else ""
        label_rows(sweep.rows)
        ranked = sorted(sweep.rows, key=_sort_key(sweep))
        multi = len(sweep.objectives) > 1
        best = None if multi else next((r for r in ranked if r.state == "COMPLETE" and r.objective is not None), None)
        if best is not None:
            best.best = True
        axes = ablation_axes(sweep.rows)
        counts = Counter(r.state for r in sweep.rows)
        lines.append(f"## {sweep.title}")
        lines.append("")
        meta = [f"experiment `{sweep.experiment}` (id {sweep.experiment_id})"]
        if sweep.study_name:
            meta.append(f"study `{sweep.study_name}`")
        if sweep.parent_run_id:
            meta.append(f"parent run `{sweep.parent_run_id}`")
        lines.append("; ".join(meta) + ".")
        lines.append("")
        summary = ", ".join(f"{counts[s]} {s.lower()}" for s in STATES if counts[s])
        lines.append(f"{len(sweep.rows)} runs: {summary}. Ranked by `{sweep.objective}` "
                     f"({'higher' if sweep.maximize else 'lower'} is better)"
                     + (f"; parameter budget {sweep.budget:,}." if sweep.budget else "."))
        if multi:
            front = [r for r in ranked if r.pareto]
            goals = " and ".join(f"`{n}` ({'higher' if up else 'lower'} is better)" for n, up in sweep.objectives)
            lines.append(f"Multi-objective: {goals}. ◆ marks the {len(front)} run(s) on the Pareto front, "
                         "where no other complete run is at least as good on every objective and better on one: "
                         + "; ".join(f"**{r.label}** ({', '.join(_objective_text(n, v) for (n, _), v in zip(sweep.objectives, r.values))})"
                                     for r in front) + ".")
        if best is not None:
            lines.append(f"Best: **{best.label}**, validation {_pct(best.val_acc)}%, test {_pct(best.test_acc)}%, "
                         f"{best.n_params:,} parameters" if best.n_params is not None else
                         f"Best: **{best.label}**, validation {_pct(best.val_acc)}%")
            lines[-1] += f" (run `{best.run_id}`)." if best.run_id else "."
        lines.append("")
        if axes:
            for axis, rows in axes.items():
                lines.append(f"### Ablation: {axis}")
                lines.append("")
                lines.extend(table(rows, sweep))
                lines.append("")
        else:
            keys = label_keys(sweep.rows)
            lines.append("### Results" + (f": {', '.join(_axis_name(k) for k in keys)}" if keys else ""))
            lines.append("")
            lines.extend(table(sweep.rows, sweep))
            lines.append("")
        made = figures(sweep, out, prefix, axes, top_k, client)
        sweep.files = [p for _, p in made]
        if made:
            lines.append("### Figures")
            lines.append("")
            for title, path in made:
                lines.append(f"**{title}**")
                lines.append("")
                lines.append(f"![{title}]({path.name})")
                lines.append("")
        if sweep.notes:
            lines.append("Notes:")
            lines.append("")
            lines.extend(f"- {n}" for n in dict.fromkeys(sweep.notes))
            lines.append("")
    report = out / "report.md"
    report.write_text(redact("\n".join(lines).rstrip() + "\n"))  # it is logged to the tracking server
    for sweep in sweeps:
        if sweep.parent_run_id:
            client = mlflow.MlflowClient(tracking_uri=sweep.tracking_uri)
            try:
                client.log_artifact(sweep.parent_run_id, str(report), "report")
                for path in sweep.files:
                    client.log_artifact(sweep.parent_run_id, str(path), "report")
            except Exception as e:  # noqa: BLE001 - the files on disk are the report
                print(f"warning: could not log the report to the parent run {sweep.parent_run_id}: "
                      f"{type(e).__name__}: {e}", file=sys.stderr)
    return report


def default_out(targets: list[Target]) -> Path:
    if len(targets) == 1 and targets[0].sweep_dir is not None:
        return targets[0].sweep_dir
    names = [_slug(t.experiment) for t in targets]
    return Path("reports") / ("+".join(dict.fromkeys(names))[:100])


def main(argv: list[str] | None = None) -> int:
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
    parser.add_argument("--top-k", type=int, default=5, help="runs in the overlaid learning curves (default 5)")
    args = parser.parse_args(argv)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from mlflow.exceptions import MlflowException

    try:
        targets = resolve_targets(args.targets, args.tracking_uri, args.storage)
        sweeps = [s for t in targets for s in load_sweeps(t)]
        out = args.out or default_out(targets)
        report = build(sweeps, out, args.top_k)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except MlflowException as e:
        print(f"error: could not read the MLflow store ({e.message.splitlines()[0] if e.message else e}). "
              "Check --tracking-uri (or MLFLOW_TRACKING_URI) and that the server or database is reachable.",
              file=sys.stderr)
        return 2
    n_files = sum(len(s.files) for s in sweeps)
    print(f"wrote {report} and {n_files} figure(s) in {out}")
    for s in sweeps:
        if s.parent_run_id:
            print(f"logged to parent run {s.parent_run_id} ({s.title}) under artifacts/report/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
