"""The ``sweeps_optuna`` sweeper behind the Hydra plugin: Optuna ask/tell around Hydra jobs, no batch barrier.

Storage and resume
    The study lives in ``storage`` (default: SQLite at
    ``<original cwd>/multirun/optuna.db``; any RDB URL; or
    ``journal:///path/file.log``) under ``study_name`` (default: the
    ``hparams_search`` config name, else the task name). Re-running the same
    command continues the study: ``n_trials`` is the study's total
    (:mod:`.ledger` keeps the count, :mod:`.study` refuses another sweep's study).

The loop
    Every process (the sweep process and its ``n_jobs - 1`` workers,
    :mod:`.workers`) repeats: take over stale trials, stop when the study is
    full or has failed too often, ask one trial, run it (:mod:`.trial_runner`),
    tell its outcome. Ctrl-C / SIGTERM marks the running trial interrupted and
    exits 130; re-running resumes.

This module knows nothing of the app: whatever a trial means beyond its
overrides reaches the sweeper through the hooks (:mod:`.hooks`).
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import optuna
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial

from . import budget, ledger, results, search_space, study as studies, workers
from .compose import ComposeOnce
from .contract import FAIL_REASON, Interrupted, UserError, is_counted
from .hooks import Outcome, SweepHooks, TrialLink, load_hooks
from .liveness import has_owner, is_stale, owner_text, ownerless_grace, this_process
from .storage import default_storage_url, redact, redact_logs, storage_errors
from .storage import share as share_storage
from .trial_runner import TrialRunner, safe_storage_reference

log = logging.getLogger(__name__)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else (
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s")


def _refuse(error: UserError) -> None:
    """A user error before any trial ran: one paragraph, exit status 2, no traceback."""
    text = str(error)
    first = text.split(" ", 1)[0]
    log.error(text if any(c in first for c in "./=") else text[:1].upper() + text[1:])  # a key keeps its case
    sys.exit(2)


class SweepsOptunaSweeperImpl(Sweeper):
    def __init__(self, sampler: Any, direction: Any, storage: Optional[Any], study_name: Optional[str],
                 n_trials: int, n_jobs: int, max_failure_rate: float, search_space: Optional[DictConfig],
                 params: Optional[DictConfig], custom_search_space: Optional[str], pruner: Any = None,
                 heartbeat_interval: Optional[int] = 60, allow_study_changes: bool = False,
                 study_ignores: Sequence[str] = (), hooks: Any = None) -> None:
        self.sampler_cfg, self.direction, self.storage, self.study_name = sampler, direction, storage, study_name
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.search_space, self.params, self.pruner_cfg = search_space, params, pruner
        self.custom_search_space_path = custom_search_space
        self.heartbeat_interval = int(heartbeat_interval) if heartbeat_interval else None
        self.allow_study_changes = bool(allow_study_changes)
        self.study_ignores = tuple(str(p) for p in study_ignores)
        self.hooks_cfg = hooks
        self.current: Optional[optuna.trial.Trial] = None
        self.workers: List[Any] = []

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.task_function = config, task_function
        redact_logs()
        # ${hydra:...} interpolations (e.g. paths under hydra.runtime.cwd) resolve in the sweep process too.
        HydraConfig.instance().set_config(config)
        self.config_loader = ComposeOnce(hydra_context.config_loader)
        hydra_context = HydraContext(config_loader=self.config_loader, callbacks=hydra_context.callbacks)
        # The launcher logs each job's overrides again, with the trial's link (study, storage):
        # the sweeper's own "trial N: ..." line says what the trial is.
        logging.getLogger("hydra._internal.core_plugins.basic_launcher").setLevel(logging.WARNING)
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)
        self.sweep_dir = str(config.hydra.sweep.dir)
        self.worker_index = workers.worker_index()
        self.is_worker = self.worker_index > 0

    def compose(self, overrides: List[str]) -> DictConfig:
        return self.config_loader.load_sweep_config(self.config, list(overrides))

    def compose_job(self, overrides: List[str]) -> DictConfig:
        """A job's config before launch; the launcher gets this one instead of composing it again."""
        return self.config_loader.compose_for_launch(self.config, overrides)

    # ------------------------------------------------------------------ settings

    def _check_settings(self) -> None:
        def whole(value: Any) -> Optional[int]:
            try:
                return int(value) if float(value).is_integer() and not isinstance(value, bool) else None
            except (TypeError, ValueError):
                return None

        n_trials, n_jobs = whole(self.n_trials), whole(self.n_jobs)
        if n_trials is None or n_trials < 1:
            raise UserError(f"hydra.sweeper.n_trials={self.n_trials} must be a whole number >= 1: the study's total "
                            "number of trials, e.g. hydra.sweeper.n_trials=20.")
        if n_jobs is None or n_jobs < 1:
            raise UserError(f"hydra.sweeper.n_jobs={self.n_jobs} must be a whole number >= 1: the processes that "
                            "train side by side (1: this one only).")
        try:
            rate = float(self.max_failure_rate)
        except (TypeError, ValueError):
            rate = -1.0
        if not 0.0 <= rate <= 1.0:
            raise UserError(f"hydra.sweeper.max_failure_rate={self.max_failure_rate} must lie in [0, 1]: the "
                            "fraction of n_trials that may fail before the sweep stops, e.g. 0.25.")
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, rate
        studies.check_sampler(self.sampler_cfg)

    def _process_searchspace_config(self) -> str:
        """Which of ``params`` and the deprecated ``search_space`` defines the space, warning as the
        stock plugin's method of this name does."""
        return search_space.chosen_config(self.params, self.search_space)

    def _space(self, arguments: List[str]) -> None:
        use = self._process_searchspace_config()
        try:
            self.dists, self.fixed = search_space.build(self.params, self.search_space, arguments, use)
        except ValueError as e:
            raise UserError(f"The search space cannot be built: {str(e).rstrip('.')}. Check hydra.sweeper.params "
                            "and the command line: an interval(low, high) needs low < high (and low > 0 under "
                            "tag(log, ...)), a choice(...) at least one value.") from None
        self.grid, self.n_trials_total = None, self.n_trials
        if studies.is_grid(self.sampler_cfg):
            lines = search_space.override_lines(self.params if use == "params" else None, arguments)
            self.grid = search_space.grid(lines, self.dists)
            if self.grid is None:
                name = next(n for n, d in self.dists.items() if search_space.grid_values(d) is None)
                raise UserError(f"The grid sampler needs finite parameters; {name} is continuous (use "
                                "choice(...) or range(...)), or choose another sampler.")
            size = math.prod(len(v) for v in self.grid.values()) if self.grid else 1
            if size < self.n_trials:
                log.info(f"n_trials {self.n_trials} -> {size}: the grid has {size} points")
            self.n_trials_total = min(self.n_trials, size)

    # ------------------------------------------------------------------ sweep

    def sweep(self, arguments: List[str]) -> Any:
        started = self.started = time.perf_counter()
        cfg = self.config
        try:
            self._check_settings()
            self.hooks: SweepHooks = load_hooks(self.hooks_cfg, cfg)
            self.custom_search_space: Optional[Callable] = (
                get_method(self.custom_search_space_path) if self.custom_search_space_path else None)
            self._space(arguments)
            directions = studies.resolve_directions(self.direction, self.hooks.directions())
            name = self.study_name or OmegaConf.select(cfg, "hydra.runtime.choices.hparams_search") \
                or str(cfg.hydra.job.name)
            self.storage_url = str(self.storage or default_storage_url(cfg.hydra.runtime.cwd))
            limit = self.hooks.max_params(cfg) if self.hooks.counts_params else None
            if not self.is_worker and limit is not None and not self.custom_search_space:
                # before the study exists: a refusal leaves none behind
                budget.check_feasible(self.dists, self.fixed, limit, self.hooks, self.compose)
            sampler = studies.build_sampler(self.sampler_cfg, self.grid, self.worker_index)
            pruner = studies.build_pruner(self.pruner_cfg)
            ignores = self.study_ignores + tuple(self.hooks.ignored_overrides())
            chosen = self.study_name is not None and self.storage is not None
            self.study, created = studies.open_own_study(
                name, self.storage_url, sampler, pruner, directions,
                studies.signature(self.dists, self.fixed, ignores), chosen, self.allow_study_changes)
            name = self.study.study_name
            share_storage(self.storage_url, self.study._storage)  # the in-process jobs' link to their trials
            role = f"worker {self.worker_index}" if self.is_worker else "sweep"
            done = self.done_at_start = sum(is_counted(t) for t in self.study.get_trials(deepcopy=False))
            log.info(f"[{role}] study '{name}' in {redact(self.storage_url)}: {done}/{self.n_trials_total} trials "
                     f"done | sampler {type(sampler).__name__} | pruner {type(pruner).__name__} | directions "
                     f"{directions} | n_jobs {1 if self.is_worker else self.n_jobs}")
            if self.fixed:
                log.info(f"[{role}] every trial: {' '.join(f'{k}={v}' for k, v in self.fixed.items())}")
            self.parent_run_id = self.hooks.open_sweep(self.study, created)
        except UserError as e:
            _refuse(e)
        self.runner = TrialRunner(self.study, self.hooks, self.launcher, self.compose, self.fixed, self.link,
                                  self.heartbeat_interval, self.custom_search_space, cfg, self.compose_job)
        Interrupted.on_signals()
        code = 0
        try:
            n_jobs = min(self.n_jobs, self._left())  # never more processes than trials left
            if not self.is_worker and n_jobs > 1:
                if workers.command_runs(self.task_function):
                    self.workers = workers.spawn(n_jobs, self.sweep_dir, str(cfg.hydra.runtime.cwd))
                else:
                    log.info(f"hydra.sweeper.n_jobs={self.n_jobs}: this sweep was not started by a command that "
                             "runs its task (a test, a notebook, Hydra's API), so no worker process can re-run it; "
                             "its trials run one after another in this process")
            code = self._work()
        except storage_errors() as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            log.error(f"The Optuna storage {redact(self.storage_url)} cannot be written ({type(e).__name__}: "
                      f"{redact(first)[:300]}); the sweep stopped. Its running trial is left as it was: once the "
                      "storage can be written again (disk space freed, the database server back), re-run the same "
                      "command and it takes that trial over and finishes the study.")
            workers.stop(self.workers, signal.SIGTERM)
            sys.exit(1)
        except KeyboardInterrupt as e:
            Interrupted.clear()
            self._interrupt_current(f"interrupted ({type(e).__name__}: {e})")
            workers.stop(self.workers, signal.SIGTERM)
            log.error(f"Interrupted: the running trial is marked FAIL (interrupted=True) and queued again. "
                      f"Re-run the same command to resume the study '{self.study.study_name}'.")
            sys.exit(130)
        codes = workers.wait(self.workers)
        if self.is_worker:
            sys.exit(code)
        if any(codes) and code == 0:
            code = next(c for c in codes if c)
            log.error(f"a worker process exited with status {code}; see {self.sweep_dir}/workers/")
        self._finish(time.perf_counter() - started)
        if code:
            sys.exit(code)
        return None

    def link(self, number: int) -> TrialLink:
        return TrialLink(self.study.study_name, safe_storage_reference(self.storage_url), number, self.parent_run_id)

    def _left(self) -> int:
        return max(self.n_trials_total - sum(is_counted(t) for t in self.study.get_trials(deepcopy=False)), 1)

    # ------------------------------------------------------------------ the loop

    def _work(self) -> int:
        study, n_trials = self.study, self.n_trials_total
        announce = False
        while True:
            Interrupted.check()  # a Ctrl-C whose exception a finalizer swallowed (the job may have finished)
            tally = ledger.Tally.of(study)
            if announce:  # the trial just told, from the read the loop makes anyway
                self._progress(tally.trials)
                announce = False
            ledger.reap(study, tally, lambda t: is_stale(t, self.heartbeat_interval), self._outcome,
                        self._close_orphan)
            if len(tally.failures) > self.max_failure_rate * n_trials:
                last = tally.failures[-1]
                reason = last.user_attrs.get(FAIL_REASON, "unknown")
                log.error(f"{len(tally.failures)} of the {n_trials} trials failed, more than "
                          f"hydra.sweeper.max_failure_rate={self.max_failure_rate} allows; stopping. Last failure "
                          f"(trial {last.number}): {reason}. Fix the cause, "
                          "or raise max_failure_rate, and re-run the same command to continue the study.")
                if not self.is_worker:  # on stderr too, where the stock plugin puts the job's exception
                    print(f"Error: trial {last.number} failed: {redact(str(reason))}", file=sys.stderr, flush=True)
                return 1
            if not tally.has_room(n_trials):
                if tally.counted < n_trials and self._wait_for_ownerless(tally):
                    continue
                return 0  # the rest run in other processes: results.finish names them
            trial = ledger.ask(study, n_trials, self.dists, this_process(), tally)
            if trial is None:
                continue  # surplus: another process filled the study first
            self.current = trial
            try:
                self.runner.run(trial)
                if self.runner.stop:
                    log.error(f"The sweep stopped: trial {trial.number} could not run for a reason of the machine's "
                              f"({self.runner.stop}). It is queued again, not counted; fix the cause and re-run the "
                              "same command to continue the study.")
                    if not self.is_worker:
                        print(f"Error: trial {trial.number}: {redact(self.runner.stop)}", file=sys.stderr, flush=True)
                    return 1
                announce = True
            except (KeyboardInterrupt, *storage_errors()):
                raise
            except Exception as e:  # noqa: BLE001 - a bug of the sweeper or the hooks: the trial must not stay RUNNING
                log.exception(f"trial {trial.number}: the sweeper failed while running it")
                self._fail_unfinished(trial, f"the sweeper failed while running it: {type(e).__name__}: {e}")
            self.current = None

    def _progress(self, trials: List[FrozenTrial]) -> None:
        """One line after each trial: the study's count, its best so far, and the time left at this
        sweep's pace (trials finished since it started, by any process, per second)."""
        count, done = results.counts(trials), sum(is_counted(t) for t in trials)
        elapsed = time.perf_counter() - self.started
        pace = (done - self.done_at_start) / elapsed if elapsed > 0 else 0.0
        left = max(self.n_trials_total - done, 0)
        eta = f", ~{_duration(left / pace)} left" if pace > 0 and left else ""
        best = ""
        if len(self.study.directions) == 1 and count["complete"]:
            values = [t.value for t in trials if t.state.name == "COMPLETE"]
            best = f" | best {(max if self.study.direction.name == 'MAXIMIZE' else min)(values):.4g}"
        log.info(f"sweep {done}/{self.n_trials_total} trials ({count['complete']} complete, {count['pruned']} pruned, "
                 f"{count['failed']} failed, {count['infeasible']} infeasible){best} | {_duration(elapsed)} "
                 f"elapsed{eta}")

    def _wait_for_ownerless(self, tally: ledger.Tally) -> bool:
        """Sleep a little when a RUNNING trial has no owner yet; True when there was one.

        Its process either writes the owner within moments or died right after
        asking; once the grace is over the next reap takes the trial over, so this
        process does not exit with the study unfinished.
        """
        waiting = [t for t in tally.running if not has_owner(t)]
        if not waiting:
            return False
        if not getattr(self, "_said_waiting", False):
            log.info(f"trial(s) {', '.join(str(t.number) for t in waiting)} have no owner yet (a process may have "
                     f"died right after asking for them): waiting up to "
                     f"{ownerless_grace(self.heartbeat_interval):.0f}s to take them over")
            self._said_waiting = True
        time.sleep(min(1.0, ownerless_grace(self.heartbeat_interval) / 4))
        return True

    def _outcome(self, t: FrozenTrial) -> Optional[Outcome]:
        try:
            return self.hooks.outcome(self.link(t.number), t)
        except Exception as e:  # noqa: BLE001 - unknown: treat the trial as interrupted
            log.warning(f"could not read how trial {t.number}'s job ended ({e})")
            return None

    def _close_orphan(self, t: FrozenTrial) -> None:
        try:
            self.hooks.close_orphan(self.link(t.number), t, f"process {owner_text(t)} was killed")
        except Exception as e:  # noqa: BLE001 - its record stays as it is; the trial runs again
            log.warning(f"could not close the run of trial {t.number} ({e})")

    def _fail_unfinished(self, trial: optuna.trial.Trial, reason: str) -> None:
        if not self.study._storage.get_trial(trial._trial_id).state.is_finished():
            self.runner.fail(trial, reason)

    def _interrupt_current(self, reason: str) -> None:
        trial, self.current = self.current, None
        if trial is None:
            return
        try:
            frozen = self.study._storage.get_trial(trial._trial_id)
            if not frozen.state.is_finished() and ledger.interrupt(self.study, frozen, reason):
                log.warning(f"trial {trial.number} interrupted: marked FAIL (interrupted=True) and queued again")
        except Exception as e:  # noqa: BLE001 - the next run reaps it
            log.error(f"could not mark trial {trial.number} as interrupted ({e}); the next run will reap it")

    def _finish(self, wall: float) -> None:
        out: Dict[str, Any] = results.finish(self.study, self.n_trials_total, self.storage_url, self.sweep_dir, wall,
                                             self.compose)
        if out["counted_trials"] >= self.n_trials_total:
            try:
                self.hooks.close_sweep(out)
            except Exception as e:  # noqa: BLE001 - the study is complete either way
                log.warning(f"could not close the sweep's parent run ({e})")
