"""MLflow bookkeeping for a run: store location, params, metrics, artifacts, status.

Every run ends in a terminal status (FINISHED, FAILED or KILLED) whatever
happens inside it, so the UI never shows a ghost RUNNING run. Nothing logged
carries a password: params, tags, reasons and text artifacts go through
``redact`` (a tracking server is often readable by a whole lab).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from sweeps_optuna import contract as c
from sweeps_optuna.storage import has_secret, redact, sqlite_path, sqlite_schema_lock
from sweeps.config import NOT_EXPERIMENT, flatten, is_experiment_key
from sweeps.errors import ConfigError

log = logging.getLogger("sweeps.tracking")

# MLflow stores run names in a VARCHAR(250): a database server (PostgreSQL)
# refuses a longer one, where SQLite would have kept it.
MAX_RUN_NAME = 250
PARAMS_PER_BATCH = 100  # MLflow's limit for one log_batch call


def named(run_name: str, tags: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(a run name MLflow can store, tags that keep the full one when it was cut).

    The cut falls between overrides; the sweeper lists the searched ones first,
    so they stay in the name.
    """
    if len(run_name) <= MAX_RUN_NAME:
        return run_name, tags
    head = run_name[:MAX_RUN_NAME - 4]
    head = head[:head.rfind(",")] if "," in head else head
    return head + ",...", {**tags, c.TAG_OVERRIDES: run_name[:c.MAX_TAG]}


def tracking_uri(cfg: DictConfig) -> str:
    """``tracking.uri``, else MLFLOW_TRACKING_URI, else SQLite in <root>/mlruns."""
    if cfg.tracking.get("uri"):
        return str(cfg.tracking.uri)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    mlruns = Path(cfg.paths.mlruns).resolve()
    mlruns.mkdir(parents=True, exist_ok=True)
    return local_store_uri(mlruns)


def local_store_uri(mlruns: str | Path) -> str:
    """The project's own MLflow store: SQLite in ``mlruns/``, by absolute path (Hydra moves the cwd)."""
    return f"sqlite:///{Path(mlruns).resolve() / 'mlflow.db'}"


UI_PORT = 5000  # `make ui`'s default


# The UI's saved views: an experiment tag holding a view (filter, sort, columns) that a link
# opens by its key (MLflow 3's "shared view", viewStateShareKey=<key>).
VIEW_TAG_PREFIX = "mlflow.sharedViewState."


def save_sweep_view(mlflow: Any, experiment_id: str, parent_run_id: str, name: str, objective: str,
                    maximize: bool, columns: list[str]) -> str:
    """Save one sweep's view in its experiment: its runs, best first, with ``columns`` (MLflow
    column keys: metrics.`x`, params.`y`, tags.`z`) shown; its key (the parent run's id)."""
    import json

    state = {"searchFilter": f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
             "orderByKey": f"metrics.`{objective}`", "orderByAsc": not maximize, "selectedColumns": columns}
    now = int(time.time() * 1000)
    mlflow.set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + parent_run_id, json.dumps(
        {"name": f"sweep {name}"[:100], "createdAt": now, "updatedAt": now, "state": json.dumps(state)}))
    return parent_run_id


def ui_link(cfg: DictConfig, experiment_id: str, view_key: str) -> str:
    """A link to a saved view in the MLflow UI's classic (model training) mode. On an http(s)
    tracking server, that server (without credentials); on the project's SQLite store, `make
    ui`'s address."""
    from urllib.parse import urlsplit

    uri = tracking_uri(cfg)
    if uri.startswith(("http://", "https://")):
        parts = urlsplit(uri)
        base = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "") + parts.path.rstrip("/")
    else:
        base = f"http://127.0.0.1:{UI_PORT}"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={view_key}"


def artifact_location(cfg: DictConfig, experiment: str) -> str | None:
    """Artifacts beside the default SQLite store; a server keeps its own."""
    if not tracking_uri(cfg).startswith("sqlite:///") or cfg.tracking.get("uri"):
        return None
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment)
    return (Path(cfg.paths.mlruns).resolve() / "artifacts" / safe).as_uri()


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not after MLflow's minutes of retries, when a server is down.

    Credentials in the URL (``http://user:password@host:port``, which MLflow's
    HTTP client sends as basic auth) are sent the same way here, and never shown.
    """
    if not uri.startswith(("http://", "https://")):
        return
    import base64
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    request = urllib.request.Request(urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", "")))
    if parts.username:
        token = base64.b64encode(f"{parts.username}:{parts.password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        urllib.request.urlopen(request, timeout=timeout).close()
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise ConfigError(
            f"the MLflow tracking server tracking.uri={redact(uri)} cannot be reached "
            f"({redact(str(getattr(e, 'reason', e)))}). Start it (e.g. `mlflow server --host 127.0.0.1 --port 5000`), "
            "fix tracking.uri or MLFLOW_TRACKING_URI, or leave tracking.uri=null for the local store in mlruns/ "
            "(tracking.enabled=false records nothing)."
        ) from None


_READY: set[str] = set()


def client(cfg: DictConfig):
    """A client on the run's store; the first use per process checks that a server is up and
    creates a SQLite store's schema under a file lock, so that sweep processes starting
    together do not race on MLflow's migrations."""
    import mlflow

    uri = tracking_uri(cfg)
    if uri in _READY:
        mlflow.set_tracking_uri(uri)
        return mlflow.MlflowClient()
    check_reachable(uri)  # a server that is down: a ConfigError in seconds, not MLflow's minutes of retries
    if has_secret(uri):  # MLflow prints each run's URL to stdout, credentials and all
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    mlflow.set_tracking_uri(uri)
    db = sqlite_path(uri)
    if db is None:
        found = mlflow.MlflowClient()
    else:
        with sqlite_schema_lock(db):
            existed = db.is_file()
            if not existed:
                _from_template(db)
            try:
                found = mlflow.MlflowClient()
                found.search_experiments(max_results=1)
            except Exception as e:  # noqa: BLE001 - only an existing file can be unreadable
                if not existed:
                    raise
                raise ConfigError(_unreadable_store(db, e)) from None
    _READY.add(uri)
    return found


def _from_template(db: Path) -> None:
    """Start a new project's store as a copy of an empty one MLflow made once on this machine.

    MLflow builds a new SQLite store by running its whole migration history, several
    seconds on a small machine, and every new project (and every test's) pays it again;
    a copy of the result takes milliseconds. The template is made by MLflow itself, per
    MLflow version, in the user's cache; when it cannot be, MLflow builds the store as
    before. Its "Default" experiment gets this store's artifact root.
    """
    import shutil
    import sqlite3

    import mlflow

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sweeps"
    template = cache / f"mlflow-{mlflow.__version__}-empty.db"
    try:
        with sqlite_schema_lock(template):
            if not template.is_file():
                scratch = cache / f"{template.stem}.{os.getpid()}.db"
                scratch.unlink(missing_ok=True)
                with _quiet("mlflow.store.db.utils"), _quiet("alembic"):
                    mlflow.MlflowClient(tracking_uri=f"sqlite:///{scratch}").search_experiments(max_results=1)
                scratch.replace(template)
        tmp = db.with_suffix(".tmp")
        shutil.copyfile(template, tmp)
        with sqlite3.connect(tmp) as conn:
            conn.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                         ((db.parent / "artifacts" / "Default").as_uri(),))
        conn.close()
        try:
            os.link(tmp, db)  # never over a store that appeared meanwhile (another tool opened it): that one stays
        finally:
            tmp.unlink(missing_ok=True)
    except FileExistsError:
        pass
    except (OSError, sqlite3.Error) as e:  # a read-only home, a full cache: MLflow builds the store itself
        log.debug(f"no MLflow store template ({e}); MLflow creates {db}")


def _unreadable_store(db: Path, error: Exception) -> str:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (f"the MLflow store {db} cannot be read ({redact(first)}): it is not an MLflow SQLite database, or a "
            "damaged one. Nothing was run or recorded, and the file was left as it is. Restore it from a copy, or "
            "point paths.mlruns (or tracking.uri) to another store; to start afresh, move the file aside.")


def log_params(mlflow_client: Any, run_id: str, params: dict[str, Any]) -> None:
    """Params of a run that is not this process's active run, redacted, in batches."""
    from mlflow.entities import Param

    items = [Param(k, str(_param(v))[:6000]) for k, v in params.items()]
    for i in range(0, len(items), PARAMS_PER_BATCH):
        mlflow_client.log_batch(run_id, params=items[i:i + PARAMS_PER_BATCH])


# MLflow 3's UI opens an experiment without this tag in its GenAI mode (traces, no params or
# metrics in the runs table); "custom_model_development" is its classic ML view.
ML_EXPERIMENT = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(cfg: DictConfig, name: str | None = None) -> str:
    """Get or create the experiment (safe when several trials race to create it)."""
    from mlflow.exceptions import MlflowException

    name = name or str(cfg.tracking.experiment)
    store = client(cfg)
    found = store.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return store.create_experiment(name, artifact_location=artifact_location(cfg, name), tags=ML_EXPERIMENT)
    except MlflowException:
        found = store.get_experiment_by_name(name)  # another process created it first
        if found is None:
            raise
        return found.experiment_id


def config_params(cfg: DictConfig) -> dict[str, Any]:
    params = {}
    for key in cfg:
        if key in NOT_EXPERIMENT:
            continue
        for name, value in flatten(cfg[key], f"{key}."):
            params[name] = value
    return params


class RunRecorder:
    """One MLflow run around a training; a no-op when tracking is disabled.

    Everything goes through the client by run id, never through MLflow's active run:
    a replicate's run (``parent_run_id``, a child of its config's run) is one of several
    open at once in one process, and with ``background=True`` the run is opened in a
    thread once the training calls :meth:`release` after its first step: importing
    MLflow and opening the store are seconds of Python that hold the interpreter's lock,
    and would push that step back. ``on_open(recorder)`` runs once the run exists (in
    that thread); whatever needs the run releases the opening and waits for it, and an
    error of the opening is raised there, in the training's thread. The run's start
    time is the recorder's, not the opening's.
    """

    def __init__(self, cfg: DictConfig, run_name: str, tags: dict[str, str] | None = None,
                 resume_run_id: str | None = None, parent_run_id: str | None = None,
                 background: bool = False, on_open: Callable[[RunRecorder], None] | None = None):
        self.cfg, self.run_name, self.tags = cfg, run_name, dict(tags or {})
        self.enabled = bool(cfg.tracking.enabled)
        self.child = parent_run_id is not None
        self.parent_run_id = parent_run_id
        self.background, self.on_open = background, on_open
        # A resumed training (trainer.resume) reopens its KILLED run, so that
        # its history stays in one place.
        self._run_id: str | None = resume_run_id
        self._resume = resume_run_id is not None
        self._client = self._monitor = self._thread = self._error = None
        self._go = threading.Event()
        self._state_logged = False
        self._started_ms: int | None = None

    @property
    def run_id(self) -> str | None:
        self._wait()
        return self._run_id

    def __enter__(self) -> RunRecorder:
        if not self.enabled:
            if self.on_open is not None:
                self.on_open(self)
            return self
        self._started_ms = int(time.time() * 1000)
        if not self.background:
            self._open()
            return self
        check_reachable(tracking_uri(self.cfg))  # a server that is down: said now, not after an epoch
        self._thread = threading.Thread(target=self._open_in_thread, name="sweeps-mlflow-open", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        """Let a background opening begin (the training's first step is done)."""
        self._go.set()

    def _open_in_thread(self) -> None:
        self._go.wait()
        try:
            self._open()
        except BaseException as e:  # noqa: BLE001 - raised in the training's thread by _wait
            self._error = e

    def _wait(self) -> None:
        thread = self._thread
        self._go.set()
        if thread is not None and thread is not threading.current_thread():  # on_open runs in it
            while thread.is_alive():  # short joins: a Ctrl-C or SIGTERM meanwhile is raised between them, cleanly
                thread.join(0.05)
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _open(self) -> None:
        import mlflow

        exp = experiment_id(self.cfg)
        self._client = mlflow.MlflowClient()
        if self._resume:
            self._client.update_run(self._run_id, status="RUNNING")
            if c.TAG_REASON in self._client.get_run(self._run_id).data.tags:
                self._client.delete_tag(self._run_id, c.TAG_REASON)  # why it stopped last time: no longer true
            self._log_tags(self.tags)
        else:
            from mlflow.tracking.context import registry

            parent = self.parent_run_id or (self.cfg.trial.get("parent_run_id") if "trial" in self.cfg else None)
            name, tags = named(self.run_name, self.tags)
            if parent:
                tags = {**tags, "mlflow.parentRunId": parent}
            # the source, user and git tags MLflow's start_run adds
            run = self._client.create_run(exp, run_name=name, tags=registry.resolve_tags(_tags(tags)),
                                          start_time=self._started_ms)
            self._run_id = run.info.run_id
            log_params(self._client, self._run_id, config_params(self.cfg))
        if not self.child and self.cfg.tracking.get("system_metrics", False):
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(self._run_id, resume_logging=self._resume)
            self._monitor.start()
        if self.on_open is not None:
            self.on_open(self)

    def __exit__(self, exc_type, exc, tb) -> bool:
        if not self.enabled:
            return False
        try:
            self._wait()
        except BaseException as e:  # noqa: BLE001 - the run never opened: nothing to close
            if exc_type is None:
                raise
            log.warning(f"the MLflow run could not be opened ({type(e).__name__}: {redact(str(e))[:300]})")
            return False
        if self._client is None or self._run_id is None:
            return False
        if exc_type is None:
            if not self._state_logged:
                self._client.set_tag(self._run_id, c.TAG_STATE, self.tags.get(c.TAG_STATE, c.COMPLETE))
            self._end("FINISHED")
            return False
        state = state_of(exc)
        # Best effort: when the store fails too (its disk is full), the run's own error is what matters
        # (MLflow's store would log its traceback), and the next sweep of the study closes what is left open.
        with _quiet("mlflow.store.db.utils"):
            try:
                self._log_tags({c.TAG_STATE: state, c.TAG_REASON: redact(reason_of(exc))[:c.MAX_TAG]})
                if state == c.FAIL:
                    self._client.log_text(self._run_id, redact("".join(traceback.format_exception(exc_type, exc, tb))),
                                          "traceback.txt")
            except Exception as e:  # noqa: BLE001
                log.warning(f"could not record why MLflow run {self._run_id} ended ({type(e).__name__})")
            try:
                self._end(c.STATUS_OF_STATE[state])
            except Exception as e:  # noqa: BLE001
                log.warning(f"could not close MLflow run {self._run_id} ({type(e).__name__})")
        return False

    def _end(self, status: str) -> None:
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None
        self._client.set_terminated(self._run_id, status)

    def _log_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        if tags:
            self._client.log_batch(self._run_id, tags=[RunTag(k, v) for k, v in _tags(tags).items()])

    def log_params(self, params: dict[str, Any]) -> None:
        if self.enabled:
            log_params(self._client, self.run_id, params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, tags: dict[str, Any] | None = None) -> None:
        """One write (a commit on SQLite, each an fsync) for the metrics and ``tags`` together."""
        if self.enabled:
            from mlflow.entities import Metric, RunTag

            run_id, now = self.run_id, int(time.time() * 1000)
            self._client.log_batch(run_id, metrics=[Metric(k, float(v), now, step or 0) for k, v in metrics.items()],
                                   tags=[RunTag(k, v) for k, v in _tags(tags or {}).items()])
            self._note_state(tags)

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.enabled and tags:
            self._wait()
            self._log_tags(tags)
            self._note_state(tags)

    def _note_state(self, tags: dict[str, Any] | None) -> None:
        if tags and c.TAG_STATE in tags:  # a clean end need not write it again
            self._state_logged = True

    def log_artifacts(self, path: Path, artifact_path: str | None = None) -> None:
        if self.enabled and path.exists():
            run_id = self.run_id
            with without_secrets(path) as clean:
                if clean.is_dir():
                    self._client.log_artifacts(run_id, str(clean), artifact_path)
                else:
                    self._client.log_artifact(run_id, str(clean), artifact_path)


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def state_of(exc: BaseException) -> str:
    """The trial state of a run that ended with ``exc`` (Ctrl-C, SIGTERM: INTERRUPTED)."""
    import optuna

    if isinstance(exc, optuna.TrialPruned):
        return c.PRUNED
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):  # contract.Interrupted is a KeyboardInterrupt
        return c.INTERRUPTED_STATE
    return c.FAIL


def reason_of(exc: BaseException) -> str:
    """A user error's own sentence; anything else with its class name in front."""
    import optuna

    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, (c.UserError, optuna.TrialPruned)) else f"{type(exc).__name__}: {text}"


def _param(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    return value if isinstance(value, (int, float, bool)) or value is None else redact(str(value))


def _tags(tags: dict[str, Any]) -> dict[str, str]:
    return {k: redact(str(v)) for k, v in tags.items()}


# Artifacts that are read as text (and so may quote a database URL).
_TEXT_SUFFIXES = {".yaml", ".yml", ".json", ".txt", ".log", ".md", ".csv", ".cfg", ".ini"}


@contextmanager
def without_secrets(path: Path) -> Iterator[Path]:
    """``path``, or a redacted copy of it when one of its text files holds a password.

    A job's ``.hydra/`` files repeat its command line, where a user may have
    typed ``hydra.sweeper.storage=postgresql://user:password@...``.
    """
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    dirty = [f for f in files if f.suffix in _TEXT_SUFFIXES and has_secret(f.read_text(errors="replace"))]
    if not dirty:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="sweeps-redacted-") as tmp:
        copy = Path(tmp) / path.name
        if path.is_dir():
            shutil.copytree(path, copy)
        for f in dirty:
            target = copy if path.is_file() else copy / f.relative_to(path)
            target.write_text(redact(f.read_text(errors="replace")))
        yield copy


def log_config_artifacts(recorder: RunRecorder, output_dir: Path) -> None:
    recorder.log_artifacts(output_dir / ".hydra", "hydra")


def overrides_run_name(overrides: list[str]) -> str:
    """A run name that says what the command line changed, e.g. optim=sgd,optim.lr=0.01."""
    shown = [o for o in overrides if is_experiment_key(o.split("=", 1)[0])]
    return ",".join(shown) or "defaults"

