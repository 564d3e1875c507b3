"""Whether the process that runs a trial is still alive.

Each running trial carries one ``owner`` record (host, pid, the pid's start
time, and the time of its last heartbeat), written in the storage write that
makes the trial (or, for a queued trial, in one write as it is taken up) and
rewritten every ``heartbeat_interval`` seconds, so a kill can never leave half
an owner behind. A RUNNING trial is stale when

* its owner is on this host and that process is gone (or its pid was reused):
  at once, without waiting for a heartbeat;
* its owner is on another host and its last heartbeat is older than
  ``STALE_HEARTBEATS`` intervals;
* it has no owner at all (its process died between taking a queued trial up
  and the owner's write, a window of milliseconds) and it started more than
  ``ownerless_grace`` seconds ago. A sweep that finds such a trial waits that
  long rather than leave it RUNNING, so one re-run always settles the study.

Why not Optuna's own heartbeat (``RDBStorage(heartbeat_interval=...)`` with
``fail_stale_trials``)? It marks a stale trial FAIL first and only then calls
its callback, and a finished trial can no longer be changed
(``UpdateFinishedTrialError``). So it cannot mark the trial ``interrupted`` (which
keeps it out of the count), nor record the result of a job that had finished
before its sweep process died; it has no same-host shortcut (a dead local pid
waits for the grace period), and Optuna's journal storage has no heartbeat at
all. ``tests/test_ledger.py`` shows the first point on a real study.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

from optuna.trial import FrozenTrial

from .contract import OWNER

STALE_HEARTBEATS = 4
OWNERLESS_GRACE_S = 60


def pid_start(pid: int) -> Optional[str]:
    """The start time of ``pid`` (``/proc/<pid>/stat`` field 22), None when gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return None if fields[0] == "Z" else fields[19]


def alive(pid: int, start: Optional[str]) -> bool:
    """Whether the process ``pid`` that started at ``start`` still runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if Path("/proc").is_dir():
        now = pid_start(pid)
        if now is None:
            return False  # gone or a zombie
        if start is not None and now != start:
            return False  # the pid was reused
    return True


def this_process() -> Dict[str, Any]:
    """The owner record of a trial run by this process, with a fresh heartbeat."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_start": pid_start(pid), "beat": time.time()}


def owner_text(t: FrozenTrial) -> str:
    owner = t.user_attrs.get(OWNER) or {}
    return f"{owner.get('host', '?')}:{owner.get('pid', '?')}" if owner else "an unknown process"


def ownerless_grace(interval: Optional[float]) -> float:
    """How long a trial may run without an owner: a heartbeat interval, at most a minute."""
    return min(float(interval), OWNERLESS_GRACE_S) if interval else OWNERLESS_GRACE_S


def has_owner(t: FrozenTrial) -> bool:
    owner = t.user_attrs.get(OWNER)
    return isinstance(owner, dict) and isinstance(owner.get("pid"), int)


def is_stale(t: FrozenTrial, interval: Optional[float], now: Optional[float] = None) -> bool:
    """Whether the RUNNING trial ``t``'s process is gone (see the module docstring)."""
    now = time.time() if now is None else now
    if not has_owner(t):
        started = t.datetime_start.timestamp() if t.datetime_start else None
        return started is not None and now - started > ownerless_grace(interval)
    owner = t.user_attrs[OWNER]
    if owner.get("host") == socket.gethostname():
        return not alive(owner["pid"], owner.get("pid_start"))
    beat = owner.get("beat")
    return interval is not None and isinstance(beat, (int, float)) and now - beat > STALE_HEARTBEATS * interval


class Heartbeat:
    """Rewrites a running trial's owner record every ``interval`` seconds, in a thread.

    ``first``: writes to the trial that only its records and later trials read
    (its overrides, its model size, its constraint), made by the thread as the job
    starts instead of before it: each storage write is milliseconds (an fsync on
    SQLite) on the sweep's critical path between two trials. They are done when
    the block ends (before the trial is told); a storage error in them is raised
    there, as it would have been before the launch.
    """

    FIRST_WAIT_S = 300  # beyond any storage's own lock or connection timeout

    def __init__(self, storage: Any, trial_id: int, interval: Optional[float],
                 first: Sequence[Callable[[], Any]] = ()):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.first = list(first)
        self.stop = threading.Event()
        self.written = threading.Event()
        self.error: Optional[BaseException] = None
        self.thread: Optional[threading.Thread] = None

    def __enter__(self) -> "Heartbeat":
        if self.interval or self.first:
            self.thread = threading.Thread(target=self._run, daemon=True, name="sweeps-heartbeat")
            self.thread.start()
        else:
            self.written.set()
        return self

    def _write_first(self) -> None:
        try:
            for write in self.first:
                write()
        except BaseException as e:  # noqa: BLE001 - raised in the sweep's thread at __exit__
            self.error = e
        finally:
            self.written.set()

    def _run(self) -> None:
        self._write_first()
        if not self.interval:
            return
        while not self.stop.wait(self.interval):
            try:
                self.storage.set_trial_user_attr(self.trial_id, OWNER, this_process())
            except Exception:  # finished meanwhile, or the database is busy: try next time
                pass

    def __exit__(self, *exc: Any) -> None:
        self.written.wait(self.FIRST_WAIT_S)
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=5)
        if self.error is not None and exc[0] is None:
            raise self.error
