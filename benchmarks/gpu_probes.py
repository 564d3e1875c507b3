"""What gpu_check.py's env, modules and matmul probes run, each in its own subprocess, and the one line
by which a probe hands its figures back to the step runner.

A probe runs as ``gpu_check.py --probe NAME`` rather than in the runner's process so that a hang or a
crash in torch or the CUDA driver costs one step, not the whole run, and so that an import is tried in
the environment every later step gets (the wheels' target on PYTHONPATH included). torch is imported
inside the probes only: the runner and ``--fetch-wheels`` work without it. The device's datasheet peak is
here too, read from throughput.py's own table so that the two never disagree about a device.
"""

from __future__ import annotations

import ast
import json
import os
import sys
import time
from pathlib import Path

THROUGHPUT = Path(__file__).resolve().with_name("throughput.py")
PROBE_LINE = "PROBE_JSON "  # a probe's last word: this prefix, then its figures as JSON

# Modules probed on the machine: import name -> distribution (for its version); for mlflow, also
# the sqlite tracking store the project uses (it needs more than `import mlflow` does).
MODULES = {"torch": "torch", "torchvision": "torchvision", "PIL": "pillow", "numpy": "numpy", "pytest": "pytest",
           "yaml": "pyyaml", "tqdm": "tqdm", "hydra": "hydra-core", "omegaconf": "omegaconf", "optuna": "optuna",
           "sqlalchemy": "sqlalchemy", "alembic": "alembic", "mlflow": "mlflow-skinny"}


def peak_table() -> dict[str, float]:
    """throughput.py's PEAK_TFLOPS, read without importing it (it imports hydra and the project)."""
    tree = ast.parse(THROUGHPUT.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "PEAK_TFLOPS" for t in node.targets):
            return {str(k): float(v) for k, v in ast.literal_eval(node.value).items()}
    raise LookupError(f"no PEAK_TFLOPS table in {THROUGHPUT}")


def peak_for(name: str | None) -> float | None:
    """The dense bf16 peak of a device name, as throughput.py's device_peak matches it (first key in the name)."""
    if not name or name == "cpu":
        return None
    return next((v for k, v in peak_table().items() if k in name), None)


def probe_modules() -> dict:
    """Import each module (not just find it): a wheel whose own dependency is missing fails here, with why."""
    import importlib
    import importlib.metadata as md

    out = {}
    for mod, dist in MODULES.items():
        try:
            importlib.import_module(mod)
            if mod == "mlflow":
                importlib.import_module("mlflow.store.tracking.sqlalchemy_store")
        except Exception as e:  # noqa: BLE001 - any failure to import is the finding
            out[mod] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:300]}
            continue
        try:
            version = md.version(dist)
        except md.PackageNotFoundError:
            version = getattr(sys.modules[mod], "__version__", None)
        out[mod] = {"ok": True, "version": version}
    return out


def probe_env(device: str) -> dict:
    """The versions, the device and its size, and which modules import: what the summary names the machine by."""
    import platform

    import torch

    info = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
            "device_count": torch.cuda.device_count() if torch.cuda.is_available() else 0}
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device_name=torch.cuda.get_device_name(0), capability=f"{props.major}.{props.minor}",
                    gpu_memory_gib=round(props.total_memory / 2**30, 1), sm_count=props.multi_processor_count,
                    cudnn=torch.backends.cudnn.version(), bf16_supported=torch.cuda.is_bf16_supported())
    else:
        info["device_name"] = "cpu"
    info["modules"] = probe_modules()
    return info


def probe_matmul(device: str, quick: bool) -> dict:
    """A large bf16 matrix product: what the device achieves, to hold next to its datasheet peak."""
    import torch

    cuda = device == "cuda"
    n = 8192 if cuda else (256 if quick else 1024)
    reps, warmup = (50, 10) if cuda else (3, 1)
    dev = torch.device("cuda" if cuda else "cpu")
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    for _ in range(warmup):
        a @ b
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {"n": n, "dtype": "bfloat16", "reps": reps, "seconds": elapsed, "tflops": 2 * n**3 * reps / elapsed / 1e12}


PROBES = ("env", "modules", "matmul")


def print_probe(name: str, device: str, quick: bool) -> int:
    """Run one probe and print its figures on the line probe_json reads back."""
    fig = {"env": lambda: probe_env(device), "modules": probe_modules,
           "matmul": lambda: probe_matmul(device, quick)}[name]()
    print(PROBE_LINE + json.dumps(fig, default=str), flush=True)
    return 0


def probe_json(out: str):
    """A probe's figures from its output (the last such line), or None when it printed none."""
    for line in reversed(out.splitlines()):
        if line.startswith(PROBE_LINE):
            return json.loads(line[len(PROBE_LINE):])
    return None
