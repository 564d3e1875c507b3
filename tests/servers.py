"""Throwaway servers for the tests: PostgreSQL (initdb + pg_ctl) and `mlflow server`.

Each listens on a free loopback port, keeps its files in a temporary directory,
and is stopped (its whole process group) when the test is done.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"  # loopback only


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_healthy(base: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    """Wait until an MLflow server answers /health (or fail with its log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"mlflow server not healthy after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a server started with start_new_session=True: its whole process group."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


# --------------------------------------------------------------------------- PostgreSQL


def pg_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl: on PATH, or Debian's /usr/lib/postgresql/<v>/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(candidates[-1]).parent if candidates else None


class Postgres:
    """A PostgreSQL cluster of its own, password-authenticated over TCP on loopback.

    PostgreSQL refuses to run as root; as root (CI containers) its files belong
    to the ``postgres`` system user and its commands run as that user.
    """

    user = "sweeps"

    def __init__(self) -> None:
        bindir = pg_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL (initdb, pg_ctl) is not installed: apt-get install postgresql")
        self.bindir = bindir
        self.password = "pw-" + secrets.token_hex(8)
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="sweeps-pg-"))
        self.data = self.dir / "data"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            self.as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.dir, "postgres", "postgres")

    def _run(self, *args: str, **kw) -> subprocess.CompletedProcess:
        res = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=120, **kw)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res

    def start(self) -> Postgres:
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password + "\n")
        if self.as_user:
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}",
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")
        pwfile.unlink()
        opts = f"-c listen_addresses={HOST} -p {self.port} -k {self.dir} -c fsync=off -c max_connections=200"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "server.log"),
                  "-o", opts, "-w", "-t", "60", "start")
        return self

    def create_database(self, name: str) -> str:
        """A new database; returns its SQLAlchemy URL (password included)."""
        self._run(str(self.bindir / "createdb"), "-h", str(self.dir), "-p", str(self.port), "-U", self.user, name)
        return self.url(name)

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}:{self.password}@{HOST}:{self.port}/{database}"

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except Exception:  # noqa: BLE001 - already gone
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------- MLflow server


class MlflowServer:
    """`python -m sweeps.server` (what `make server` runs) on a free loopback port."""

    def __init__(self, backend_uri: str, artifacts: Path, cwd: Path) -> None:
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        self.log = cwd / "mlflow-server.log"
        env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": backend_uri}
        env.pop("MLFLOW_TRACKING_URI", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sweeps.server", "--host", HOST, "--port", str(self.port),
             "--artifacts", str(artifacts), "--workers", "2"],
            cwd=cwd, env=env, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)

    def start(self) -> MlflowServer:
        try:
            wait_healthy(self.base, self.proc, self.log)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop_group(self.proc)
