"""The ``sweeps_optuna`` sweeper: Optuna 5 ask/tell around Hydra jobs.

Storage and resume
    The study lives in ``storage`` (default: SQLite at
    ``<original cwd>/multirun/optuna.db``; any RDB URL; or
    ``journal:///path/file.log``) under ``study_name`` (default: the
    ``hparams_search`` config name, else the task name). Re-running the same
    command continues the study: ``n_trials`` is the study's TOTAL.

Counting rule
    counted = COMPLETE + PRUNED + FAIL, where FAIL excludes trials marked
    ``interrupted=True`` (their process was killed or interrupted; their
    params are re-enqueued, so the config still runs) and ``surplus=True``
    (asked by a cooperating process after the total was reached; never
    launched). Infeasible trials (over ``budget.max_params``, told as PRUNED
    with ``infeasible=True``) count too: their point of the search space has
    been decided. A worker asks for a new trial only while
    counted + RUNNING < n_trials, and after asking compares its trial number
    with the counted-or-running trials numbered below it: if those already
    make n_trials, its trial is surplus. So any number of processes on one
    storage and study run exactly n_trials counted trials, none twice.

Stale trials
    Each trial stores its owner (``host``, ``pid``, ``pid_start``) and, every
    ``heartbeat_interval`` seconds, a ``heartbeat`` time. Before each ask a
    worker marks FAIL (``interrupted=True``) and re-enqueues every RUNNING
    trial whose process on this host is gone, or whose heartbeat is older
    than 4 intervals (other hosts). A stale trial whose job had already ended
    (its MLflow run FINISHED with the objective, PRUNED or FAILED) is recorded
    with that outcome instead (``recovered=True``) and does not run again.

Workers
    ``n_jobs`` is the number of worker processes. The sweep process starts
    ``n_jobs - 1`` copies of its own command line (``sys.orig_argv``, with
    ``hydra.sweeper.n_jobs=1``, the same ``hydra.sweep.dir`` and the env var
    ``SWEEPS_OPTUNA_WORKER``); every process loops ask -> compose -> launch
    one job with the configured launcher -> tell, so there is no batch
    barrier. Job output dirs are ``<sweep dir>/<trial number>``. On a
    multi-GPU host each worker gets one GPU (CUDA_VISIBLE_DEVICES, round robin).
    Worker logs go to ``<sweep dir>/workers/worker-<k>.log``.

Outcomes
    * the job returns finite value(s): COMPLETE;
    * the job raises ``optuna.TrialPruned``: PRUNED;
    * over ``budget.max_params`` (checked before launch on the composed
      config, for tasks with ``budget`` and ``model`` nodes): never launched,
      PRUNED with ``infeasible=True``, ``n_params``, ``reason``; not a failure;
    * an exception, a config that cannot be built, a NaN/inf or malformed
      return: FAIL with ``fail_reason``; the sweep stops (exit 1) once the
      FAIL trials exceed ``max_failure_rate * n_trials``;
    * Ctrl-C / SIGTERM: the current trial is FAIL with ``interrupted=True``
      and re-enqueued; exit 130; re-running resumes.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from itertools import product
from pathlib import Path
from typing import Any, Callable, Dict, List, MutableSequence, Optional, Sequence, Tuple

import optuna
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_class, get_method, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from .config import Direction
from .storage import STORAGE_ENV, default_storage_url, has_secret, open_storage, redact

log = logging.getLogger(__name__)

WORKER_ENV = "SWEEPS_OPTUNA_WORKER"
MAX_FEASIBILITY_POINTS = 2000
STALE_HEARTBEATS = 4
RESULTS_FILE = "optimization_results.yaml"

# Trial user attrs.
INTERRUPTED, SURPLUS, INFEASIBLE, RECOVERED = "interrupted", "surplus", "infeasible", "recovered"
FAIL_REASON, REASON, N_PARAMS = "fail_reason", "reason", "n_params"
HOST, PID, PID_START, HEARTBEAT = "host", "pid", "pid_start", "heartbeat"
OVERRIDES, MLFLOW_RUN = "overrides", "mlflow_run_id"
PARENT_ATTR = "mlflow_parent_run_id"
SIGNATURE_ATTR = "sweeps.signature"  # study user attr: what made the study (search space, fixed overrides)


class _Terminated(KeyboardInterrupt):
    """SIGTERM in the sweep process, handled like Ctrl-C."""


def _on_sigterm(signum, frame):
    raise _Terminated(f"received signal {signum}")


def is_counted(t: FrozenTrial) -> bool:
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    if t.state == TrialState.FAIL:
        return not (t.user_attrs.get(INTERRUPTED) or t.user_attrs.get(SURPLUS))
    return False


def is_failure(t: FrozenTrial) -> bool:
    return t.state == TrialState.FAIL and is_counted(t)


# --------------------------------------------------------------------------- search space


def _num(x: Any) -> str:
    """A bound as the user wrote it: 2 for 2.0, 0.001 for 0.001."""
    return str(int(x)) if isinstance(x, (int, float)) and float(x).is_integer() else repr(x)


def distribution_from_override(override: Override) -> Any:
    """An Optuna distribution for a sweep override, or the fixed value's string.

    A search parameter must hold at least two values: an inverted or empty
    ``interval(low, high)`` (low >= high) and a ``range(...)`` that lists no
    value raise ValueError naming the override and the fix. ``tag(int,
    interval(a, b))`` searches the integers a..b (Hydra parses interval bounds
    as floats, so a bare interval is always a float distribution).
    """
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    line, key = override.input_line, override.get_key_element()
    if override.is_choice_sweep() or (override.is_range_sweep() and override.value().shuffle):
        choices = list(override.sweep_iterator(transformer=Transformer.encode))
        if not choices:
            raise ValueError(f"{line} lists no value: range(start, stop[, step]) stops before stop, so it needs "
                             "start < stop for a positive step (start > stop for a negative one)")
        for x in choices:
            if not isinstance(x, (str, int, float, bool, type(None))):
                raise ValueError(f"{line}: a choice must be str, int, float, bool or null; got {x!r}")
        return CategoricalDistribution(choices)
    if override.is_range_sweep():
        # Hydra's range() excludes its stop: the distribution spans the values it lists.
        value = override.value()
        values = list(override.sweep_iterator())
        if not values:
            raise ValueError(f"{line} lists no value: range(start, stop[, step]) stops before stop, so it needs "
                             "start < stop for a positive step (start > stop for a negative one)")
        low, high, step = min(values), max(values), abs(value.step)
        if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):
            return FloatDistribution(float(low), float(high), step=float(step))
        return IntDistribution(int(low), int(high), step=int(step))
    if override.is_interval_sweep():
        value = override.value()
        is_log = "log" in value.tags
        low, high = value.start, value.end
        is_int = "int" in value.tags or (isinstance(low, int) and isinstance(high, int))
        if is_int:
            if not (float(low).is_integer() and float(high).is_integer()):
                raise ValueError(f"{line}: tag(int, interval(low, high)) needs whole-number bounds, got "
                                 f"low={_num(low)}, high={_num(high)}")
            low, high = int(low), int(high)
        if low > high:
            raise ValueError(f"{line} is inverted (low={_num(low)}, high={_num(high)}); write "
                             f"interval({_num(high)}, {_num(low)})")
        if low == high:
            raise ValueError(f"{line} is an empty interval (low={_num(low)}, high={_num(high)}): it holds the "
                             f"one value {_num(low)}, nothing to search; widen it to low < high, or fix the value "
                             f"with {key}={_num(low)}")
        try:
            if is_int:
                return IntDistribution(low, high, log=is_log)
            return FloatDistribution(float(low), float(high), log=is_log)
        except ValueError as e:  # e.g. low <= 0 under tag(log, ...)
            raise ValueError(f"{line}: {str(e).replace('`', '')}") from None
    raise NotImplementedError(f"{line} is not supported by the sweeps_optuna sweeper")


def search_space_from_overrides(arguments: List[str]) -> Tuple[Dict[str, BaseDistribution], Dict[str, str]]:
    parsed = OverridesParser.create().parse_overrides(arguments)
    dists: Dict[str, BaseDistribution] = {}
    fixed: Dict[str, str] = {}
    for override in parsed:
        name = override.get_key_element()
        value = distribution_from_override(override)
        if isinstance(value, BaseDistribution):
            dists[name] = value
            fixed.pop(name, None)
        else:
            fixed[name] = value
            dists.pop(name, None)
    return dists, fixed


def distribution_from_config(spec: Any) -> BaseDistribution:
    """The deprecated ``search_space`` form: {type, choices, low, high, log, step}."""
    kind = spec["type"]
    kind = kind.name if hasattr(kind, "name") else str(kind)
    if kind == "categorical":
        return CategoricalDistribution(list(spec["choices"]))
    step, is_log = spec.get("step"), bool(spec.get("log", False))
    if kind == "int":
        return IntDistribution(int(spec["low"]), int(spec["high"]), log=is_log, step=int(step or 1))
    return FloatDistribution(float(spec["low"]), float(spec["high"]), log=is_log, step=step)


def grid_values(name: str, dist: BaseDistribution) -> Optional[List[Any]]:
    """Every value of a finite distribution; None when it is continuous."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution):
        if dist.log and dist.step != 1:
            return None
        return list(range(dist.low, dist.high + 1, dist.step))
    if isinstance(dist, FloatDistribution) and dist.step is not None:
        n = int(round((dist.high - dist.low) / dist.step)) + 1
        return [round(dist.low + i * dist.step, 12) for i in range(n)]
    return None


def format_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# --------------------------------------------------------------------------- process liveness


def _pid_start(pid: int) -> Optional[str]:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return None if fields[0] == "Z" else fields[19]  # field 22 of the full line: start time


def _alive(pid: Any, start: Any) -> bool:
    if not isinstance(pid, int):
        return True  # unknown owner: leave it to the heartbeat
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if Path("/proc").is_dir():
        now = _pid_start(pid)
        if now is None:
            return False  # gone or a zombie
        if start is not None and now != start:
            return False  # the pid was reused
    return True


def _refuse(message: str) -> None:
    """A user error before any trial ran: one paragraph, exit status 2, no traceback."""
    log.error(message)
    sys.exit(2)


class _Heartbeat:
    def __init__(self, storage: Any, trial_id: int, interval: Optional[int]):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop = threading.Event()
        self.thread: Optional[threading.Thread] = None

    def __enter__(self) -> "_Heartbeat":
        if self.interval:
            self.thread = threading.Thread(target=self._run, daemon=True, name="sweeps-heartbeat")
            self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.storage.set_trial_user_attr(self.trial_id, HEARTBEAT, time.time())
            except Exception:  # finished meanwhile, or the database is busy: try next time
                pass

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=5)


# --------------------------------------------------------------------------- the sweeper


class SweepsOptunaSweeperImpl(Sweeper):
    def __init__(
        self,
        sampler: Any,
        direction: Any,
        storage: Optional[Any],
        study_name: Optional[str],
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        search_space: Optional[DictConfig],
        params: Optional[DictConfig],
        custom_search_space: Optional[str],
        pruner: Any = None,
        heartbeat_interval: Optional[int] = 60,
        allow_study_changes: bool = False,
        study_ignores: Sequence[str] = (),
    ) -> None:
        if not 0.0 <= float(max_failure_rate) <= 1.0:
            raise ValueError(f"hydra.sweeper.max_failure_rate={max_failure_rate} must lie in [0, 1]")
        if int(n_trials) < 1 or int(n_jobs) < 1:
            raise ValueError("hydra.sweeper.n_trials and hydra.sweeper.n_jobs must be >= 1")
        self.sampler_cfg = sampler
        self.direction = direction
        self.storage = storage
        self.study_name = study_name
        self.n_trials = int(n_trials)
        self.n_jobs = int(n_jobs)
        self.max_failure_rate = float(max_failure_rate)
        self.search_space = search_space
        self.params = params
        self.custom_search_space: Optional[Callable[[DictConfig, Any], None]] = (
            get_method(custom_search_space) if custom_search_space else None
        )
        self.pruner_cfg = pruner
        self.heartbeat_interval = int(heartbeat_interval) if heartbeat_interval else None
        self.allow_study_changes = bool(allow_study_changes)
        self.study_ignores = tuple(str(p) for p in study_ignores)
        self.config: Optional[DictConfig] = None
        self.current: Optional[optuna.trial.Trial] = None
        self.workers: List[subprocess.Popen] = []

    # ------------------------------------------------------------------ setup

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        # ${hydra:...} interpolations (e.g. paths under hydra.runtime.cwd) resolve in the sweep process too.
        HydraConfig.instance().set_config(config)
        self.config_loader = hydra_context.config_loader
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )
        self.sweep_dir = str(config.hydra.sweep.dir)
        self.worker_index = int(os.environ.get(WORKER_ENV, "0") or 0)
        self.is_worker = self.worker_index > 0

    def _directions(self) -> List[str]:
        raw = self.direction
        if raw is None:
            objective = OmegaConf.select(self.config, "objective")
            if objective is None:
                return ["minimize"]
            names = list(objective) if isinstance(objective, ListConfig) else [objective]
            return ["maximize" if str(n).endswith("_acc") or "acc_" in str(n) else "minimize" for n in names]
        items = list(raw) if isinstance(raw, (MutableSequence, ListConfig, tuple)) else [raw]
        return [d.name if isinstance(d, Direction) else str(d) for d in items]

    def _search_space(self, arguments: List[str]) -> Tuple[Dict[str, BaseDistribution], Dict[str, str]]:
        params_conf: List[str] = []
        if self.params:
            params_conf += [f"{k!s}={v}" for k, v in self.params.items()]
        elif self.search_space:
            log.warning("hydra.sweeper.search_space is deprecated; use hydra.sweeper.params")
        params_conf += list(arguments)
        dists, fixed = search_space_from_overrides(params_conf)
        if self.search_space and not self.params:
            for name, spec in self.search_space.items():
                dists[str(name)] = distribution_from_config(spec)
        return dists, fixed

    def _sampler(self, grid: Optional[Dict[str, List[Any]]]) -> optuna.samplers.BaseSampler:
        cfg = self.sampler_cfg
        if not isinstance(cfg, DictConfig):
            return cfg  # already a sampler (e.g. set from Python)
        spec = OmegaConf.to_container(cfg, resolve=True)
        cls = get_class(spec.pop("_target_"))
        spec.pop("_partial_", None)
        spec = {k: v for k, v in spec.items() if v is not None}  # null: the sampler's default
        for key, value in spec.items():
            if isinstance(value, dict) and "_target_" in value:
                spec[key] = instantiate(value)  # e.g. independent_sampler
        if grid is not None:
            spec["search_space"] = grid
        if spec.get("seed") is not None and self.worker_index:
            spec["seed"] = int(spec["seed"]) + 7919 * self.worker_index  # workers must not mirror each other
        return cls(**spec)

    # ------------------------------------------------------------------ sweep

    def sweep(self, arguments: List[str]) -> Any:
        assert self.config is not None
        started = time.perf_counter()
        cfg = self.config
        try:
            dists, fixed = self._search_space(arguments)
        except ValueError as e:
            _refuse(f"The search space cannot be built: {str(e).rstrip('.')}. Check hydra.sweeper.params and the command line: "
                    "an interval(low, high) needs low < high (and low > 0 under tag(log, ...)), a choice(...) "
                    "at least one value.")
        is_grid = isinstance(self.sampler_cfg, DictConfig) and \
            get_class(self.sampler_cfg._target_) is optuna.samplers.GridSampler
        grid = None
        n_trials = self.n_trials
        if is_grid:
            grid = {}
            for name, dist in dists.items():
                values = grid_values(name, dist)
                if values is None:
                    raise ValueError(f"the grid sampler needs a finite parameter; {name} is continuous "
                                     "(use choice(...) or range(...))")
                grid[name] = values
            size = math.prod(len(v) for v in grid.values()) if grid else 1
            if size < n_trials:
                log.info(f"n_trials {n_trials} -> {size}: the grid has {size} points")
            n_trials = min(n_trials, size)
        self.n_trials_total = n_trials

        from . import _support

        self.support = _support.load(cfg)
        max_params = self.support.max_params(cfg) if self.support.budget else None
        directions = self._directions()
        study_name = self.study_name or OmegaConf.select(cfg, "hydra.runtime.choices.hparams_search") \
            or str(cfg.hydra.job.name)
        storage_url = self.storage or default_storage_url(cfg.hydra.runtime.cwd)
        if not self.is_worker and max_params is not None and not self.custom_search_space:
            self._check_feasible(dists, fixed, max_params)  # before the study exists: a refusal leaves none behind
        sampler = self._sampler(grid)
        pruner = instantiate(self.pruner_cfg) if self.pruner_cfg else optuna.pruners.NopPruner()
        created = False
        try:
            storage = open_storage(storage_url)
            study = optuna.create_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner,
                                        directions=directions, load_if_exists=False)
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner)
            have = [d.name.lower() for d in study.directions]
            if have != [d.lower() for d in directions]:
                log.error(f"Study '{study_name}' in {redact(storage_url)} optimizes {have}, but this sweep asks for "
                          f"{directions}. Use another hydra.sweeper.study_name, or delete the study "
                          f"(optuna delete-study --study-name {study_name} --storage {redact(storage_url)}).")
                sys.exit(2)
            self._check_same_sweep(study, storage_url, dists, fixed)
        except Exception as e:  # noqa: BLE001 - any storage that cannot be opened is the user's to fix
            _refuse(f"The Optuna storage hydra.sweeper.storage={redact(storage_url)} cannot be opened "
                    f"({type(e).__name__}: {redact(str(e).splitlines()[0]) if str(e) else ''}). Check the URL, that the "
                    "database server is up and its driver installed (e.g. psycopg for postgresql://: pip install -e .[cluster]), or leave "
                    "hydra.sweeper.storage=null for the SQLite study in multirun/optuna.db.")
        if created:
            study.set_user_attr(SIGNATURE_ATTR, self._signature(dists, fixed))
        self.study, self.study_name_, self.storage_url = study, study_name, str(storage_url)
        self.dists, self.fixed = dists, fixed

        role = f"worker {self.worker_index}" if self.is_worker else "sweep"
        done = sum(is_counted(t) for t in study.get_trials(deepcopy=False))
        log.info(f"[{role}] study '{study_name}' in {redact(storage_url)}: {done}/{n_trials} trials done | "
                 f"sampler {type(sampler).__name__} | pruner {type(pruner).__name__} | directions {directions}"
                 f" | n_jobs {self.n_jobs if not self.is_worker else 1}")

        try:
            self.parent_run_id = self.support.parent_run(study, study_name, created) if self.support.tracked else None
        except ValueError as e:  # sweeps' ConfigError, e.g. an unreachable tracking server
            _refuse(f"{str(e)[:1].upper()}{str(e)[1:]}")

        signal.signal(signal.SIGTERM, _on_sigterm)
        code = 0
        try:
            if not self.is_worker and self.n_jobs > 1:
                self._spawn_workers(study_name)
            code = self._work()
        except KeyboardInterrupt as e:
            self._interrupt_current(f"interrupted ({type(e).__name__}: {e})")
            self._stop_workers(signal.SIGTERM)
            log.error(f"Interrupted: the running trial is marked FAIL (interrupted=True) and queued again. "
                      f"Re-run the same command to resume the study '{study_name}'.")
            sys.exit(130)
        codes = self._wait_workers()
        if self.is_worker:
            sys.exit(code)
        if any(codes) and code == 0:
            code = next(c for c in codes if c)
            log.error(f"a worker process exited with status {code}; see {self.sweep_dir}/workers/")
        self._finish(started)
        if code:
            sys.exit(code)
        return None

    # ------------------------------------------------------------------ one study, one sweep

    def _signature(self, dists: Dict[str, BaseDistribution], fixed: Dict[str, str]) -> Dict[str, Dict[str, str]]:
        from optuna.distributions import distribution_to_json

        def kept(name: str) -> bool:
            return not name.startswith(self.study_ignores)

        return {"search_space": {name: distribution_to_json(d) for name, d in sorted(dists.items()) if kept(name)},
                "fixed": {name: str(v) for name, v in sorted(fixed.items()) if kept(name)}}

    def _check_same_sweep(self, study: optuna.Study, storage_url: Any,
                          dists: Dict[str, BaseDistribution], fixed: Dict[str, str]) -> None:
        """Refuse to mix this sweep's trials into a study another sweep made.

        Re-running a command resumes its study; a different command under the
        same study name (the default name is the hparams_search config or the
        task's) would silently add its trials to the old ones, compare them as
        one search and report the old best.
        """
        mine = self._signature(dists, fixed)
        theirs = study.user_attrs.get(SIGNATURE_ATTR)
        if not isinstance(theirs, dict):
            study.set_user_attr(SIGNATURE_ATTR, mine)  # a study made before signatures were kept
            return
        changes = []
        searched = set(theirs.get("search_space", {})) | set(mine["search_space"])
        for part in ("fixed", "search_space"):
            old, new = theirs.get(part, {}), mine[part]
            for name in sorted(set(old) | set(new)):
                if part == "fixed" and name in searched:
                    continue  # fixed in one sweep, searched in the other: said below
                if old.get(name) != new.get(name):
                    if part == "fixed":
                        was = f"{name}={old[name]}" if name in old else f"no {name}"
                        now = f"{name}={new[name]}" if name in new else f"no {name}"
                        changes.append(f"{was} there, {now} here")
                    elif name in old and name in new:
                        changes.append(f"{name} searched over other values here")
                    else:
                        changes.append(f"{name} searched {'there' if name in old else 'here'} only")
        if not changes:
            return
        name = study.study_name
        done = sum(is_counted(t) for t in study.get_trials(deepcopy=False))
        listed = "; ".join(changes[:6]) + (f"; and {len(changes) - 6} more" if len(changes) > 6 else "")
        if self.allow_study_changes:
            log.warning(f"Study '{name}' continues with changes (hydra.sweeper.allow_study_changes=true): {listed}.")
            return
        _refuse(f"Study '{name}' in {redact(storage_url)} was made by another sweep ({listed}); its {done} trial(s) "
                "would be mixed with this sweep's. Re-run that sweep's command to resume it; or give this sweep its "
                f"own study with hydra.sweeper.study_name=<new name> (and tracking.experiment=<new name> for its own "
                "MLflow experiment); or continue the old study with these changes on purpose with "
                "hydra.sweeper.allow_study_changes=true.")

    # ------------------------------------------------------------------ workers

    def _spawn_workers(self, study_name: str) -> None:
        argv = list(getattr(sys, "orig_argv", [sys.executable] + sys.argv))
        cmd = [sys.executable] + argv[1:] + [f"hydra.sweep.dir={_quote(os.path.abspath(self.sweep_dir))}",
                                             "hydra.sweeper.n_jobs=1"]
        n_gpus = 0
        if "CUDA_VISIBLE_DEVICES" not in os.environ:
            try:
                import torch

                n_gpus = torch.cuda.device_count()
            except Exception:
                n_gpus = 0
        logs = Path(self.sweep_dir) / "workers"
        logs.mkdir(parents=True, exist_ok=True)
        for k in range(1, self.n_jobs):
            env = dict(os.environ, **{WORKER_ENV: str(k)})
            if n_gpus > 1:
                env["CUDA_VISIBLE_DEVICES"] = str(k % n_gpus)
            out = open(logs / f"worker-{k}.log", "ab")
            self.workers.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                                 cwd=str(self.config.hydra.runtime.cwd)))
            out.close()
        if n_gpus > 1:
            os.environ["CUDA_VISIBLE_DEVICES"] = "0"
        log.info(f"started {self.n_jobs - 1} worker process(es); logs in {logs}")

    def _stop_workers(self, sig: int) -> None:
        for p in self.workers:
            if p.poll() is None:
                p.send_signal(sig)
        for p in self.workers:
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def _wait_workers(self) -> List[int]:
        return [p.wait() for p in self.workers]

    # ------------------------------------------------------------------ the loop

    def _work(self) -> int:
        study, n_trials = self.study, self.n_trials_total
        while True:
            self._reap_stale()
            trials = study.get_trials(deepcopy=False)
            failures = [t for t in trials if is_failure(t)]
            if len(failures) > self.max_failure_rate * n_trials:
                last = failures[-1].user_attrs.get(FAIL_REASON, "unknown")
                log.error(f"{len(failures)} of the {n_trials} trials failed, more than "
                          f"hydra.sweeper.max_failure_rate={self.max_failure_rate} allows; stopping. Last failure "
                          f"(trial {failures[-1].number}): {last}. Fix the cause, or raise max_failure_rate, "
                          "and re-run the same command to continue the study.")
                return 1
            counted = sum(is_counted(t) for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            if counted + running >= n_trials:
                return 0
            trial = study.ask(fixed_distributions=self.dists)
            self.current = trial
            self._stamp_owner(trial)
            ahead = sum(1 for t in study.get_trials(deepcopy=False)
                        if t.number < trial.number and (is_counted(t) or t.state == TrialState.RUNNING))
            if ahead >= n_trials:
                study._storage.set_trial_user_attr(trial._trial_id, SURPLUS, True)
                self._tell(trial, TrialState.FAIL)
                self.current = None
                continue
            self._run_trial(trial)
            self.current = None

    def _stamp_owner(self, trial: optuna.trial.Trial) -> None:
        pid = os.getpid()
        for key, value in ((HOST, socket.gethostname()), (PID, pid), (PID_START, _pid_start(pid)),
                           (HEARTBEAT, time.time())):
            trial.set_user_attr(key, value)

    def _reap_stale(self) -> None:
        study, host, now = self.study, socket.gethostname(), time.time()
        grace = STALE_HEARTBEATS * self.heartbeat_interval if self.heartbeat_interval else None
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            ua = t.user_attrs
            if ua.get(HOST) == host:
                stale = not _alive(ua.get(PID), ua.get(PID_START))
            else:
                beat = ua.get(HEARTBEAT) or (t.datetime_start.timestamp() if t.datetime_start else None)
                stale = grace is not None and beat is not None and now - beat > grace
            if not stale:
                continue
            run_id = ua.get(MLFLOW_RUN)
            if run_id and self.support.tracked and self._recover(t, run_id):
                continue
            try:
                study._storage.set_trial_user_attr(t._trial_id, INTERRUPTED, True)
                study._storage.set_trial_user_attr(t._trial_id, FAIL_REASON, "its process is gone (killed)")
                study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            except Exception as e:  # another process got there first
                log.debug(f"trial {t.number}: not reaped here ({e})")
                continue
            study.enqueue_trial(dict(t.params))
            log.warning(f"trial {t.number} was left RUNNING by a process that is gone "
                        f"({ua.get(HOST)}:{ua.get(PID)}): marked FAIL (interrupted) and queued again")
            if run_id and self.support.tracked:
                self.support.mark_killed(run_id, f"process {ua.get(HOST)}:{ua.get(PID)} was killed")

    def _recover(self, t: FrozenTrial, run_id: str) -> bool:
        """Record an orphaned trial whose job had ended (its process died before telling
        the study) with the outcome its MLflow run holds, instead of running it again."""
        ended = self.support.ended_run(run_id)
        if ended is None:
            return False
        state, values, reason = ended
        if state == "COMPLETE" and (values is None or len(values) != len(self.study.directions)):
            return False
        storage = self.study._storage
        try:
            storage.set_trial_user_attr(t._trial_id, RECOVERED, True)
            if reason:
                storage.set_trial_user_attr(t._trial_id, FAIL_REASON if state == "FAIL" else REASON, reason[:2000])
            storage.set_trial_state_values(t._trial_id, TrialState[state], values)
        except Exception as e:  # another process got there first
            log.debug(f"trial {t.number}: not recovered here ({e})")
            return True
        log.warning(f"trial {t.number} was left RUNNING by a process that is gone ({t.user_attrs.get(HOST)}:"
                    f"{t.user_attrs.get(PID)}), but its job had ended: recorded {state}"
                    + (f" {values if len(values) > 1 else values[0]}" if values else "")
                    + f" from MLflow run {run_id}")
        return True

    def _tell(self, trial: optuna.trial.Trial, state: TrialState, values: Optional[List[float]] = None) -> None:
        try:
            self.study.tell(trial, values=values, state=state)
        except Exception as e:
            # Optuna stores the state even when the sampler's after_trial raises; the grid sampler
            # does for re-enqueued trials (KeyError 'grid_id') and calls study.stop() outside
            # optimize() (RuntimeError). Both are harmless here.
            if not self.study._storage.get_trial(trial._trial_id).state.is_finished():
                raise
            log.debug(f"trial {trial.number}: the sampler's after_trial raised {type(e).__name__}: {e}")

    def _overrides(self, trial: optuna.trial.Trial) -> List[str]:
        if self.custom_search_space is not None:
            self.custom_search_space(self.config, trial)
        overlap = set(trial.params) & set(self.fixed)
        if overlap:
            raise ValueError(f"parameters both fixed and searched: {sorted(overlap)}")
        items = {name: format_value(value) for name, value in trial.params.items()}
        items.update(self.fixed)
        return [f"{name}={value}" for name, value in items.items()]

    def _trial_context(self, number: int) -> List[str]:
        if "trial" not in self.config:
            return []
        storage = self.storage_url
        if has_secret(storage):
            # The job reads the URL from the environment (inherited by local and
            # submitit jobs; sbatch exports it), so no password lands in its
            # overrides, its saved config or the launcher's log.
            os.environ[STORAGE_ENV] = storage
            storage = "${oc.env:" + STORAGE_ENV + "}"
        ctx = [f"trial.study={_quote(self.study_name_)}", f"trial.storage={_quote(storage)}",
               f"trial.number={number}"]
        if self.parent_run_id:
            ctx.append(f"trial.parent_run_id={self.parent_run_id}")
        return ctx

    def _fail(self, trial: optuna.trial.Trial, reason: str) -> None:
        trial.set_user_attr(FAIL_REASON, reason[:2000])
        self._tell(trial, TrialState.FAIL)
        log.warning(f"trial {trial.number} FAIL: {reason}")

    def _run_trial(self, trial: optuna.trial.Trial) -> None:
        try:
            overrides = self._overrides(trial)
        except Exception as e:
            self._fail(trial, f"{type(e).__name__}: {e}")
            return
        trial.set_user_attr(OVERRIDES, overrides)
        run_name = ",".join(o for o in overrides) or "defaults"
        if self.support.budget:
            verdict = self._precheck(trial, overrides, run_name)
            if verdict is not None:
                return
        job = tuple(overrides + self._trial_context(trial.number))
        log.info(f"trial {trial.number}: {' '.join(overrides)}")
        self._pin_submitit_local_gpus()
        try:
            with _Heartbeat(self.study._storage, trial._trial_id, self.heartbeat_interval):
                ret = self.launcher.launch([job], initial_job_idx=trial.number)[0]
        except SystemExit as e:
            self._fail(trial, f"the job called sys.exit({e.code})")
            return
        except Exception as e:  # noqa: BLE001 - e.g. submitit: sbatch refused the job, or its process died
            text = redact(f"the launcher could not run the job ({type(e).__name__}: {e})")[:2000]
            self._record_unstarted(trial, text)
            self._fail(trial, text)
            return
        finally:
            signal.signal(signal.SIGTERM, _on_sigterm)  # the job may have installed its own handler
        self._tell_result(trial, ret)

    def _pin_submitit_local_gpus(self) -> None:
        """Keep a worker's GPU for its submitit_local jobs.

        submitit's local executor sets the job's CUDA_VISIBLE_DEVICES to GPUs
        0..gpus_per_node-1 (its ``visible_gpus`` cannot be set through the
        plugin), which would put every worker's trials on GPU 0; its ``setup``
        commands run in the job's shell first, so they put the worker's GPU back.
        """
        params = getattr(self.launcher, "params", None)
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        if getattr(self.launcher, "_EXECUTOR", None) != "local" or not isinstance(params, dict):
            return
        ids = [x.strip() for x in visible.split(",") if x.strip()]
        if ids and all(x.isdigit() for x in ids):
            params["setup"] = [f"export CUDA_VISIBLE_DEVICES={','.join(ids)}"]

    def _precheck(self, trial: optuna.trial.Trial, overrides: List[str], run_name: str) -> Optional[str]:
        """Compose the trial's config and count its model: None when it may run."""
        try:
            cfg = self.config_loader.load_sweep_config(self.config, list(overrides))
            n_params = self.support.count_params(cfg)
        except Exception as e:
            reason = f"the config cannot be built: {e}"
            self._record(trial, None, "FAIL", reason, run_name, overrides)
            self._fail(trial, reason)
            return "FAIL"
        trial.set_user_attr(N_PARAMS, n_params)
        limit = self.support.max_params(cfg)
        if limit is not None:  # Optuna 5's constraint API (TPE, NSGA-II, GP and others read it)
            trial.set_constraint("n_params_over_budget", float(n_params - limit))
        if limit is not None and n_params > limit:
            reason = f"{n_params:,} parameters, over budget.max_params={limit:,}; not trained"
            trial.set_user_attr(INFEASIBLE, True)
            trial.set_user_attr(REASON, reason)
            self._record(trial, cfg, "INFEASIBLE", reason, run_name, overrides, n_params)
            self._tell(trial, TrialState.PRUNED)
            log.info(f"trial {trial.number} INFEASIBLE: {run_name}: {reason}")
            return "INFEASIBLE"
        return None

    def _record(self, trial, cfg, state, reason, run_name, overrides, n_params=None) -> None:
        if not self.support.tracked:
            return
        try:
            if cfg is None:  # best effort: the master config with the trial's resolvable overrides
                cfg = self.config
            run_id = self.support.record_refused(
                cfg, study_name=self.study_name_, trial_number=trial.number, parent_run_id=self.parent_run_id,
                run_name=run_name, state=state, reason=reason, n_params=n_params)
            trial.set_user_attr(MLFLOW_RUN, run_id)
        except Exception as e:
            log.warning(f"trial {trial.number}: could not record the {state} run in MLflow ({e})")

    def _record_unstarted(self, trial: optuna.trial.Trial, text: str) -> None:
        """A failed job that never opened its MLflow run (a value validate() refused, a
        submission the cluster refused) is recorded anyway, so every trial is a run."""
        if MLFLOW_RUN in self.study._storage.get_trial(trial._trial_id).user_attrs:
            return
        overrides = list(trial.user_attrs.get(OVERRIDES, []))
        try:
            cfg = self.config_loader.load_sweep_config(self.config, overrides)
        except Exception:  # noqa: BLE001 - _record falls back to the sweep's own config
            cfg = None
        self._record(trial, cfg, "FAIL", text, ",".join(overrides) or "defaults", overrides,
                     trial.user_attrs.get(N_PARAMS))

    def _tell_result(self, trial: optuna.trial.Trial, ret: Any) -> None:
        n_obj = len(self.study.directions)
        if ret.status != JobStatus.COMPLETED:
            exc = ret._return_value
            if isinstance(exc, optuna.TrialPruned):
                trial.set_user_attr(REASON, str(exc))
                self._tell(trial, TrialState.PRUNED)
                log.info(f"trial {trial.number} PRUNED: {exc}")
                return
            n_params, limit = getattr(exc, "n_params", None), getattr(exc, "max_params", None)
            if n_params is not None and limit is not None:  # BudgetExceeded raised by the job itself
                trial.set_user_attr(INFEASIBLE, True)
                trial.set_user_attr(N_PARAMS, int(n_params))
                trial.set_user_attr(REASON, str(exc))
                self._tell(trial, TrialState.PRUNED)
                return
            text = str(exc) or type(exc).__name__
            if type(exc).__name__ not in ("Diverged",) and not isinstance(exc, ValueError):
                text = f"{type(exc).__name__}: {text}"
            self._record_unstarted(trial, text)
            self._fail(trial, text)
            return
        value = ret._return_value
        try:
            raw = [value] if n_obj == 1 and not isinstance(value, (list, tuple, ListConfig)) else list(value)
            values = [float(v) for v in raw]
        except (TypeError, ValueError):
            self._fail(trial, f"the job returned {value!r}, not {'a number' if n_obj == 1 else 'numbers'}")
            return
        if len(values) != n_obj:
            self._fail(trial, f"the job returned {len(values)} value(s) for {n_obj} objective(s): {values}")
            return
        if not all(math.isfinite(v) for v in values):
            self._fail(trial, f"the objective is not finite: {values}")
            return
        self._tell(trial, TrialState.COMPLETE, values)
        log.info(f"trial {trial.number} COMPLETE: {values if n_obj > 1 else values[0]}")

    def _interrupt_current(self, reason: str) -> None:
        trial = self.current
        self.current = None
        if trial is None:
            return
        try:
            frozen = self.study._storage.get_trial(trial._trial_id)
            if frozen.state.is_finished():
                return
            trial.set_user_attr(INTERRUPTED, True)
            trial.set_user_attr(FAIL_REASON, reason)
            self.study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            self.study.enqueue_trial(dict(frozen.params))
            log.warning(f"trial {trial.number} interrupted: marked FAIL (interrupted=True) and queued again")
        except Exception as e:
            log.error(f"could not mark trial {trial.number} as interrupted ({e}); the next run will reap it")

    # ------------------------------------------------------------------ feasibility and results

    def _check_feasible(self, dists: Dict[str, BaseDistribution], fixed: Dict[str, str], limit: int) -> None:
        values = {name: grid_values(name, d) for name, d in dists.items()}
        if any(v is None for v in values.values()):
            return  # a continuous space: some point may always fit
        names = list(values)
        size = math.prod(len(v) for v in values.values()) if names else 1
        if size > MAX_FEASIBILITY_POINTS:
            log.info(f"search space of {size} points: skipping the budget pre-check")
            return
        smallest: Optional[Tuple[int, List[str]]] = None
        errors = 0
        for combo in product(*(values[n] for n in names)):
            overrides = [f"{n}={format_value(v)}" for n, v in zip(names, combo)] + [f"{k}={v}" for k, v in fixed.items()]
            try:
                cfg = self.config_loader.load_sweep_config(self.config, overrides)
                n_params = self.support.count_params(cfg)
                cap = self.support.max_params(cfg)
            except Exception:
                errors += 1
                continue
            if cap is None or n_params <= cap:
                return
            if smallest is None or n_params < smallest[0]:
                smallest = (n_params, overrides)
        if smallest is None:
            detail = f"none of its {size} points even builds a model"
        else:
            detail = (f"the smallest model has {smallest[0]:,} parameters ({' '.join(smallest[1])})"
                      + (f", and {errors} point(s) do not build" if errors else ""))
        log.error(f"No point of the search space fits the parameter budget budget.max_params={limit:,}: {detail}. "
                  "Nothing was launched. Shrink the searched models (fewer blocks, narrower channels, a smaller "
                  "head) or lift the budget (budget.max_params=...), then re-run.")
        sys.exit(2)

    def _finish(self, started: float) -> None:
        study, n_trials = self.study, self.n_trials_total
        trials = study.get_trials(deepcopy=False)
        count = {
            "complete": sum(t.state == TrialState.COMPLETE for t in trials),
            "pruned": sum(t.state == TrialState.PRUNED and not t.user_attrs.get(INFEASIBLE) for t in trials),
            "infeasible": sum(t.state == TrialState.PRUNED and bool(t.user_attrs.get(INFEASIBLE)) for t in trials),
            "failed": sum(is_failure(t) for t in trials),
            "interrupted": sum(t.state == TrialState.FAIL and bool(t.user_attrs.get(INTERRUPTED)) for t in trials),
            "surplus": sum(bool(t.user_attrs.get(SURPLUS)) for t in trials),
        }
        counted = sum(is_counted(t) for t in trials)
        results: Dict[str, Any] = {"name": self.study_name_, "storage": redact(self.storage_url),
                                   "n_trials": n_trials, "counted_trials": counted, "trials": count}
        best_value_text = "n/a"
        best: Optional[FrozenTrial] = None
        if len(study.directions) == 1:
            try:
                best = study.best_trial
                results["best_params"] = dict(best.params)
                results["best_value"] = best.value
                results["best_trial"] = best.number
                best_value_text = f"{best.value:.6g} (trial {best.number})"
            except ValueError:
                pass
        else:
            front = study.best_trials
            results["best_trials"] = [{"number": t.number, "params": dict(t.params), "values": list(t.values)}
                                      for t in front]
            best_value_text = f"{len(front)} Pareto-optimal trial(s)"
            best = front[0] if front else None
        if best is not None and best.user_attrs.get(OVERRIDES) is not None:
            try:
                best_cfg = self.config_loader.load_sweep_config(self.config, list(best.user_attrs[OVERRIDES]))
                results["best_config"] = OmegaConf.to_container(
                    OmegaConf.masked_copy(best_cfg, [k for k in best_cfg if k != "hydra"]), resolve=False)
            except Exception as e:
                log.warning(f"could not compose the best trial's config ({e})")
        wall = time.perf_counter() - started
        results["wall_time_s"] = round(wall, 1)
        out = Path(self.sweep_dir)
        out.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), out / RESULTS_FILE)
        if self.support.tracked and self.parent_run_id and counted >= n_trials:
            metrics = {"best_value": results["best_value"]} if "best_value" in results else {}
            try:
                self.support.finish_parent(self.parent_run_id, metrics)
            except Exception as e:
                log.warning(f"could not finish the MLflow parent run ({e})")
        summary = (f"Sweep '{self.study_name_}': {counted}/{n_trials} trials | {count['complete']} complete, "
                   f"{count['pruned']} pruned, {count['failed']} failed, {count['infeasible']} infeasible"
                   + (f", {count['interrupted']} interrupted (re-run)" if count["interrupted"] else "")
                   + f" | best {best_value_text} | {wall:.1f}s | results: {out / RESULTS_FILE}")
        log.info(summary)
