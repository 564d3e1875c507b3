"""One trial, from its sampled parameters to the state Optuna is told.

Outcomes
    * the job returns finite value(s), one per direction: COMPLETE;
    * the job raises ``optuna.TrialPruned``: PRUNED;
    * over the app's parameter budget (counted before launch on the composed
      config, or :class:`.contract.Infeasible` raised by the job): never trained,
      PRUNED with ``infeasible``, ``n_params`` and ``reason``; not a failure;
    * an exception, a config that cannot be composed, a NaN/inf or malformed
      return: FAIL with ``fail_reason`` (a :class:`.contract.UserError`'s message
      as it is, any other exception with its class name in front).

Every trial that never ran its job, or whose job failed before recording
itself, is recorded by the hooks all the same, so each trial is a run.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from typing import Any, Callable, List, Optional

import optuna
from hydra.core.utils import JobStatus
from omegaconf import DictConfig, ListConfig
from optuna.trial import TrialState

from .contract import (FAIL, INFEASIBLE, INFEASIBLE_STATE, INTERRUPTED_STATE, N_PARAMS, OVERRIDES,
                       REASON, RUN_ID, Infeasible, Interrupted, MachineFault, UserError)
from .hooks import SweepHooks, TrialLink
from .ledger import fail as ledger_fail
from .ledger import interrupt, tell_state
from .liveness import Heartbeat
from .search_space import trial_name, trial_overrides
from .storage import STORAGE_ENV, has_secret, redact
from .workers import quote

log = logging.getLogger(__name__)

def safe_storage_reference(url: str) -> str:
    """The storage URL as a job receives it: with a password, through the environment.

    Local and submitit jobs inherit the variable (sbatch exports it), so no password
    lands in a job's overrides, its saved config or the launcher's log.
    """
    if has_secret(url):
        os.environ[STORAGE_ENV] = url
        return "${oc.env:" + STORAGE_ENV + "}"
    return url


def reason_of(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, UserError) else f"{type(exc).__name__}: {text}"


class TrialRunner:
    """Runs trials of one study through Hydra's launcher; the app speaks through ``hooks``."""

    def __init__(self, study: optuna.Study, hooks: SweepHooks, launcher: Any, compose: Callable[[List[str]], DictConfig],
                 fixed: dict, link: Callable[[int], TrialLink], heartbeat_interval: Optional[float],
                 custom_search_space: Optional[Callable] = None, config: Optional[DictConfig] = None,
                 compose_job: Optional[Callable[[List[str]], DictConfig]] = None):
        self.study, self.hooks, self.launcher, self.compose = study, hooks, launcher, compose
        self.compose_job = compose_job or compose  # the job's config for the budget, which its launch reuses
        self.fixed, self.link, self.heartbeat_interval = fixed, link, heartbeat_interval
        self.custom_search_space, self.config = custom_search_space, config
        self.n_objectives = len(study.directions)
        self.stop: Optional[str] = None  # why the sweep must stop (a job's MachineFault)

    def run(self, trial: optuna.trial.Trial) -> None:
        try:
            if self.custom_search_space is not None:
                self.custom_search_space(self.config, trial)
            overrides = trial_overrides(trial.params, self.fixed)
        except Exception as e:  # noqa: BLE001 - the user's search space code, or a clash of keys
            self.fail(trial, f"{type(e).__name__}: {e}")
            return
        attrs = {OVERRIDES: overrides}  # written while the job starts (Heartbeat), or before a refusal
        run_name = ",".join(overrides) or "defaults"
        link = self._link(trial)
        job = tuple(overrides + [f"{k}={quote(v) if isinstance(v, str) else v}"
                                 for k, v in self.hooks.job_overrides(link).items()])
        later: List[Callable[[], Any]] = []  # other writes the job need not wait for
        if not self._fits(trial, list(job), run_name, attrs, later):
            return
        later[:0] = [functools.partial(trial.set_user_attr, k, v) for k, v in attrs.items()]
        log.info(f"trial {trial.number}: {' '.join(overrides[:len(trial.params)]) or 'the fixed overrides only'}")
        self._pin_submitit_local_gpus()
        try:
            with Heartbeat(self.study._storage, trial._trial_id, self.heartbeat_interval, first=later):
                ret = self.launcher.launch([job], initial_job_idx=trial.number)[0]
        except SystemExit as e:
            self.fail(trial, f"the job called sys.exit({e.code})")
            return
        except Exception as e:  # noqa: BLE001 - e.g. submitit: sbatch refused the job, or its process died
            text = redact(f"the launcher could not run the job ({type(e).__name__}: {e})")
            self._record_unstarted(trial, text)
            self.fail(trial, text)
            return
        finally:
            Interrupted.on_signals()  # the job may have installed its own handler
        self.tell_result(trial, ret)

    # ------------------------------------------------------------------ before launch

    def _fits(self, trial: optuna.trial.Trial, job: List[str], run_name: str, attrs: dict,
              later: List[Callable[[], Any]]) -> bool:
        """Compose the job's config (its launch reuses it) and count its model into ``attrs``, its constraint
        into ``later``; False when it must not run (then all is written here)."""
        if not self.hooks.counts_params:
            return True
        try:
            cfg = self.compose_job(job)
            n_params, limit = self.hooks.count_params(cfg), self.hooks.max_params(cfg)
        except Exception as e:  # noqa: BLE001 - a point of the space that does not build
            reason = f"the config cannot be built: {e}"
            self._write(trial, attrs)
            self._record(trial, None, FAIL, reason, run_name)
            self.fail(trial, reason)
            return False
        attrs[N_PARAMS] = n_params
        if limit is None:
            return True
        constraint = functools.partial(trial.set_constraint, "n_params_over_budget", float(n_params - limit))
        if n_params <= limit:  # TPE, NSGA-II and GP read it when they sample the trials after this one
            later.append(constraint)
            return True
        constraint()
        reason = f"{n_params:,} parameters, over budget.max_params={limit:,}; not trained"
        self._write(trial, attrs)
        trial.set_user_attr(INFEASIBLE, True)
        trial.set_user_attr(REASON, reason)
        self._record(trial, cfg, INFEASIBLE_STATE, reason, run_name, n_params)
        tell_state(self.study, trial, TrialState.PRUNED)
        log.info(f"trial {trial.number} INFEASIBLE: {run_name}: {reason}")
        return False

    @staticmethod
    def _write(trial: optuna.trial.Trial, attrs: dict) -> None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)

    def _pin_submitit_local_gpus(self) -> None:
        """Keep a worker's GPU for its submitit_local jobs.

        submitit's local executor sets the job's CUDA_VISIBLE_DEVICES to GPUs
        0..gpus_per_node-1 (its ``visible_gpus`` cannot be set through the
        plugin), which would put every worker's trials on GPU 0; its ``setup``
        commands run in the job's shell first, so they put the worker's GPU back.
        """
        params = getattr(self.launcher, "params", None)
        if getattr(self.launcher, "_EXECUTOR", None) != "local" or not isinstance(params, dict):
            return
        ids = [x.strip() for x in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if x.strip()]
        if ids and all(x.isdigit() for x in ids):
            params["setup"] = [f"export CUDA_VISIBLE_DEVICES={','.join(ids)}"]

    # ------------------------------------------------------------------ after the job

    def tell_result(self, trial: optuna.trial.Trial, ret: Any) -> None:
        if ret.status != JobStatus.COMPLETED:
            self._tell_exception(trial, ret._return_value)
            return
        value = ret._return_value
        try:
            single = self.n_objectives == 1 and not isinstance(value, (list, tuple, ListConfig))
            values = [float(v) for v in ([value] if single else list(value))]
        except (TypeError, ValueError):
            self.fail(trial, f"the job returned {value!r}, not {'a number' if self.n_objectives == 1 else 'numbers'}")
            return
        if len(values) != self.n_objectives:
            self.fail(trial, f"the job returned {len(values)} value(s) for {self.n_objectives} objective(s): {values}")
            return
        if not all(math.isfinite(v) for v in values):
            self.fail(trial, f"the objective is not finite: {values}")
            return
        tell_state(self.study, trial, TrialState.COMPLETE, values)
        log.info(f"trial {trial.number} COMPLETE: {values if self.n_objectives > 1 else values[0]}")

    def _tell_exception(self, trial: optuna.trial.Trial, exc: BaseException) -> None:
        if isinstance(exc, optuna.TrialPruned):
            trial.set_user_attr(REASON, str(exc))
            tell_state(self.study, trial, TrialState.PRUNED)
            log.info(f"trial {trial.number} PRUNED: {exc}")
        elif isinstance(exc, MachineFault):  # not the trial's fault: it runs again, the sweep stops
            text = reason_of(exc)
            self._close_records(trial, text, INTERRUPTED_STATE)
            if interrupt(self.study, self.study._storage.get_trial(trial._trial_id), text):
                log.warning(f"trial {trial.number} interrupted (queued again): {text}")
            self.stop = text
        elif isinstance(exc, Infeasible):  # the job counted its own model over budget
            trial.set_user_attr(INFEASIBLE, True)
            trial.set_user_attr(N_PARAMS, exc.n_params)
            trial.set_user_attr(REASON, str(exc))
            tell_state(self.study, trial, TrialState.PRUNED)
        else:
            text = reason_of(exc)
            self._record_unstarted(trial, text)
            self.fail(trial, text)
            self._close_records(trial, text)

    def _close_records(self, trial: optuna.trial.Trial, reason: str, state: str = FAIL) -> None:
        """The job is over: none of its run records may stay open (a job that could not close its
        own run, e.g. on a full disk, leaves that to the sweeper)."""
        try:
            self.hooks.close_orphan(self.link(trial.number), self.study._storage.get_trial(trial._trial_id), reason,
                                    state)
        except Exception as e:  # noqa: BLE001 - the next sweep of the study closes it
            log.warning(f"trial {trial.number}: could not close its run ({e})")

    def fail(self, trial: optuna.trial.Trial, reason: str) -> None:
        ledger_fail(self.study, trial, reason)

    # ------------------------------------------------------------------ records through the hooks

    def _link(self, trial: optuna.trial.Trial) -> TrialLink:
        """The trial's link, with its short name for its run."""
        return dataclasses.replace(self.link(trial.number), run_name=trial_name(trial.number, trial.params))

    def _record(self, trial: optuna.trial.Trial, cfg: Optional[DictConfig], state: str, reason: str, run_name: str,
                n_params: Optional[int] = None) -> None:
        try:
            run_id = self.hooks.record_refused(self._link(trial), cfg, state, reason, run_name, n_params)
            if run_id:
                trial.set_user_attr(RUN_ID, run_id)
        except Exception as e:  # noqa: BLE001 - a record is not worth the trial
            log.warning(f"trial {trial.number}: could not record the {state} run ({e})")

    def _record_unstarted(self, trial: optuna.trial.Trial, text: str) -> None:
        """A failed job that never opened its run (a value the app refused, a submission the
        cluster refused) is recorded anyway, so every trial is a run."""
        attrs = self.study._storage.get_trial(trial._trial_id).user_attrs
        if RUN_ID in attrs:
            return
        overrides = list(attrs.get(OVERRIDES, []))
        try:
            cfg = self.compose(overrides)
        except Exception:  # noqa: BLE001 - recorded with the sweep's own config instead
            cfg = None
        self._record(trial, cfg, FAIL, text, ",".join(overrides) or "defaults", attrs.get(N_PARAMS))
