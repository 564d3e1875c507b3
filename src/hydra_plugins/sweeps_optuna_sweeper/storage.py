"""Open an Optuna storage from a URL string, the same way in the sweeper and in its jobs.

* ``sqlite:///path.db``: RDBStorage with a 60 s lock timeout, so concurrent
  worker processes wait for each other instead of failing with "database is locked";
* any other SQLAlchemy URL (``postgresql://...``, ``mysql://...``): RDBStorage;
* ``journal:///abs/path/file.log``: JournalStorage on a JournalFileBackend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

JOURNAL_PREFIX = "journal://"
SQLITE_TIMEOUT_S = 60


def default_storage_url(root: str | Path) -> str:
    db = Path(root).resolve() / "multirun" / "optuna.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def open_storage(url: Any) -> Any:
    import optuna

    if url is None or not isinstance(url, str):
        return url  # in-memory (None) or an already built storage object
    if url.startswith(JOURNAL_PREFIX):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = url[len(JOURNAL_PREFIX):]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(path))
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
