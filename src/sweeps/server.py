"""``python -m sweeps.server`` (``make server``): an MLflow tracking server for a lab.

Runs ``mlflow server`` with its backend store from ``MLFLOW_BACKEND_STORE_URI``
(e.g. ``postgresql://mlflow:<password>@db-host:5432/mlflow``; the variable MLflow
itself reads, so the password is never on a command line that ``ps`` shows),
artifacts proxied by the server into ``--artifacts`` (clients on other nodes
need no shared file system), and one line to paste into the sweep:
``tracking.uri=http://<host>:<port>``.

What it adds to a bare ``mlflow server``: the database is checked first, so a
wrong URL, a server that is down or a missing driver is one clear paragraph
(with the password masked), not a stack trace from a worker process.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from sweeps_optuna.storage import redact, sqlite_path
from sweeps.cli import fail
from sweeps.tracking import local_store_uri

BACKEND_ENV = "MLFLOW_BACKEND_STORE_URI"


def _check_database(url: str) -> None:
    db = sqlite_path(url)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        return
    import sqlalchemy

    try:
        args = {"connect_timeout": 5} if url.startswith("postgresql") else {}
        engine = sqlalchemy.create_engine(url, connect_args=args)
        with engine.connect():
            pass
        engine.dispose()
    except ModuleNotFoundError as e:
        fail(f"the database driver for {redact(url)} is not installed ({e}). Install the cluster extras "
                "(pip install -e '.[cluster]', which brings psycopg for postgresql://).")
    except Exception as e:  # noqa: BLE001 - any failure to connect is the user's to fix
        first = redact(str(e).strip().splitlines()[0]) if str(e).strip() else type(e).__name__
        fail(f"the MLflow backend store {BACKEND_ENV}={redact(url)} cannot be reached ({first}). Check the host, "
                "port, database name, user and password, and that the database server is up; create the database "
                "first (createdb mlflow).")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m sweeps.server", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default 127.0.0.1; 0.0.0.0 for the whole lab network)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--artifacts", default="mlruns/server-artifacts",
                   help="where the server keeps artifacts (a path, or s3://..., gs://...)")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)

    url = os.environ.get(BACKEND_ENV) or local_store_uri("mlruns")
    _check_database(url)
    artifacts = args.artifacts
    if "://" not in artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        artifacts = Path(artifacts).resolve().as_uri()
    shown = socket.gethostname() if args.host == "0.0.0.0" else args.host
    print(f"MLflow tracking server: backend {redact(url)}, artifacts {artifacts}\n"
          f"Sweeps log to it with: tracking.uri=http://{shown}:{args.port} "
          f"(or export MLFLOW_TRACKING_URI=http://{shown}:{args.port})", flush=True)
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", args.host, "--port", str(args.port),
           "--workers", str(args.workers), "--serve-artifacts", "--artifacts-destination", artifacts]
    os.execve(sys.executable, cmd, {**os.environ, BACKEND_ENV: url})


if __name__ == "__main__":
    main()
