"""gpu_check.py's steps: what each one runs, what it needs, and how its outcome and figures are recorded.

Each step is a function ``step_NAME(check, rec, limit)``: ``check`` is the runner (its ``run`` puts a
command in a subprocess under the step's limit and into log.txt), ``rec`` the step's record in the
summary, which the step fills in (status, reason, figures). A step whose modules do not import is
skipped with which and why, rather than failing on an ImportError half-way: what the device machine
lacks is known before its time is spent. ``STEPS`` at the end is the table of steps, their default
order and their limits.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, NamedTuple

from gpu_parsers import parse_fused, parse_junit, parse_sweep_log, parse_throughput
from gpu_probes import THROUGHPUT, peak_for, probe_json

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SRC = ROOT / "src"
SCRIPT = HERE / "gpu_check.py"  # the probes run as `gpu_check.py --probe NAME`
FUSED = HERE / "fused.py"

NEEDS = {
    "throughput": ["torch", "torchvision", "PIL", "hydra", "omegaconf", "yaml", "tqdm"],
    "compile": ["torch", "torchvision", "PIL", "hydra", "omegaconf", "yaml", "tqdm"],
    "fused": ["torch", "torchvision", "PIL", "hydra", "omegaconf", "yaml", "tqdm"],
    "sweep": ["torch", "torchvision", "hydra", "omegaconf", "optuna", "sqlalchemy", "alembic", "tqdm"],
    "pytest": ["torch", "pytest", "hydra", "omegaconf"],
}
# A model small enough for a CPU smoke run (tests/conftest.py's TINY model).
TINY_MODEL = ["model.channels=[8,16]", "model.blocks=[1,1]", "model.stem_channels=8", "model.pool=4", "model.head=[]"]


# --------------------------------------------------------------------------- shared by the steps

def python(*args) -> list[str]:
    return [sys.executable, *map(str, args)]


def module_status(check) -> dict:
    """Which modules import in a step's environment: probed once, and again after the wheels are installed."""
    if check.modules is None:
        _, out, _ = check.run("modules", python(SCRIPT, "--probe", "modules"), ROOT, 120)
        check.modules = probe_json(out) or {}
    return check.modules


def need(check, rec: dict, step: str) -> bool:
    """True when every module the step needs imports; otherwise the step is marked skipped, with why."""
    mods = module_status(check)
    missing = [m for m in NEEDS.get(step, []) if not mods.get(m, {}).get("ok")]
    if missing:
        errors = "; ".join(f"{m}: {mods.get(m, {}).get('error', 'not found')}" for m in missing)
        rec.update(status="skipped", reason=f"needs {', '.join(missing)} ({errors}); carry their wheels (--wheels)")
        return False
    return True


def record(check, rec: dict, cmd, rc, out: str, timed_out: bool):
    """A command's outcome into the step's record: passed on exit code 0, else failed (or timeout) and why."""
    rec["command"] = shlex.join(map(str, cmd))
    rec["returncode"] = rc
    rec["output_tail"] = out[-2500:]
    if timed_out:
        rec.update(status="timeout",
                   reason=f"killed after its limit of {check.last_limit:.0f} s (figures: what it printed)")
    elif rc == 0:
        rec["status"] = "passed"
    else:
        last = [ln for ln in out.strip().splitlines() if ln.strip()][-1:] or [""]
        rec.update(status="failed", reason=f"exit code {rc}: {last[0][:300]}")


def run_and_record(check, rec: dict, name: str, cmd: list[str], cwd: Path, limit: float):
    """Run the step's command and record its outcome; returns (returncode, output, timed_out)."""
    rc, out, timed_out = check.run(name, cmd, cwd, limit)
    record(check, rec, cmd, rc, out, timed_out)
    return rc, out, timed_out


def throughput_cmd(check, *extra) -> list[str]:
    """benchmarks/throughput.py at the sizes of this device (tiny on the CPU), with ``extra`` options."""
    if check.device == "cuda":
        sizing = ["--batch-sizes", "128", "512"]
        if check.quick:  # a shorter look at the same figures
            sizing += ["--steps", "10", "--warmup", "3", "--trial-steps", "5"]
            if "--data-batches" not in extra:
                sizing += ["--data-batches", "10"]
        over = []
    else:
        sizing = ["--batch-sizes", "8", "16", "--steps", "1", "--warmup", "0" if "--compile" not in extra else "1",
                  "--workers", "1", "--trial-steps", "1"]
        over = ["dataset.train_size=400", "dataset.test_size=50", *TINY_MODEL]
        if "--data-batches" not in extra:
            sizing += ["--data-batches", "2"]
    return python(THROUGHPUT, "--device", check.device, "--data-root", check.work / "data", *sizing, *extra,
                  *(["--override", *over] if over else []))


# --------------------------------------------------------------------------- the steps

def step_wheels(check, rec, limit):
    """Install the carried wheels into a fresh target (first on every later step's PYTHONPATH), if needed."""
    wdir = Path(check.args.wheels) if check.args.wheels else None
    wheels = sorted(wdir.glob("*.whl")) if wdir and wdir.is_dir() else []
    rec["wheels_dir"] = str(wdir) if wdir else None
    if not wheels:
        rec.update(status="skipped", reason=f"no wheels in {wdir}" if wdir else "no --wheels")
        return
    rec["wheels"] = [w.name for w in wheels]
    rec["wheels_mib"] = round(sum(w.stat().st_size for w in wheels) / 2**20, 1)
    wanted = ["hydra", "omegaconf", "optuna", "sqlalchemy", "alembic", "mlflow"]
    before = module_status(check)
    missing = [m for m in wanted if not before.get(m, {}).get("ok")]
    if not missing:
        rec.update(status="skipped", reason=f"not needed: {', '.join(wanted)} already import here")
        return
    site = Path(tempfile.mkdtemp(prefix="gpu_check_site_"))
    cmd = python("-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
                 "--disable-pip-version-check", "--target", site, *wheels)
    rc, out, timed_out = check.run("wheels", cmd, ROOT, limit)
    if rc != 0 and not timed_out and "No module named pip" in out:
        for w in wheels:  # no pip: a wheel is a zip of its files (enough for these pure-Python ones)
            with zipfile.ZipFile(w) as z:
                z.extractall(site)
        rc, out = 0, out + "\n(no pip: unzipped the wheels instead)\n"
    record(check, rec, cmd, rc, out, timed_out)
    if rec["status"] == "passed":
        check.site = site
        rec["site"] = str(site)
        check.modules = None  # probe again, with the new path
        after = module_status(check)
        rec["now_importable"] = [m for m in missing if after.get(m, {}).get("ok")]
        still = {m: after.get(m, {}).get("error") for m in missing if not after.get(m, {}).get("ok")}
        if still:
            rec["still_missing"] = still
            rec["reason"] = "installed, but still not importable: " + "; ".join(f"{k}: {v}" for k, v in still.items())


def nvidia_smi() -> dict:
    """nvidia-smi's view of the GPU (driver, clocks, power limit), or why there is none."""
    smi = {}
    for key, smi_args in (("nvidia_smi", ["--query-gpu=name,driver_version,memory.total,clocks.max.sm,"
                                           "power.limit,temperature.gpu", "--format=csv,noheader"]),
                          ("nvidia_smi_L", ["-L"])):
        try:
            p = subprocess.run(["nvidia-smi", *smi_args], capture_output=True, text=True, timeout=20)
            smi[key] = (p.stdout or p.stderr).strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            smi[key] = f"not available ({type(e).__name__})"
    return smi


def step_env(check, rec, limit):
    """Name the machine in the summary: versions, device, packages, and the peak its MFU is held against."""
    cmd = python(SCRIPT, "--probe", "env", "--device", check.device)
    _, out, _ = run_and_record(check, rec, "env", cmd, ROOT, limit)
    info = probe_json(out) or {}
    if info.get("modules"):
        check.modules = info["modules"]
    smi = nvidia_smi()
    name = info.get("device_name")
    try:
        peak = peak_for(name)
        peak_note = (f"{peak:.0f} TFLOP/s dense bf16 (datasheet, PEAK_TFLOPS in benchmarks/throughput.py)"
                     if peak else f"unknown device {name!r}: MFU not computed")
    except (OSError, LookupError, SyntaxError, ValueError) as e:
        peak, peak_note = None, f"peak table unreadable ({e}): MFU not computed"
    check.machine.update({k: v for k, v in info.items() if k != "modules"}, **smi,
                         peak_bf16_tflops=peak, peak_note=peak_note,
                         packages={m: (v.get("version") if v.get("ok") else f"missing: {v.get('error')}")
                                   for m, v in (info.get("modules") or {}).items()})
    if check.device == "cuda" and not info.get("cuda_available"):
        rec.update(status="failed", reason="--device cuda but torch sees no CUDA device")


def step_matmul(check, rec, limit):
    """The achievable bf16 TFLOP/s, as a fraction of the datasheet peak (torch alone)."""
    cmd = python(SCRIPT, "--probe", "matmul", "--device", check.device, *(["--quick"] if check.quick else []))
    _, out, _ = run_and_record(check, rec, "matmul", cmd, ROOT, limit)
    fig = probe_json(out)
    if fig:
        peak = check.machine.get("peak_bf16_tflops")
        fig["fraction_of_peak"] = fig["tflops"] / peak if peak else None
        rec["figures"] = fig


def step_throughput(check, rec, limit):
    """Ours against the seed-style reference, and the in-process mini sweep's time between trials."""
    if not need(check, rec, "throughput"):
        return
    cmd = throughput_cmd(check, "--trials", "5")
    _, out, _ = run_and_record(check, rec, "throughput", cmd, check.work, limit)
    rec["figures"] = parse_throughput(out)
    if rec["status"] == "passed" and not rec["figures"]["by_batch"]:
        rec.update(status="failed", reason="no result lines in its output")


def step_compile(check, rec, limit):
    """Ours under torch.compile, against the reference (and ours eager) measured by the throughput step."""
    if not need(check, rec, "compile"):
        return
    backend = ["--compile-backend", "eager"] if check.device == "cpu" else []
    cmd = throughput_cmd(check, "--compile", *backend, "--pipelines", "ours", "--trials", "0", "--data-batches", "0")
    _, out, _ = run_and_record(check, rec, "compile", cmd, check.work, limit)
    fig = parse_throughput(out)
    eager = check.steps.get("throughput", {}).get("figures", {}).get("by_batch", {})
    for bs, b in fig["by_batch"].items():
        ref = eager.get(bs, {}).get("reference", {}).get("images_per_s")
        ours_eager = eager.get(bs, {}).get("ours", {}).get("images_per_s")
        ips = b.get("ours", {}).get("images_per_s")
        b["speedup_vs_reference"] = ips / ref if ips and ref else None
        b["speedup_vs_eager"] = ips / ours_eager if ips and ours_eager else None
    fig["backend"] = "eager (Dynamo only: a CPU smoke run)" if backend else "inductor"
    rec["figures"] = fig


def step_sweep(check, rec, limit):
    """A real Optuna sweep through sweeps.train --multirun: its time between trials, from its log."""
    if not need(check, rec, "sweep"):
        return
    tracking = bool(module_status(check).get("mlflow", {}).get("ok"))
    n_trials = 3 if check.quick else 5
    sweep_dir = check.work / "sweep"
    sweep_dir.mkdir(exist_ok=True)
    common = ["--multirun", "hydra/sweeper=sweeps_optuna", "hydra.sweeper.n_jobs=1",
              f"hydra.sweeper.n_trials={n_trials}", "hydra.sweeper.study_name=gpu_check",
              "tracking.experiment=gpu_check", "optim.lr=interval(0.0005,0.005)", "dataset=fake",
              "trainer.epochs=1", "trainer.limit_eval_batches=2", "trainer.progress=false"]
    if check.device == "cuda":
        size = ["model=resnet18_trunc", "trainer.batch_size=512", "trainer.limit_train_batches=20",
                "trainer.device=cuda"]
    else:
        size = ["dataset.train_size=512", "dataset.test_size=128", *TINY_MODEL, "trainer.batch_size=32",
                "trainer.limit_train_batches=2", "trainer.device=cpu"]
    cmd = python("-m", "sweeps.train", *common, *size, *([] if tracking else ["tracking.enabled=false"]))
    _, out, _ = run_and_record(check, rec, "sweep", cmd, sweep_dir, limit)
    fig = parse_sweep_log(out)
    fig["tracking"] = ("MLflow (sqlite store)" if tracking else
                       "tracking.enabled=false: mlflow's sqlite store does not import")
    fig["n_trials"] = n_trials
    rec["figures"] = fig
    if rec["status"] == "passed" and fig["between_trials_s_max"] is None:
        rec.update(status="failed", reason="no between-trials figure could be read from the sweep's log")


def step_pytest(check, rec, limit):
    """``pytest -m gpu`` on every test file with a GPU test, each test's outcome read from junit.xml."""
    if not need(check, rec, "pytest"):
        return
    files = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").glob("test_*.py")
                   if "pytest.mark.gpu" in p.read_text(errors="replace"))
    rec["files"] = files
    if not files:
        rec.update(status="failed", reason="no test file has a pytest.mark.gpu test")
        return
    junit = check.out / "junit.xml"
    cmd = python("-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", "-q", "-rA",
                 "--continue-on-collection-errors", f"--junitxml={junit}", *files)
    rc, out, timed_out = run_and_record(check, rec, "pytest", cmd, ROOT, limit)
    tests = parse_junit(junit)
    counts = {}
    for t in tests:
        counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
    rec["figures"] = {"tests": tests, "counts": counts}
    if timed_out:
        return
    if not tests:
        rec.update(status="failed", reason=f"exit code {rc}: no GPU test ran (see log.txt)")
    elif counts.get("failed") or counts.get("error") or rc not in (0, 5):
        rec.update(status="failed",
                   reason=f"{counts.get('failed', 0)} failed, {counts.get('error', 0)} errors, "
                          f"{counts.get('passed', 0)} passed, {counts.get('skipped', 0)} skipped (exit code {rc})")
    elif counts.get("skipped") == len(tests):
        msgs = {t["message"] for t in tests}
        why = "no CUDA" if all("cuda" in m.lower() for m in msgs) else "; ".join(sorted(msgs))
        rec.update(status="skipped", reason=f"skipped: {why}")
    else:
        rec.update(status="passed", reason=f"{counts.get('passed', 0)} passed, {counts.get('skipped', 0)} skipped")


def step_fused(check, rec, limit):
    """The fused-replicates benchmark, K = 1 2 4 8, when one exists; 'not available' until then."""
    ks = ["1", "2"] if check.quick else ["1", "2", "4", "8"]
    if FUSED.is_file():
        cmd = python(FUSED, "--device", check.device, "--replicates", *ks, *(["--quick"] if check.quick else []))
    elif re.search(r"""["']--fused["']""", THROUGHPUT.read_text()):
        cmd = throughput_cmd(check, "--fused", "--replicates", *ks, "--trials", "0")
    else:
        rec.update(status="not available",
                   reason="no fused-replicates benchmark yet (no benchmarks/fused.py, no --fused in throughput.py)")
        return
    if not need(check, rec, "fused"):
        return
    _, out, _ = run_and_record(check, rec, "fused", cmd, check.work, limit)
    rec["figures"] = {"rows": parse_fused(out)}
    if rec["status"] == "passed" and not rec["figures"]["rows"]:
        rec.update(status="failed", reason="no 'fused k=...' lines in its output")


class Step(NamedTuple):
    run: Callable
    limit_cuda_s: int  # the deadline (--budget-s) caps each one
    limit_cpu_s: int


# The steps, in their default order.
STEPS = {"wheels": Step(step_wheels, 90, 90), "env": Step(step_env, 60, 60), "matmul": Step(step_matmul, 60, 30),
         "throughput": Step(step_throughput, 210, 150), "sweep": Step(step_sweep, 150, 150),
         "pytest": Step(step_pytest, 240, 150), "fused": Step(step_fused, 150, 120),
         "compile": Step(step_compile, 210, 150)}
