"""The learning-rate range test writes a plot and suggests a max_lr."""

from __future__ import annotations

import re

from conftest import TINY, run_module


def test_lr_find_plots_and_suggests(project):
    out = project / "lr.png"
    tiny = [a for a in TINY if not a.startswith("trainer.limit")]
    args = tiny[:2] + ["--iters", "20", "--out", str(out)] + tiny[2:]  # overrides on both sides of the options
    proc = run_module("sweeps.lr_find", args, project)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    match = re.match(r"suggested max_lr: ([0-9.eE+-]+)", last)
    assert match and 1e-7 <= float(match.group(1)) <= 10, last
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_lr_find_rejects_inverted_range(project):
    proc = run_module("sweeps.lr_find", ["dataset=digits", "--start-lr", "1", "--end-lr", "0.1"], project)
    assert proc.returncode == 2
    assert "--start-lr=1.0" in proc.stderr and "Traceback" not in proc.stderr
