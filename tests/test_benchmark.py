"""benchmarks/throughput.py runs on the CPU and prints parseable, positive figures."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"


def fields(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", line))


@pytest.mark.slow
def test_throughput_benchmark_cpu(tmp_path):
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--steps", "1", "--warmup", "0",
           "--batch-sizes", "4", "8", "--data-batches", "2", "--workers", "1", "--trials", "3", "--trial-steps", "1",
           "--data-root", str(tmp_path / "data"),
           "--override", "dataset.train_size=400", "dataset.test_size=50"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, (out + proc.stderr)[-3000:]
    lines = out.splitlines()

    model = fields(next(l for l in lines if l.startswith("model ")))
    assert int(model["params"]) > 0 and float(model["gflop_per_image_fwd_bwd"]) > 0

    results = [fields(l) for l in lines if l.startswith("result ")]
    assert {(r["pipeline"], r["bs"]) for r in results} == {(p, b) for p in ("ours", "reference") for b in ("4", "8")}
    for r in results:
        for key in ("images_per_s", "epoch_s", "tflops"):
            assert float(r[key]) > 0, (key, r)
        assert abs(float(r["epoch_s"]) * float(r["images_per_s"]) - 50_000) < 0.01 * 50_000, (r, out)
        assert r["peak_mem_gib"] == "n/a" and r["mfu"] == "n/a"  # CPU: no GPU memory, no peak table entry

    ratios = [fields(l) for l in lines if l.startswith("ratio ")]
    assert len(ratios) == 2 and all(float(r["speedup"]) > 0 for r in ratios)
    data = [fields(l) for l in lines if l.startswith("data bs=")]
    assert len(data) == 2 and all(float(d["ours_images_per_s"]) > 0 and float(d["speedup"]) > 0 for d in data)

    sweep = fields(next(l for l in lines if l.startswith("sweep ")))
    assert sweep["trials"] == "3"
    for key in ("overhead_s_mean", "overhead_s_max", "first_trial_overhead_s", "data_s_mean", "first_step_s_mean"):
        assert float(sweep[key]) > 0, (key, sweep)


@pytest.mark.slow
def test_throughput_benchmark_fused_cpu(tmp_path):
    """--fused: fused, sequential and concurrent figures for every K, and their ratios (a tiny model)."""
    cmd = [sys.executable, str(SCRIPT), "--fused", "--device", "cpu", "--steps", "1", "--warmup", "0",
           "--replicates", "1", "2", "--fused-batch-size", "4", "--data-root", str(tmp_path / "data"),
           "--override", "dataset.train_size=200", "dataset.test_size=50", "model.channels=[8,16]",
           "model.blocks=[1,1]", "model.stem_channels=8", "model.head=[16]"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, (out + proc.stderr)[-3000:]
    lines = out.splitlines()
    rows = [fields(l) for l in lines if l.startswith("fused ")]
    assert {(r["K"], r["mode"]) for r in rows} == {(k, m) for k in ("1", "2")
                                                   for m in ("fused", "sequential", "concurrent")}
    for r in rows:
        assert float(r["images_per_s"]) > 0 and r["peak_mem_gib"] == "n/a" and r["bs"] == "4", r
    ratios = [fields(l) for l in lines if l.startswith("fused_ratio ")]
    assert [r["K"] for r in ratios] == ["1", "2"]
    assert all(float(r["vs_sequential"]) > 0 and float(r["vs_concurrent"]) > 0 for r in ratios)

