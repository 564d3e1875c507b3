"""``n_jobs`` worker processes on one study, each taking its next trial as soon as it is free.

The stock plugin launches trials in batches of ``n_jobs`` and waits for the
slowest of each batch. Here the sweep process starts ``n_jobs - 1`` copies of
its own command line (``sys.orig_argv`` with ``hydra.sweeper.n_jobs=1``, the
same ``hydra.sweep.dir`` and ``SWEEPS_OPTUNA_WORKER=<k>``), and every process
runs the same ask -> launch -> tell loop on the shared study, so there is no
barrier. On a multi-GPU host each worker gets one GPU (round robin).

Re-running the command line runs the task again only when the command is the
task's own script, module or console script. A sweep driven from elsewhere
(Hydra's test utilities, pytest, a notebook, a script that calls Hydra's API
with a task of another module) runs its trials one after another in its own
process instead: no worker would run the same task.
"""

from __future__ import annotations

import inspect
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, List, Optional

log = logging.getLogger(__name__)

WORKER_ENV = "SWEEPS_OPTUNA_WORKER"
STOP_WAIT_S = 120


def worker_index() -> int:
    """0 in the sweep process, k in its k-th worker."""
    return int(os.environ.get(WORKER_ENV, "0") or 0)


def quote(value: str) -> str:
    """A value as one quoted Hydra override argument."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _source_of(obj: Any) -> Optional[str]:
    target = obj if inspect.isfunction(obj) or inspect.ismethod(obj) else type(obj)
    try:
        path = inspect.getsourcefile(inspect.unwrap(target))
    except TypeError:
        return None
    return os.path.realpath(path) if path else None


def command_runs(task_function: Any) -> bool:
    """Whether this process's command line, run again, runs ``task_function``: its file is the
    ``__main__`` script (``python app.py``, ``python -m pkg.app``), or ``__main__`` is a console
    script that imports a function of the task's module (``sweeps-train``)."""
    main = sys.modules.get("__main__")
    main_file = getattr(main, "__file__", None)
    task_file = _source_of(task_function)
    if not main_file or not task_file:
        return False
    if os.path.realpath(main_file) == task_file:
        return True
    module = getattr(inspect.unwrap(task_function), "__module__", None)
    return module not in (None, "__main__") and any(
        inspect.isfunction(v) and v.__module__ == module for v in vars(main).values())


def _gpu_count() -> int:
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return 0  # the user chose the devices: leave them
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch, no GPU
        return 0


def spawn(n_jobs: int, sweep_dir: str, cwd: str) -> List[subprocess.Popen]:
    """Start workers 1..n_jobs-1; their output goes to ``<sweep dir>/workers/worker-<k>.log``."""
    argv = list(getattr(sys, "orig_argv", [sys.executable] + sys.argv))
    cmd = [sys.executable] + argv[1:] + [f"hydra.sweep.dir={quote(os.path.abspath(sweep_dir))}",
                                         "hydra.sweeper.n_jobs=1"]
    n_gpus = _gpu_count()
    logs = Path(sweep_dir) / "workers"
    logs.mkdir(parents=True, exist_ok=True)
    workers = []
    for k in range(1, n_jobs):
        env = dict(os.environ, **{WORKER_ENV: str(k)})
        if n_gpus > 1:
            env["CUDA_VISIBLE_DEVICES"] = str(k % n_gpus)
        with open(logs / f"worker-{k}.log", "ab") as out:
            workers.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd))
    if n_gpus > 1:
        os.environ["CUDA_VISIBLE_DEVICES"] = "0"
    log.info(f"started {n_jobs - 1} worker process(es); logs in {logs}")
    return workers


def stop(workers: List[subprocess.Popen], sig: int) -> None:
    """Pass a signal on, and wait for each worker to mark its own trial before it exits."""
    for p in workers:
        if p.poll() is None:
            p.send_signal(sig)
    for p in workers:
        try:
            p.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait(workers: List[subprocess.Popen]) -> List[int]:
    return [p.wait() for p in workers]
