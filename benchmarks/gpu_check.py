"""Everything the README's "Speed" section leaves unmeasured, in one command on a GPU.

Operator's manual
=================

A GPU machine is lent to some tasks by chance, for about 15 minutes of device
time in all (its start, idle time and give-back included), so this is one
prepared command, not exploration. It runs each step below as its own
subprocess with its own time limit, under one deadline (``--budget-s``, 480 s
on CUDA), records a failing or timed-out step and goes on, and rewrites
``summary.json`` and ``summary.md`` in ``--out`` after every step (the step in
progress is marked ``running``), so a run cut off still returns what it
measured.

1. Here, on a machine with PyPI, fill ``.whl/`` (git-ignored) once::

       python benchmarks/gpu_check.py --fetch-wheels .whl

   which runs, for every distribution in ``WHEELS`` below at the version
   installed in this venv (unpinned if none)::

       python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
           --implementation cp --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 \\
           --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \\
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl NAME==VERSION

   and ``python -m pip wheel --no-deps --no-binary=:all: -w .whl
   antlr4-python3-runtime==4.9.3`` (omegaconf's parser runtime is an sdist
   only). 35 wheels, about 20 MiB; the tree is about 0.5 MiB, well inside
   the 64 MiB that one device call may carry. The device machine (Python 3.12,
   torch 2.11, torchvision 0.26, pytest, numpy, scikit-learn, matplotlib,
   PyYAML, tqdm, requests, protobuf, ...) has no registry; ``WHEELS`` is what
   it lacks.

2. On the device, one call of the device tool's ``run``::

       command:   python3 benchmarks/gpu_check.py --out $OUT/gpu --wheels .whl
       carry:     [".whl"]
       timeout_s: 570

   (the script's own deadline is 480 s, which leaves a minute for the start of
   the interpreter and the transfers, and a killed run still returns
   ``$OUT/gpu``). Then ``give_back`` at once.

3. What comes back, in ``$OUT/gpu``: ``summary.json`` (everything, machine-
   readable), ``summary.md`` (the same for a person, and for the README),
   ``log.txt`` (every step's full output) and ``junit.xml`` (the GPU tests).

Steps, in order, with their limits on CUDA (the deadline caps each one; a
step that finds under 15 s left is skipped as "out of time"):

============  =====  ==========================================================
step          limit  what it does
============  =====  ==========================================================
wheels          90 s ``pip install --no-index --no-deps --target <tmp>`` of
                     ``--wheels``/*.whl, only if hydra, omegaconf, optuna or
                     mlflow is not importable; the target goes first on every
                     later step's PYTHONPATH (with ``src/``: the repo is not
                     installed there)
env             60 s torch/CUDA/cuDNN/Python versions, device name, memory,
                     SM count, ``nvidia-smi``, which packages import (and why
                     not), and the device's dense bf16 peak from the table
                     ``PEAK_TFLOPS`` in benchmarks/throughput.py
matmul          60 s an 8192^3 bf16 matrix product: the achievable TFLOP/s,
                     next to the datasheet peak (torch alone)
throughput     210 s ``benchmarks/throughput.py --device cuda --batch-sizes
                     128 512 --trials 5``: ours vs the seed-style reference
                     (images/s, s per 50k epoch, peak GiB, TFLOP/s, MFU) and
                     the in-process 5-trial mini sweep's time between trials
sweep          150 s a real 5-trial ``python -m sweeps.train --multirun`` with
                     ``hydra/sweeper=sweeps_optuna`` (n_jobs 1: trials in one
                     process) on the GPU: time from one trial's end to the
                     next one's first epoch, read from its log's timestamps
pytest         240 s ``pytest -m gpu`` on every test file that has a
                     ``pytest.mark.gpu`` test, with each test's outcome
fused          150 s the fused-replicates benchmark, K = 1 2 4 8, when it
                     exists (``benchmarks/fused.py``, or a ``--fused`` option
                     of throughput.py); "not available" otherwise
compile        210 s throughput.py ``--compile --pipelines ours`` (what
                     ``trainer.compile=true`` does), compared with the
                     reference measured by the throughput step
============  =====  ==========================================================

What each figure is held against (the README's targets): ours >= 10x the
seed-style reference at batch 128 and at batch 512; MFU >= 30% at batch 512
(against the datasheet's dense bf16 peak: 989 TFLOP/s on an H100 SXM or H200);
< 1 s between trials (the largest gap after the first trial, both in the
benchmark's in-process mini sweep and in the real sweep); fused K=8 >= 3x the
throughput of 8 sequential trainings. ``summary.md`` has one row per target:
met, not met, or not measured (and why).

What needs what: ``env`` and ``matmul`` need torch alone; ``throughput``,
``compile`` and ``fused`` also hydra-core, omegaconf and
antlr4-python3-runtime (about 0.4 MiB of wheels: never drop them); ``sweep``
also optuna, SQLAlchemy, alembic, Mako and colorlog, and runs with
``tracking.enabled=false`` (said in the summary) when mlflow's sqlite store
does not import (mlflow-skinny needs the rest of ``WHEELS``, cryptography
included; the full ``mlflow`` wheel, 12 MiB of UI, is not needed);
``pytest`` needs all of them (tests/test_faults.py imports mlflow: without it
that file is a collection error and the other GPU tests still run).

The fused benchmark is ``benchmarks/throughput.py --device DEV --fused
--replicates 1 2 4 8 --trials 0``: for each K a ``fused K=.. mode=..
images_per_s=.. peak_mem_gib=..`` line per mode (fused, sequential,
concurrent) and ``fused_ratio K=.. vs_sequential=.. vs_concurrent=..``
(``benchmarks/fused.py``, if one is added, takes precedence with one ``fused
k=K images_per_s=X sequential_images_per_s=Y speedup=S`` line per K).

Before spending a device on it: ``python benchmarks/gpu_check.py --device cpu
--quick --out /tmp/gpu_check`` runs the same steps tiny on the CPU (a tiny
model, batch sizes 8 and 16, a 3-trial real sweep, Dynamo's eager backend for
the compile step); tests/test_gpu_check.py runs it. Its figures are smoke-test
values, not measurements.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpu_probes import PROBES, print_probe  # the script's siblings: its own directory is on sys.path
from gpu_steps import SRC, STEPS
from gpu_summary import TARGETS_NOTE, markdown, write_summary

MIN_STEP_S = 15  # a step with less time than this left is skipped

# What the device machine lacks (its image has torch, torchvision, pytest, numpy, scikit-learn,
# matplotlib, PyYAML, tqdm, requests, protobuf, click, anyio, h11, packaging, zipp, ...).
# hydra-core, omegaconf, antlr4: composing the config (every step but env and matmul);
# optuna + SQLAlchemy, alembic, Mako, colorlog: the sweeper; the rest: mlflow-skinny (tracking to
# sqlite, no UI) and its dependencies. typing-extensions: pydantic needs a recent one.
WHEELS = [
    "hydra-core", "omegaconf", "antlr4-python3-runtime",
    "optuna", "sqlalchemy", "alembic", "mako", "colorlog",
    "mlflow-skinny", "cachetools", "databricks-sdk", "google-auth", "pyasn1", "pyasn1-modules",
    "fastapi", "starlette", "uvicorn", "gitpython", "gitdb", "smmap", "importlib-metadata",
    "opentelemetry-api", "opentelemetry-sdk", "opentelemetry-proto", "opentelemetry-semantic-conventions",
    "pydantic", "pydantic-core", "annotated-types", "typing-inspection", "python-dotenv", "sqlparse",
    "cryptography", "cffi", "pycparser",  # the sqlite store's model registry imports cryptography.fernet
    "typing-extensions",
]
SDIST_ONLY = {"antlr4-python3-runtime": "4.9.3"}  # built into a wheel here (pure Python)


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class Check:
    """One run of the steps under one deadline: each step's command in its own subprocess (killed, with
    its process group, at the step's limit), its output into log.txt, and the summary rewritten after
    every step, so that a run cut off anywhere still says what it measured.

    The steps (gpu_steps.py) read and set its state: ``device``, ``quick``, ``out``, ``work``,
    ``machine``, ``steps`` (each step's record), ``modules`` (which modules import; None: probe again)
    and ``site`` (the wheels' target, first on every later step's PYTHONPATH)."""

    def __init__(self, args):
        self.args = args
        self.device = args.device
        self.quick = args.quick
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.log = self.out / "log.txt"
        self.log.write_text("")
        self.started = time.time()
        self.deadline = self.started + args.budget_s
        self.site: Path | None = None
        self.last_limit = 0.0
        self.modules: dict | None = None
        self.machine: dict = {"device_requested": self.device, "device_name": None}
        self.steps: dict[str, dict] = {}
        self.summary = {"tool": "benchmarks/gpu_check.py", "argv": sys.argv[1:], "quick": self.quick,
                        "started": now_iso(), "finished": None, "elapsed_s": None, "budget_s": args.budget_s,
                        "machine": self.machine, "steps": self.steps, "targets": [], "not_measured": [],
                        "targets_note": TARGETS_NOTE}

    def env(self) -> dict:
        """Every step's environment: the wheels' target and src/ first (the repo is not installed there)."""
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "SWEEPS_OPTUNA_STORAGE")}
        paths = ([str(self.site)] if self.site else []) + [str(SRC)]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("MPLBACKEND", "Agg")
        return env

    def remaining(self) -> float:
        return self.deadline - time.time()

    def run(self, name: str, cmd: list[str], cwd: Path, limit: float) -> tuple[int | None, str, bool]:
        """Run one command into log.txt; returns (returncode or None on timeout, its output, timed_out)."""
        if name == self.args.inject_failure:
            cmd = [sys.executable, "-c", f"import sys; print('injected failure in step {name}'); sys.exit(3)"]
        limit = self.last_limit = max(1.0, min(limit, self.remaining()))  # the deadline holds, whatever ran before
        with open(self.log, "ab") as log:
            log.write(f"\n===== {name}: {shlex.join(cmd)}\n===== cwd {cwd}, limit {limit:.0f} s, "
                      f"{now_iso()}\n".encode())
            log.flush()
            offset = log.tell()
            proc = subprocess.Popen(cmd, cwd=cwd, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            timed_out = False
            try:
                rc = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                timed_out, rc = True, None
                for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                    try:
                        os.killpg(proc.pid, sig)  # the step's own process group (DataLoader workers too)
                    except ProcessLookupError:
                        break
                    try:
                        proc.wait(timeout=grace)
                        break
                    except subprocess.TimeoutExpired:
                        continue
        with open(self.log, "rb") as log:
            log.seek(offset)
            out = log.read().decode(errors="replace")
        return rc, out, timed_out

    def write(self):
        self.summary["elapsed_s"] = round(time.time() - self.started, 1)
        write_summary(self.out, self.summary)

    def step(self, name: str):
        """Run one step under its limit; a failure, a timeout or a crash of the step itself is recorded."""
        rec = {"status": "running", "started": now_iso(), "seconds": None, "reason": ""}
        self.steps[name] = rec
        t0 = time.time()
        spec = STEPS.get(name)
        if spec is None:
            rec.update(status="failed", reason=f"unknown step {name!r} (known: {', '.join(STEPS)})")
        elif self.remaining() < MIN_STEP_S:
            rec.update(status="skipped", reason=f"out of time (--budget-s {self.args.budget_s:.0f})")
        else:
            self.write()  # 'running' on disk: a run cut off here says where
            limit = min(spec.limit_cuda_s if self.device == "cuda" else spec.limit_cpu_s, self.remaining())
            try:
                spec.run(self, rec, limit)
            except Exception as e:  # noqa: BLE001 - a broken step is recorded, the rest go on
                rec.update(status="failed", reason=f"{type(e).__name__}: {e}")
        rec["seconds"] = round(time.time() - t0, 1)
        self.write()
        print(f"[gpu_check] {name}: {rec['status']} in {rec['seconds']} s" + (f" - {rec['reason']}" if rec["reason"] else ""),
              flush=True)

    def main(self, steps: list[str]) -> int:
        try:
            for name in steps:
                self.step(name)
            self.summary["finished"] = now_iso()
            self.write()
            print(markdown(self.summary), flush=True)  # also in the device tool's output tail
        finally:
            if not self.args.workdir:
                shutil.rmtree(self.work, ignore_errors=True)
            if self.site:
                shutil.rmtree(self.site, ignore_errors=True)
        return 0 if all(r["status"] in ("passed", "skipped", "not available") for r in self.steps.values()) else 1


# --------------------------------------------------------------------------- wheels (here, with PyPI)

def fetch_wheels(dest: Path, python_version: str) -> int:
    """Download WHEELS for the device's Python and platform into ``dest`` (step 1 of the manual), at the
    versions installed here, so that the device runs what this venv was tested with."""
    import importlib.metadata as md

    dest.mkdir(parents=True, exist_ok=True)
    plat = [a for tag in ("manylinux_2_34_x86_64", "manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
                          "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")
            for a in ("--platform", tag)]
    failed = []
    for dist in WHEELS:
        try:
            spec = f"{dist}=={SDIST_ONLY.get(dist) or md.version(dist)}"
        except md.PackageNotFoundError:
            spec = dist
        if dist in SDIST_ONLY:
            cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-binary=:all:", "-w", str(dest), spec]
        else:
            cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
                   python_version, "--implementation", "cp", *plat, "-d", str(dest), spec]
        print("+", shlex.join(cmd), flush=True)
        if subprocess.run(cmd).returncode != 0:
            failed.append(spec)
    wheels = sorted(dest.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels)
    for w in wheels:
        print(f"{w.stat().st_size:>10,}  {w.name}")
    print(f"{len(wheels)} wheels, {total / 2**20:.1f} MiB in {dest}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="See the module docstring for the manual.")
    p.add_argument("--out", help="directory for summary.json, summary.md, log.txt and junit.xml")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--quick", action="store_true", help="everything tiny (for --device cpu: the suite's smoke run)")
    p.add_argument("--wheels", default=".whl", help="directory of .whl files to install when packages are missing")
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, in order (default: {','.join(STEPS)})")
    p.add_argument("--budget-s", type=float, default=None, help="deadline for all steps (default: 480 CUDA, 420 CPU)")
    p.add_argument("--workdir", default=None, help="scratch directory (default: a new one under the temp dir)")
    p.add_argument("--fetch-wheels", metavar="DIR", help="download WHEELS into DIR (here, with PyPI) and exit")
    p.add_argument("--wheel-python", default="3.12", help="with --fetch-wheels: the device's Python version")
    p.add_argument("--probe", choices=PROBES, help=argparse.SUPPRESS)
    p.add_argument("--inject-failure", metavar="STEP", help=argparse.SUPPRESS)  # the tests: make STEP's command fail
    args = p.parse_args(argv)

    if args.probe:  # inside a step's subprocess (gpu_probes.py)
        return print_probe(args.probe, args.device, args.quick)
    if args.fetch_wheels:
        return fetch_wheels(Path(args.fetch_wheels), args.wheel_python)
    if not args.out:
        p.error("--out is required")
    if args.budget_s is None:
        args.budget_s = 480.0 if args.device == "cuda" else 420.0
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    return Check(args).main(steps)


if __name__ == "__main__":
    sys.exit(main())
