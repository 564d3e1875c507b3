"""When a process's training steps happen, read from outside it: the benchmarks' stopwatch.

A ``sitecustomize`` module (Python imports it at start-up from PYTHONPATH) wraps
``torch.Tensor.backward`` and appends one line per call to a file: the wall-clock
times (``time.time()``, the clock of the log's timestamps) at which it started and
ended. The first start is a run's first step (its first forward is done); the gap
from one trial's last end to the next trial's first start is what a sweep costs
between trials. Nothing of sweeps is changed or imported to take it.
"""

from __future__ import annotations

import os
from pathlib import Path

HOOK = '''
import os, time
import torch

_clock = open(os.environ["SWEEPS_STEP_CLOCK"], "a", buffering=1)
_backward = torch.Tensor.backward

def backward(self, *args, **kwargs):
    start = time.time()
    out = _backward(self, *args, **kwargs)
    _clock.write(f"{start:.6f} {time.time():.6f}\\n")
    return out

torch.Tensor.backward = backward
'''


def clocked_env(env: dict, folder: Path) -> tuple[dict, Path]:
    """``env`` with the hook on its PYTHONPATH, and the file it writes to (emptied)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(HOOK)
    steps = folder / "steps.txt"
    steps.write_text("")
    return {**env, "SWEEPS_STEP_CLOCK": str(steps),
            "PYTHONPATH": os.pathsep.join(p for p in (str(folder), env.get("PYTHONPATH", "")) if p)}, steps


def steps(path: Path) -> list[tuple[float, float]]:
    """(start, end) of every backward the process made, in order."""
    return [(float(a), float(b)) for a, b in (line.split() for line in path.read_text().splitlines() if line)]
