"""Open an Optuna storage from a URL string, the same way in the sweeper and in its jobs.

* ``sqlite:///path.db``: RDBStorage with a 60 s lock timeout, so concurrent
  worker processes wait for each other instead of failing with "database is locked";
* any other SQLAlchemy URL (``postgresql://...``, ``mysql://...``): RDBStorage;
* ``journal:///abs/path/file.log``: JournalStorage on a JournalFileBackend.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

JOURNAL_PREFIX = "journal://"
SQLITE_TIMEOUT_S = 60
# Where a database URL with a password lives, so that it is never written into a
# committed config, a job's overrides, or anything logged: the sweeper reads its
# default storage from it, and hands it to the trial jobs through it.
STORAGE_ENV = "SWEEPS_OPTUNA_STORAGE"
REDACTED = "***"

# Hydra escapes the colons of an override's value (``http\://user\:password@host``): allow a backslash.
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*\\?://[^:/?#@\s'\"\\]*)(?P<colon>\\?:)"
                           r"(?P<secret>[^@/\s'\"]+)@")
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&](?:password|passwd|pwd)=)(?P<secret>[^&\s'\"]+)", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with every password of a URL in it replaced by ``***``.

    ``postgresql://sweeps:s3cret@db:5432/optuna`` becomes
    ``postgresql://sweeps:***@db:5432/optuna``; ``?password=...`` is masked too.
    """
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{m['colon']}{REDACTED}@", text)
    return _QUERY_PASSWORD.sub(lambda m: f"{m['head']}{REDACTED}", text)


def has_secret(text: str) -> bool:
    return redact(text) != text


def redact_logs() -> None:
    """Mask passwords in every line this process logs from now on.

    Hydra's launcher lists each job's overrides, where a user may have written
    ``tracking.uri=http://alice:<password>@host`` or a storage URL. Hydra sets up
    new log handlers for every launch and job, so a filter on handlers would not
    last: the record factory masks the message as each record is made.
    """
    make = logging.getLogRecordFactory()
    if getattr(make, "redacts", False):
        return

    def redacting(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        message = record.getMessage()
        if has_secret(message):
            record.msg, record.args = redact(message), ()
        return record

    redacting.redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacting)


@contextmanager
def sqlite_schema_lock(db_path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock beside a SQLite file while its schema is created.

    Optuna and MLflow both create their tables (alembic migrations) on first
    use; sweep processes starting together would race on that and fail with
    "UNIQUE constraint failed: alembic_version".
    """
    lock = Path(db_path).with_suffix(".init.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL; None for another scheme or an in-memory database.

    ``sqlite:///rel.db`` is relative, ``sqlite:////abs.db`` absolute: the path is what follows
    the third slash, as SQLAlchemy reads it.
    """
    if not url.startswith("sqlite:"):
        return None
    path = url.split("///", 1)[1] if "///" in url else ""
    return Path(path) if path and path != ":memory:" else None


def default_storage_url(root: str | Path) -> str:
    """The study database when ``hydra.sweeper.storage`` is null: ``<root>/multirun/optuna.db``
    (only named here; :func:`open_storage` creates it)."""
    return f"sqlite:///{Path(root).resolve() / 'multirun' / 'optuna.db'}"


def open_storage(url: Any) -> Any:
    import optuna

    if url is None or not isinstance(url, str):
        return url  # in-memory (None) or an already built storage object
    if url.startswith(JOURNAL_PREFIX):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = url[len(JOURNAL_PREFIX):]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(path))
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
        if path is None:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        with sqlite_schema_lock(path):
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    return _rdb_storage_created_once(url)


# url -> (pid, storage) of the study a sweep process has open, for its in-process jobs.
_SHARED: dict[str, tuple[int, Any]] = {}


def share(url: str, storage: Any) -> None:
    """Offer the storage of this process's sweep to the jobs it runs in process.

    A job finds its trial through the storage URL it is handed; opening that URL
    afresh costs an engine, a schema check and its own cache for every trial
    (tens of milliseconds on SQLite). A sweep registers the storage it opened
    once the study is open, so each sweep replaces the last one's.
    """
    _SHARED[url] = (os.getpid(), storage)


def open_shared(url: Any) -> Any:
    """The sweep's own storage for ``url`` when this process opened it, else a fresh one
    (a job in another process, or a forked one, whose inherited connections are not its own)."""
    return _SHARED[url][1] if shared_here(url) else open_storage(url)


def shared_here(url: Any) -> bool:
    """Whether this process is the sweep's that opened ``url``: a job running in it is in-process."""
    entry = _SHARED.get(url) if isinstance(url, str) else None
    return entry is not None and entry[0] == os.getpid()


def _rdb_storage_created_once(url: str, attempts: int = 5) -> Any:
    """RDBStorage on a database server, tolerating another process creating its schema.

    Sweep processes on several hosts that start together on an empty database
    all run Optuna's CREATE TABLE statements; all but one fail on a duplicate
    table or type (PostgreSQL: UniqueViolation on pg_type). By then the schema
    exists, so opening it again succeeds. A file lock cannot span hosts.
    """
    import optuna
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url)
        except (IntegrityError, ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


def storage_errors() -> tuple[type[BaseException], ...]:
    """What a storage raises when it cannot be written: Optuna's own error, SQLAlchemy's for an
    RDB (a full disk, a lost server), the OS's for a journal file."""
    import optuna

    found: list[type[BaseException]] = [optuna.exceptions.StorageInternalError, OSError]
    try:
        from sqlalchemy.exc import OperationalError

        found.append(OperationalError)
    except ImportError:
        pass
    return tuple(found)


@contextmanager
def params_in_one_write(storage: Any) -> Iterator[None]:
    """A trial's parameters, set in this thread inside the block, written in one transaction at its end.

    Optuna commits each parameter on its own, and on SQLite each commit is an
    fsync (milliseconds) on the path between two trials: eleven for ``joint``'s
    space. An RDB storage gets them in one commit, with Optuna's own
    per-parameter checks; any other storage (journal, in memory) is left to
    Optuna as it is. A block that raises writes none of them (the caller fails
    its trial). Either way every parameter is durable before the trial launches.
    """
    import optuna

    backend = getattr(storage, "_backend", storage)
    try:
        from optuna.storages._rdb.storage import _create_scoped_session
    except ImportError:  # pragma: no cover - a future Optuna without it: a commit per parameter, as it does
        _create_scoped_session = None
    if (_create_scoped_session is None or not isinstance(backend, optuna.storages.RDBStorage)
            or not hasattr(backend, "_set_trial_param") or not hasattr(backend, "_set_trial_param_without_commit")
            or "_set_trial_param" in vars(backend)):  # the last: a block inside another's
        yield
        return
    here, pending, direct = threading.get_ident(), [], backend._set_trial_param

    def buffered(*args: Any) -> None:
        if threading.get_ident() == here:
            pending.append(args)
        else:  # another thread's trial (none today): written at once, as Optuna would
            direct(*args)

    backend._set_trial_param = buffered
    try:
        yield
    finally:
        del backend._set_trial_param
    if pending:
        with _create_scoped_session(backend.scoped_session, True) as session:
            for args in pending:
                backend._set_trial_param_without_commit(session, *args)
