"""What the sweeper, the jobs it launches and whoever reads a study afterwards agree on.

Everything here is a name or a rule that more than one process reads: the
sweeper writes a trial's user attrs, a job (through the app's hooks) records
its run under these tags, and a report reads both back. Define a name here and
nowhere else; an app imports this module (it is public), the sweeper never
imports the app.

The counting rule
    A study holds exactly ``n_trials`` *counted* trials: COMPLETE + PRUNED +
    FAIL, where FAIL excludes trials marked ``interrupted`` (their process was
    killed or interrupted; their parameters are queued again, so the point still
    runs) and ``surplus`` (asked by a cooperating process after the total was
    reached; never launched). Infeasible trials (over the app's parameter
    budget, told as PRUNED with ``infeasible``) count: their point is decided.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any, ClassVar, Optional

if TYPE_CHECKING:  # an app's error classes import this module: keep Optuna out of their import time
    from optuna.trial import FrozenTrial

# --------------------------------------------------------------------------- trial user attrs

INTERRUPTED = "interrupted"  # FAIL because its process died or was stopped; not counted; re-queued
SURPLUS = "surplus"  # FAIL because another process reached n_trials first; not counted; never launched
INFEASIBLE = "infeasible"  # PRUNED without training: over the parameter budget
RECOVERED = "recovered"  # finished from its run's record after its sweep process died
FAIL_REASON = "fail_reason"  # why a FAIL trial failed (one paragraph)
REASON = "reason"  # why a PRUNED trial stopped, or why it is infeasible
N_PARAMS = "n_params"  # the trial's model size, counted before launch
OVERRIDES = "overrides"  # the command-line overrides the trial's job ran with
OWNER = "owner"  # {"host", "pid", "pid_start"} of the process running the trial, written once
HEARTBEAT = "heartbeat"  # time.time() of the owner's last liveness stamp
RUN_ID = "mlflow_run_id"  # the trial's run in the app's tracker (MLflow in sweeps), once it exists

# --------------------------------------------------------------------------- study user attrs

PARENT_RUN_ID = "mlflow_parent_run_id"  # the sweep's parent run, shared by every process of the sweep
SIGNATURE = "sweeps.signature"  # the search space and fixed overrides that made the study

# --------------------------------------------------------------------------- run records (MLflow tags)

TAG_STUDY = "sweeps.study"
TAG_TRIAL = "sweeps.trial"
TAG_ROLE = "sweeps.role"  # "parent" on a sweep's parent run
TAG_STATE = "sweeps.state"  # one of STATES
TAG_REASON = "sweeps.reason"
TAG_OVERRIDES = "sweeps.overrides"  # every override of a run whose name is shorter (a trial's, or one cut to fit)
# MLflow keeps a tag value of at most 8000 characters (a database server refuses more); tags
# that quote a reason or a command line keep their first MAX_TAG.
MAX_TAG = 5000
ROLE_PARENT = "parent"
# Replicates: a trial's run trains K seeds, each its own run, a child of the trial's run.
TAG_REPLICATES = "sweeps.replicates"  # "K" on a trial's run whose metrics are aggregates over K replicates
TAG_REPLICATE = "sweeps.replicate"  # "0".."K-1" on a replicate's run
TAG_REPLICATE_SEED = "sweeps.replicate_seed"  # the seed a replicate trained with
TAG_REPLICATE_OF = "sweeps.replicate_of"  # the trial's run id, on each of its replicates' runs

# --------------------------------------------------------------------------- states

COMPLETE, PRUNED, FAIL = "COMPLETE", "PRUNED", "FAIL"
INFEASIBLE_STATE, INTERRUPTED_STATE, RUNNING = "INFEASIBLE", "INTERRUPTED", "RUNNING"
# In the order a report lists them: finished results first.
STATES = (COMPLETE, PRUNED, INTERRUPTED_STATE, RUNNING, FAIL, INFEASIBLE_STATE)

# A run record's terminal status (MLflow's vocabulary) for each state, and back.
STATUS_OF_STATE = {COMPLETE: "FINISHED", PRUNED: "FINISHED", INFEASIBLE_STATE: "FINISHED",
                   FAIL: "FAILED", INTERRUPTED_STATE: "KILLED", RUNNING: "RUNNING"}
STATE_OF_STATUS = {"FINISHED": COMPLETE, "FAILED": FAIL, "KILLED": INTERRUPTED_STATE,
                   "RUNNING": RUNNING, "SCHEDULED": RUNNING}


def is_counted(t: "FrozenTrial") -> bool:
    """Whether ``t`` is one of the study's ``n_trials`` (see the counting rule above)."""
    if t.state.name in (COMPLETE, PRUNED):
        return True
    if t.state.name == FAIL:
        return not (t.user_attrs.get(INTERRUPTED) or t.user_attrs.get(SURPLUS))
    return False


def is_failure(t: "FrozenTrial") -> bool:
    """A counted FAIL: what ``max_failure_rate`` limits."""
    return t.state.name == FAIL and is_counted(t)


def trial_state(t: "FrozenTrial") -> str:
    """The state a report shows for an Optuna trial (INFEASIBLE and INTERRUPTED told apart)."""
    if t.user_attrs.get(INFEASIBLE):
        return INFEASIBLE_STATE
    if t.state.name == FAIL and t.user_attrs.get(INTERRUPTED):
        return INTERRUPTED_STATE
    if t.state.name in (RUNNING, "WAITING"):
        return RUNNING
    return t.state.name


# --------------------------------------------------------------------------- what a job may raise


class UserError(Exception):
    """A failure whose message is one whole paragraph for the user: shown as it is, with no
    class name in front and no traceback.

    The sweeper refuses a sweep with one (exit 2, before any trial); a job or a hook
    raises its own subclasses (a bad value, a diverged loss, out of memory), and a
    trial that ends with one is recorded with that sentence as its reason.
    """


class MachineFault(UserError):
    """Raised by a job stopped for a reason of the machine's, not of its configuration (a full
    disk): its trial is queued again (FAIL + ``interrupted``, not counted) and the sweep stops,
    since every next trial would meet the same; re-running the command once it is fixed goes on."""

    exit_code = 1


class Infeasible(UserError):
    """Raised by a job whose model is over the app's parameter budget: the trial is PRUNED
    with ``infeasible``, not a failure. Pickled back from a cluster job by its numbers."""

    def __init__(self, n_params: int, max_params: int, message: Optional[str] = None):
        self.n_params, self.max_params = int(n_params), int(max_params)
        super().__init__(message or f"{self.n_params:,} parameters, over budget.max_params={self.max_params:,}")

    def __reduce__(self) -> Any:
        return (type(self), (self.n_params, self.max_params, str(self)))


class Interrupted(KeyboardInterrupt):
    """SIGTERM (e.g. SLURM preemption) and Ctrl-C, handled alike in the sweep process and in its jobs.

    Both install it, so a job that replaced the sweeper's handler leaves the same
    behaviour behind; a run that ends with it is recorded as INTERRUPTED, not FAIL.

    Ctrl-C comes here too, not to Python's own handler, for two of its faults.
    A KeyboardInterrupt raised inside a finalizer ("Exception ignored in ...
    __del__", e.g. SQLAlchemy's or GitPython's under MLflow) is dropped; so the
    signal stays *pending* until the command acts on it (:meth:`clear`), and the
    training step and the sweep loop call :meth:`check` to raise it again. And
    a bare KeyboardInterrupt that passes out of ``exec()`` of a string (torch's
    lazy imports build dataclasses so) makes the interpreter end by SIGINT at
    exit, whatever status the sweep chose; this subclass does not.
    """

    pending: ClassVar[Optional[int]] = None  # the signal whose exception nobody has acted on yet

    @classmethod
    def on_signals(cls) -> None:
        signal.signal(signal.SIGTERM, cls._raise)
        # Python leaves SIGINT alone where it was ignored at start (``nohup cmd &``): so does this.
        if signal.getsignal(signal.SIGINT) in (signal.default_int_handler, cls._raise):
            signal.signal(signal.SIGINT, cls._raise)

    @classmethod
    def _raise(cls, signum: int, frame: Any) -> None:
        Interrupted.pending = signum
        cls.check()

    @classmethod
    def check(cls) -> None:
        """Raise the pending signal's exception again, where a finalizer swallowed it."""
        if Interrupted.pending is not None:
            raise cls(f"received {signal.Signals(Interrupted.pending).name}")

    @classmethod
    def clear(cls) -> None:
        Interrupted.pending = None
