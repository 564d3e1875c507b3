"""The study's books: exactly ``n_trials`` counted trials, none run twice, none left RUNNING.

Any number of processes on any number of hosts may work on one study; they
coordinate only through the storage, with these rules (see
:mod:`.contract` for what counts):

1. **Ask only while there is room**: a process asks for a trial only while
   counted + RUNNING < n_trials.
2. **Surplus**: two processes may ask at the same moment. After asking, a trial
   whose lower-numbered counted-or-running trials already make n_trials is
   marked FAIL + ``surplus`` and never launched, so the lowest numbers win.
3. **Reap**: a RUNNING trial whose process is gone (:mod:`.liveness`) is taken
   over by whichever process sees it first: if its job had finished (its run
   record says how), the trial is *recovered* with that outcome; otherwise it is
   marked FAIL + ``interrupted`` and its parameters are queued again, so the
   point still runs, once.
4. **Interrupt**: a process stopped by Ctrl-C or SIGTERM does the same to its
   own running trial before it exits.

Nothing here knows Hydra or the app: the functions take a study and callables,
so each rule is tested on a real in-memory or SQLite study.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, List, Optional

import optuna
from optuna.trial import FrozenTrial, TrialState

from .contract import COMPLETE, FAIL, FAIL_REASON, INTERRUPTED, OWNER, REASON, RECOVERED, SURPLUS, is_counted, is_failure
from .hooks import Outcome
from .liveness import owner_text
from .storage import params_in_one_write

log = logging.getLogger(__name__)

try:  # study.tell's own body (Optuna >= 3), which returns nothing
    from optuna.study._tell import _tell_with_warning as _optuna_tell
except ImportError:  # pragma: no cover - a future Optuna without it: the public tell
    _optuna_tell = None


def _tell(study: optuna.Study, trial: optuna.trial.Trial, values: Optional[List[float]], state: TrialState) -> None:
    if _optuna_tell is None:
        study.tell(trial, values=values, state=state)
    else:
        _optuna_tell(study=study, trial=trial, value_or_values=values, state=state)


MAX_REASON = 2000  # characters of a reason kept in a trial's user attrs


@dataclass
class Tally:
    """The study's trials at one moment, read once."""

    trials: List[FrozenTrial]
    counted: int = 0
    running: List[FrozenTrial] = field(default_factory=list)
    failures: List[FrozenTrial] = field(default_factory=list)

    @classmethod
    def of(cls, study: optuna.Study) -> "Tally":
        trials = study.get_trials(deepcopy=False)
        return cls(trials, sum(is_counted(t) for t in trials), [t for t in trials if t.state == TrialState.RUNNING],
                   [t for t in trials if is_failure(t)])

    def has_room(self, n_trials: int) -> bool:
        return self.counted + len(self.running) < n_trials


def ask(study: optuna.Study, n_trials: int, fixed_distributions: dict, owner: dict,
        tally: Optional[Tally] = None) -> Optional[optuna.trial.Trial]:
    """A new trial owned by ``owner`` (rule 1 is the caller's); None when it turned out surplus, or
    when the sampler raised while sampling it (then it is FAIL with the sampler's error: a missing
    package, a bug, a search space it cannot handle), so no trial stays RUNNING for it. ``tally``:
    the study as read just before asking, which settles rule 2 without another read while the
    study is far from full (see :func:`claim`)."""
    trial = _ask_owned(study, owner)
    if not claim(study, trial, n_trials, tally):
        return None
    try:
        with params_in_one_write(study._storage):
            for name, dist in fixed_distributions.items():
                trial._suggest(name, dist)  # what study.ask(fixed_distributions) does, after the owner is known
    except Exception as e:  # noqa: BLE001 - the sampler's own code
        fail(study, trial, f"the sampler {type(study.sampler).__name__} failed: {type(e).__name__}: {e}")
        return None
    return trial


def _ask_owned(study: optuna.Study, owner: dict) -> optuna.trial.Trial:
    """``study.ask()`` with ``owner`` in the very write that makes the trial RUNNING, so a new trial is
    never ownerless and its owner costs no storage write (an fsync on SQLite) of its own.

    A trial popped from the queue (WAITING, made RUNNING by the pop) still gets its owner in
    a second write, a window of milliseconds that :func:`.liveness.is_stale`'s grace covers.
    """
    pop = getattr(study, "_pop_waiting_trial_id", None)
    if pop is None or not hasattr(study, "_thread_local"):  # pragma: no cover - a future Optuna: two writes
        trial = study.ask()
        study._storage.set_trial_user_attr(trial._trial_id, OWNER, owner)
        return trial
    study._thread_local.cached_all_trials = None  # what study.ask() does first: sync with the storage
    trial_id = pop()
    if trial_id is None:
        template = FrozenTrial(number=-1, state=TrialState.RUNNING, value=None, datetime_start=datetime.now(),
                               datetime_complete=None, params={}, distributions={}, user_attrs={OWNER: owner},
                               system_attrs={}, intermediate_values={}, trial_id=-1)
        trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
    else:
        study._storage.set_trial_user_attr(trial_id, OWNER, owner)
    return optuna.Trial(study, trial_id)


def fail(study: optuna.Study, trial: optuna.trial.Trial, reason: str) -> None:
    """FAIL with ``fail_reason``; told even when the reason cannot be written."""
    try:
        study._storage.set_trial_user_attr(trial._trial_id, FAIL_REASON, reason[:MAX_REASON])
    finally:
        tell_state(study, trial, TrialState.FAIL)
    log.warning(f"trial {trial.number} FAIL: {reason}")


def claim(study: optuna.Study, trial: optuna.trial.Trial, n_trials: int, tally: Optional[Tally] = None) -> bool:
    """Rule 2: keep a just-asked trial, or mark it surplus (FAIL, never launched) when the
    counted-or-running trials numbered below it already make ``n_trials``."""
    if tally is not None and _most_ahead(tally, trial.number) < n_trials:
        return True  # cannot be surplus: spare the storage a read of every trial
    storage = study._storage
    ahead = sum(1 for t in storage.get_all_trials(study._study_id, deepcopy=False,
                                                  states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                          TrialState.FAIL, TrialState.RUNNING))
                if t.number < trial.number and (is_counted(t) or t.state == TrialState.RUNNING))
    if ahead < n_trials:
        return True
    storage.set_trial_user_attr(trial._trial_id, SURPLUS, True)
    tell_state(study, trial, TrialState.FAIL)
    return False


def _most_ahead(tally: Tally, number: int) -> int:
    """The most counted-or-running trials that can be numbered below ``number``, given the study's
    trials as read before it was asked (``tally``).

    A trial read then as counted stays counted, a RUNNING or WAITING one may
    become counted or running, an uncounted FAIL stays uncounted; every trial
    made after the read (by any process) is numbered between the read ones
    and ``number``. So this bounds what :func:`claim` would count, exactly.
    """
    waiting = sum(1 for t in tally.trials if t.state == TrialState.WAITING)
    return tally.counted + len(tally.running) + waiting + max(0, number - len(tally.trials))


def tell_state(study: optuna.Study, trial: optuna.trial.Trial, state: TrialState,
               values: Optional[List[float]] = None) -> None:
    """``study.tell``, tolerating a sampler whose ``after_trial`` raises once the state is stored.

    The grid sampler does for re-enqueued trials (KeyError 'grid_id') and calls
    ``study.stop()`` outside ``optimize()`` (RuntimeError); the trial is told all
    the same, which is what matters here.

    It is ``study.tell`` without its last step, a fresh read of the told trial
    (six queries on an RDB storage) that only builds the copy it returns, which
    nobody here reads: that read is on the path between two trials.
    """
    try:
        _tell(study, trial, values=values, state=state)
    except Exception:
        if not study._storage.get_trial(trial._trial_id).state.is_finished():
            raise


def interrupt(study: optuna.Study, t: FrozenTrial, reason: str) -> bool:
    """Rule 3's second branch and rule 4: FAIL + ``interrupted``, parameters queued again.

    False when another process finished or took the trial first (nothing done here).
    """
    storage = study._storage
    try:
        storage.set_trial_user_attr(t._trial_id, INTERRUPTED, True)
        storage.set_trial_user_attr(t._trial_id, FAIL_REASON, reason)
        if not storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    # a queued trial killed before it was sampled still has its point in ``fixed_params``; a new one
    # has nothing to queue (the next ask samples afresh) unless the grid sampler gave it its point
    params = dict(t.params) or dict(t.system_attrs.get("fixed_params") or {}) or _grid_point(study.sampler, t)
    if params:
        study.enqueue_trial(params)
    return True


def _grid_point(sampler: optuna.samplers.BaseSampler, t: FrozenTrial) -> dict:
    """The grid point a grid sampler gave a trial that was killed before its parameters were set:
    finished, the trial marks the point visited, so it must run under another trial."""
    grid_id = t.system_attrs.get("grid_id")
    if not isinstance(sampler, optuna.samplers.GridSampler) or grid_id is None:
        return {}
    return dict(zip(sampler._param_names, sampler._all_grids[grid_id]))


def recover(study: optuna.Study, t: FrozenTrial, state: str, values: Optional[List[float]], reason: str) -> bool:
    """Rule 3's first branch: finish ``t`` with the outcome its job recorded (``recovered``)."""
    storage = study._storage
    try:
        storage.set_trial_user_attr(t._trial_id, RECOVERED, True)
        if reason:
            storage.set_trial_user_attr(t._trial_id, FAIL_REASON if state == FAIL else REASON, reason[:MAX_REASON])
        return bool(storage.set_trial_state_values(t._trial_id, TrialState[state], values))
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def reap(study: optuna.Study, tally: Tally, stale: Callable[[FrozenTrial], bool],
         outcome: Optional[Callable[[FrozenTrial], Optional[Outcome]]] = None,
         on_orphan: Optional[Callable[[FrozenTrial], None]] = None) -> int:
    """Take over every stale RUNNING trial of ``tally`` (rule 3); returns how many were reaped.

    ``outcome(t)`` says how the trial's job ended when it had, else None;
    ``on_orphan(t)`` closes the records of a trial that did not finish. ``tally``
    is updated to match, so the caller need not read the study again.
    """
    n_dirs = len(study.directions)
    reaped = 0
    for t in list(tally.running):
        if not stale(t):
            continue
        ended = outcome(t) if outcome is not None else None
        if ended is not None and (ended.state != COMPLETE or len(ended.values or ()) == n_dirs):
            state, values = ended.state, ended.values
            if recover(study, t, state, values, ended.reason):
                log.warning(f"trial {t.number} was left RUNNING by a process that is gone ({owner_text(t)}), but its "
                            f"job had ended: recorded {state}"
                            + (f" {values if len(values) > 1 else values[0]}" if values else ""))
                tally.counted += 1
                tally.running.remove(t)
                if state == FAIL:
                    tally.failures.append(t)
                reaped += 1
            continue
        if not interrupt(study, t, "its process is gone (killed)"):
            log.debug(f"trial {t.number}: taken over by another process first")
            continue
        log.warning(f"trial {t.number} was left RUNNING by a process that is gone ({owner_text(t)}): "
                    "marked FAIL (interrupted) and queued again")
        tally.running.remove(t)
        reaped += 1
        if on_orphan is not None:
            on_orphan(t)
    return reaped
