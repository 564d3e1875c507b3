"""A target's MLflow runs and Optuna study, read into one Sweep per study.

An experiment may hold several sweeps (one parent run each) and single runs
besides; a sweep's rows are its parent's children plus the study's trials that
never got a run. The study is optional: without it the report is only the
MLflow side, and a note says why. A replicate's run is a child of its trial's
run, not a trial: it belongs to that trial's row, and makes no sweep of it.
"""

from __future__ import annotations

from pathlib import Path

from sweeps.errors import ReportError
from sweeps.report.ranking import set_objectives
from sweeps.report.rows import Sweep, merge_trials, row_from_run
from sweeps.report.targets import Target, default_study_storage, mlflow_client
from sweeps_optuna.contract import (PARENT_RUN_ID, ROLE_PARENT, TAG_REPLICATE, TAG_REPLICATE_OF, TAG_ROLE,
                                    TAG_STUDY)

_PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag on a nested run


def _missing_storage_note(storage: str) -> str | None:
    """Why a journal or SQLite study cannot be there: opening it would create an empty one."""
    from sweeps_optuna.storage import JOURNAL_PREFIX, sqlite_path

    if storage.startswith(JOURNAL_PREFIX):
        path = Path(storage[len(JOURNAL_PREFIX):])
        return None if path.is_file() else f"Optuna journal {path} not found; Optuna figures skipped."
    db = sqlite_path(storage)
    if db is not None and not db.is_file():
        return f"Optuna storage {storage} not found; Optuna figures skipped."
    return None


def open_study(name: str | None, storage: str | None, notes: list[str]):
    """The study, or None with a note: the MLflow side still makes a report."""
    if not name or not storage:
        return None
    import optuna

    from sweeps_optuna.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = str(storage)
    try:
        missing = _missing_storage_note(storage)
        if missing:
            notes.append(missing)
            return None
        return optuna.load_study(study_name=name, storage=open_storage(storage))
    except Exception as e:  # noqa: BLE001 - the MLflow side still makes a report
        notes.append(f"Optuna study {name!r} could not be loaded from {storage} ({type(e).__name__}: {e}); "
                     "Optuna figures skipped.")
        return None


def _all_runs(store, experiment_id: str) -> list:
    from mlflow.entities import ViewType

    runs, token = [], None
    while True:
        page = store.search_runs([experiment_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                                 page_token=token, order_by=["attributes.start_time ASC"])
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _is_replicate(run) -> bool:
    return TAG_REPLICATE in run.data.tags or TAG_REPLICATE_OF in run.data.tags


def _replicates(runs: list) -> dict[str, list]:
    """{trial run id: its replicates' runs}."""
    out: dict[str, list] = {}
    for r in runs:
        if _is_replicate(r):
            owner = r.data.tags.get(TAG_REPLICATE_OF) or r.data.tags.get(_PARENT_TAG)
            if owner:
                out.setdefault(owner, []).append(r)
    return out


def _by_parent(runs: list) -> tuple[set[str], dict[str | None, list]]:
    """(parent run ids, {parent id or None: its trial runs}); a parent without trials yet is kept.

    Replicate runs are neither trials nor what makes their trial's run a parent.
    """
    runs = [r for r in runs if not _is_replicate(r)]
    parents = {r.data.tags[_PARENT_TAG] for r in runs if _PARENT_TAG in r.data.tags}
    parents |= {r.info.run_id for r in runs if r.data.tags.get(TAG_ROLE) == ROLE_PARENT}
    groups: dict[str | None, list] = {}
    for r in runs:
        if r.info.run_id in parents:
            continue
        groups.setdefault(r.data.tags.get(_PARENT_TAG), []).append(r)
    # A sweep whose trials have not started yet still has its parent run.
    for pid in parents:
        groups.setdefault(pid, [])
    return parents, groups


def _of_study(study_name: str, study, parents: set[str], groups: dict[str | None, list],
              by_id: dict) -> dict[str | None, list]:
    """The group of one named study: its parent run from the study, else by name, else by its trials' tag."""
    wanted = study.user_attrs.get(PARENT_RUN_ID) if study is not None else None
    if wanted is None:
        wanted = next((pid for pid in parents if pid in by_id and by_id[pid].info.run_name == study_name), None)
    if wanted is None:
        wanted = next((pid for pid, rs in groups.items() if pid and any(
            r.data.tags.get(TAG_STUDY) == study_name for r in rs)), None)
    if wanted is not None:
        return {wanted: groups.get(wanted, [])}
    groups = {k: [r for r in v if r.data.tags.get(TAG_STUDY) == study_name] for k, v in groups.items()}
    return {k: v for k, v in groups.items() if v}


def load_sweeps(target: Target) -> list[Sweep]:
    """One Sweep per study (parent run) of the target's experiment; single runs form their own."""
    store = mlflow_client(target.tracking_uri)
    exp = store.get_experiment_by_name(target.experiment)
    if exp is None:
        raise ReportError(
            f"the sweep dir {target.sweep_dir} names the MLflow experiment {target.experiment!r}, which is "
            f"not in {target.tracking_uri}. Its runs may have been recorded elsewhere: pass --tracking-uri URI."
        )
    runs = _all_runs(store, exp.experiment_id)
    if not runs:
        raise ReportError(
            f"the MLflow experiment {target.experiment!r} in {target.tracking_uri} has no runs (it may have "
            "been created by a sweep that was stopped before its first trial started, or its runs were "
            "deleted). Run the sweep again, or pick another experiment."
        )
    by_id = {r.info.run_id: r for r in runs}
    parents, groups = _by_parent(runs)
    replicates = _replicates(runs)
    notes: list[str] = []
    study = open_study(target.study_name, target.storage, notes)
    if target.study_name is not None:
        groups = _of_study(target.study_name, study, parents, groups, by_id)

    sweeps = []
    for pid, members in groups.items():
        study_name = target.study_name
        if study_name is None and pid in by_id:
            study_name = by_id[pid].info.run_name
        if study_name is None:
            study_name = next((r.data.tags[TAG_STUDY] for r in members if TAG_STUDY in r.data.tags), None)
        sweep = Sweep(target.experiment, exp.experiment_id, target.tracking_uri, study_name, pid)
        sweep.notes = list(notes)
        if study is not None and (target.study_name is not None or study.study_name == study_name):
            sweep.study = study
        elif study_name and target.storage is None and target.sweep_dir is None and pid is not None:
            # An experiment named on the command line: its study may be in this directory's default storage.
            default = default_study_storage(Path.cwd())
            if default is not None:
                sweep.study = open_study(study_name, default, sweep.notes)
        sweep.rows = [row_from_run(store, r, replicates.get(r.info.run_id, ())) for r in members]
        merge_trials(sweep)
        set_objectives(sweep, members + ([by_id[pid]] if pid in by_id else []))
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
