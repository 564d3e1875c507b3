"""This project's side of a ``sweeps_optuna`` sweep: the parameter budget and the MLflow records.

Named in ``conf/hydra/sweeper/hooks/app.yaml``, so every sweep of ``sweeps.train``
uses it (the plugin itself never imports ``sweeps``).

MLflow layout of a sweep: one parent run per study (run name = study name, tag
``sweeps.role=parent``), created once and shared by every process of the sweep
through the study's user attr ``mlflow_parent_run_id``; one child run per
trial, tagged with the study and trial number when it is created. Trials that
train are recorded by ``sweeps.train`` itself; trials the sweeper refuses
without launching are recorded here:

* over ``budget.max_params``: ``sweeps.state=INFEASIBLE``, status FINISHED (the
  refusal is a decision, nothing failed), param ``n_params``;
* a config that cannot be built, or a job that failed before it opened its run:
  ``sweeps.state=FAIL``, status FAILED.

A trial's run is found by its id (the trial's ``mlflow_run_id``) or, when its
process died before the trial learnt it, by its parent run and trial tags.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from sweeps_optuna import contract as c
from sweeps_optuna.hooks import Outcome, SweepHooks, TrialLink
from sweeps_optuna.storage import redact
from sweeps import objectives
from sweeps.replicates import objective_key
from sweeps.config import NOT_EXPERIMENT, RUNTIME_ONLY
from sweeps.tracking import (client, config_params, experiment_id, log_params, named, save_sweep_view, tracking_uri,
                             ui_link)

log = logging.getLogger(__name__)
PARENT_WAIT_S = 60  # how long a second process waits for the first to create the parent run


def objective_names(cfg: DictConfig) -> list[str]:
    objective = OmegaConf.select(cfg, "objective")
    if objective is None:
        return []
    return [str(n) for n in objective] if isinstance(objective, ListConfig) else [str(objective)]


class SweepsHooks(SweepHooks):
    counts_params = True

    def bind(self, config: DictConfig) -> None:
        super().bind(config)
        tracking = OmegaConf.select(config, "tracking")
        self.tracked = tracking is not None and bool(tracking.get("enabled", False))
        if self.tracked:
            client(config)  # an unreachable server or unreadable store refuses the sweep before its study exists

    def directions(self) -> list[str] | None:
        return [objectives.direction(n) for n in objective_names(self.config)] or None

    def ignored_overrides(self) -> tuple[str, ...]:
        return tuple(f"{node}." for node in NOT_EXPERIMENT) + RUNTIME_ONLY

    # ---- budget

    def max_params(self, cfg: DictConfig) -> int | None:
        value = OmegaConf.select(cfg, "budget.max_params")
        return None if value is None else int(value)

    def count_params(self, cfg: DictConfig) -> int:
        from sweeps.models import model_size  # counted once per distinct model

        return int(model_size(cfg))

    # ---- records

    def open_sweep(self, study: Any, created: bool) -> str | None:
        """The sweep's parent run, created by the first process and found by the others."""
        if not self.tracked:
            return None

        def current() -> str | None:
            return study._storage.get_study_user_attrs(study._study_id).get(c.PARENT_RUN_ID)

        run_id = current()
        if run_id is None and not created and not study.get_trials(deepcopy=False):
            deadline = time.time() + PARENT_WAIT_S  # the process that created the study is making it
            while run_id is None and time.time() < deadline:
                time.sleep(1.0)
                run_id = current()
        mlflow = client(self.config)
        if run_id is None or not _exists(mlflow, run_id):
            self._say_unrecorded(study, run_id)
            run_id = mlflow.create_run(experiment_id(self.config), run_name=study.study_name,
                                       tags={c.TAG_STUDY: study.study_name, c.TAG_ROLE: c.ROLE_PARENT}).info.run_id
            study.set_user_attr(c.PARENT_RUN_ID, run_id)
            log.info(f"MLflow parent run {run_id} (experiment '{self.config.tracking.experiment}')")
        self.parent_run_id = run_id
        self._close_runs_of_finished_trials(study, mlflow)
        return run_id

    def _say_unrecorded(self, study: Any, old_parent: str | None) -> None:
        """A study whose recorded trials have no runs in this store (mlruns/ deleted, or tracking
        pointed elsewhere) is said once: its report shows the study's values for those trials."""
        recorded = [t.number for t in study.get_trials(deepcopy=False) if c.RUN_ID in t.user_attrs]
        if old_parent is None or not recorded:
            return
        log.warning(f"Study '{study.study_name}' has {len(recorded)} recorded trial(s) whose MLflow runs are not in "
                    f"{redact(tracking_uri(self.config))} (mlruns/ deleted, or tracking pointed elsewhere): they are "
                    "not run again, and the report shows the values the study holds for them. Point tracking.uri "
                    "(or paths.mlruns) back to the old store to see their runs.")

    def _close_runs_of_finished_trials(self, study: Any, mlflow: Any) -> None:
        """A trial's run that is still RUNNING although its trial has finished (its job could not close
        it, e.g. on a full disk) ends with the trial's state: no run stays RUNNING forever."""
        parent = mlflow.get_run(self.parent_run_id)
        runs = mlflow.search_runs([parent.info.experiment_id], max_results=5000, filter_string=(
            f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' and attributes.status = 'RUNNING'"))
        if not runs:
            return
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        for run in runs:
            trial = trials.get(int(run.data.tags.get(c.TAG_TRIAL, -1)))
            if trial is None or not trial.state.is_finished():
                continue  # its trial still runs, or will be reaped: the reaper closes it then
            state = c.trial_state(trial)
            mlflow.set_tag(run.info.run_id, c.TAG_STATE, state)
            reason = trial.user_attrs.get(c.FAIL_REASON) or trial.user_attrs.get(c.REASON)
            if reason:
                mlflow.set_tag(run.info.run_id, c.TAG_REASON, redact(str(reason))[:c.MAX_TAG])
            mlflow.set_terminated(run.info.run_id, c.STATUS_OF_STATE[state])
            log.warning(f"MLflow run {run.info.run_id} of trial {trial.number} was left RUNNING; closed as {state}")

    def job_overrides(self, link: TrialLink) -> dict[str, Any]:
        if "trial" not in self.config:
            return {}
        out: dict[str, Any] = {"trial.study": link.study_name, "trial.storage": link.storage,
                               "trial.number": link.number}
        if link.run_name:
            out["tracking.run_name"] = link.run_name
        if link.parent_run_id:
            out["trial.parent_run_id"] = link.parent_run_id
        return out

    def record_refused(self, link: TrialLink, cfg: DictConfig | None, state: str, reason: str, run_name: str,
                       n_params: int | None) -> str | None:
        if not self.tracked:
            return None
        cfg = cfg if cfg is not None else self.config  # best effort: the sweep's own config
        mlflow = client(cfg)
        tags = {c.TAG_STUDY: link.study_name, c.TAG_TRIAL: str(link.number), c.TAG_STATE: state,
                c.TAG_REASON: redact(reason)[:c.MAX_TAG]}
        if link.parent_run_id:
            tags["mlflow.parentRunId"] = link.parent_run_id
        if link.run_name:
            tags[c.TAG_OVERRIDES] = run_name[:c.MAX_TAG]
        run_name, tags = named(link.run_name or run_name, tags)
        run_id = mlflow.create_run(experiment_id(cfg), run_name=run_name, tags=tags).info.run_id
        try:
            params = config_params(cfg)
        except Exception:  # noqa: BLE001 - an unbuildable config may not even resolve
            params = {}
        if n_params is not None:
            params["n_params"] = n_params
        log_params(mlflow, run_id, params)
        mlflow.set_terminated(run_id, c.STATUS_OF_STATE[state])
        return run_id

    def outcome(self, link: TrialLink, trial: Any) -> Outcome | None:
        """(state, objective values, reason) of a trial's finished run; None while it runs or was killed."""
        if not self.tracked:
            return None
        runs = self._runs_of(link, trial)
        for run in runs:
            status, state = run.info.status, run.data.tags.get(c.TAG_STATE)
            reason = run.data.tags.get(c.TAG_REASON, "")
            if status == "FINISHED" and state == c.COMPLETE:
                # over replicates, the aggregate the run's own config chose
                how = run.data.params.get("replicate_aggregate", "mean")
                names = [objective_key(n, how) for n in objective_names(self.config)]
                if names and all(n in run.data.metrics for n in names):
                    return Outcome(c.COMPLETE, [float(run.data.metrics[n]) for n in names])
            elif status == "FINISHED" and state == c.PRUNED:
                return Outcome(c.PRUNED, None, reason)
            elif status == "FAILED":
                return Outcome(c.FAIL, None, reason)
        return None

    def close_orphan(self, link: TrialLink, trial: Any, reason: str, state: str = c.INTERRUPTED_STATE) -> None:
        """Every run of the trial still RUNNING ends with ``state`` (KILLED for INTERRUPTED)."""
        if not self.tracked:
            return
        mlflow = client(self.config)
        for run in self._runs_of(link, trial):
            if run.info.status != "RUNNING":
                continue
            # its replicates' runs (replicates=K) died with it
            replicas = mlflow.search_runs([run.info.experiment_id], filter_string=(
                f"tags.`mlflow.parentRunId` = '{run.info.run_id}' and attributes.status = 'RUNNING'"))
            for r in [*replicas, run]:
                mlflow.set_tag(r.info.run_id, c.TAG_STATE, state)
                mlflow.set_tag(r.info.run_id, c.TAG_REASON, redact(reason)[:c.MAX_TAG])
                mlflow.set_terminated(r.info.run_id, c.STATUS_OF_STATE[state])

    def close_sweep(self, results: dict) -> None:
        import sys

        if "sweeps.run" in sys.modules:  # in-process trials: their figures are drawn in the background
            sys.modules["sweeps.run"].wait_for_figures()
        parent = getattr(self, "parent_run_id", None)
        if not self.tracked or not parent:
            return
        mlflow = client(self.config)
        if "best_value" in results:
            mlflow.log_metric(parent, "best_value", float(results["best_value"]))
        run = mlflow.get_run(parent)
        if run.info.status != "FINISHED":
            mlflow.set_terminated(parent, "FINISHED")
        objective = self.config.objective
        first = str(objective[0] if isinstance(objective, ListConfig) else objective)
        try:
            key = save_sweep_view(mlflow, run.info.experiment_id, parent, run.info.run_name or parent, first,
                                  objectives.maximize(first), self._view_columns(mlflow, run.info.experiment_id,
                                                                                 parent, first))
        except Exception as e:  # noqa: BLE001 - a view is a convenience; the runs are recorded
            log.warning(f"could not save the sweep's view in the MLflow UI ({e})")
            return
        local = not tracking_uri(self.config).startswith(("http://", "https://"))
        log.info(f"MLflow UI{' (make ui)' if local else ''}: {ui_link(self.config, run.info.experiment_id, key)}")

    def _view_columns(self, mlflow: Any, experiment_id: str, parent: str, objective: str) -> list[str]:
        """The objective, test accuracy and size, then the params that differ between the sweep's runs."""
        runs = mlflow.search_runs([experiment_id], max_results=1000,
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
        keys = sorted({k for r in runs for k in r.data.params})
        differ = [k for k in keys if len({r.data.params.get(k) for r in runs}) > 1 and k != "n_params"]
        metrics = list(dict.fromkeys([objective, "best_val_acc", "test_acc", "n_params"]))
        if any("best_val_acc_std" in r.data.metrics for r in runs):  # replicates: their spread beside the means
            metrics[1:1] = ["best_val_acc_std", "test_acc_std", "best_val_acc_n"]
        return ([f"metrics.`{m}`" for m in metrics] + [f"params.`{k}`" for k in differ[:12]]
                + [f"tags.`{c.TAG_STATE}`"])

    def _runs_of(self, link: TrialLink, trial: Any) -> list:
        """The trial's MLflow runs: by the id it holds, else by its parent run and trial tags."""
        mlflow = client(self.config)
        run_id = trial.user_attrs.get(c.RUN_ID)
        if run_id:
            return [mlflow.get_run(run_id)]
        if not link.parent_run_id:
            return []
        parent = mlflow.get_run(link.parent_run_id)
        return mlflow.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{link.parent_run_id}' and "
                          f"tags.`{c.TAG_TRIAL}` = '{link.number}'")


def _exists(mlflow: Any, run_id: str) -> bool:
    try:
        mlflow.get_run(run_id)
        return True
    except Exception:  # noqa: BLE001 - deleted, or another store
        return False
