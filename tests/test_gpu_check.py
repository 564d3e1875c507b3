"""benchmarks/gpu_check.py: the one-command GPU check, run tiny on the CPU so that it is known to work
before a device is spent on it."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def load_script(name: str):
    """benchmarks/NAME.py, one of the script's modules that import no sibling."""
    spec = importlib.util.spec_from_file_location(name, SCRIPT.with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peak_table_names_devices_and_refuses_unknown_ones():
    gc = load_script("gpu_probes")
    assert gc.peak_for("NVIDIA H200") == 989.0
    assert gc.peak_for("NVIDIA H100 80GB HBM3") == 989.0
    assert gc.peak_for("NVIDIA H100 PCIe") == 756.0
    assert gc.peak_for("NVIDIA H100 NVL") == 835.0
    assert gc.peak_for("NVIDIA A100-SXM4-80GB") == gc.peak_for("NVIDIA A100 80GB PCIe") == 312.0
    assert gc.peak_for("NVIDIA L4") == 121.0 and gc.peak_for("NVIDIA L40S") == 362.0
    assert gc.peak_for("NVIDIA A10") == 125.0
    assert gc.peak_for("Tesla T4") is None and gc.peak_for("cpu") is None and gc.peak_for(None) is None


def test_sweep_log_gaps_run_from_one_trials_end_to_the_next_ones_first_epoch():
    gc = load_script("gpu_parsers")
    log = """\
[2026-12-02 00:44:22,627][HYDRA] trial 0: optim.lr=0.07
[2026-12-02 00:44:27,592][sweeps.train][INFO] - epoch 1: train loss 7.4601 acc 0.0859 | val loss 6.2 acc 0.09 | lr 0.0749 | 1.6s
[2026-12-02 00:44:27,959][sweeps.train][INFO] - done: 7,666 params | 1 epochs (best 1) | best val acc 0.0903 | test acc 0.1003 | 4.9s
[2026-12-02 00:44:28,001][HYDRA] trial 0 COMPLETE: 0.09
[2026-12-02 00:44:28,395][HYDRA] trial 1: optim.lr=0.04
[2026-12-02 00:44:29,657][sweeps.train][INFO] - epoch 1: train loss 4.7403 acc 0.0859 | val loss 23.5 acc 0.11 | lr 0.0413 | 0.7s
[2026-12-02 00:44:29,978][sweeps.train][INFO] - done: 7,666 params | 1 epochs (best 1) | best val acc 0.1181 | test acc 0.1811 | 1.2s
[2026-12-02 00:44:30,027][HYDRA] trial 1 COMPLETE: 0.11
[2026-12-02 00:44:33,453][HYDRA] Sweep 'train': 2/2 trials | 2 complete | best 0.118056 (trial 1) | 12.5s | results: x.yaml
"""
    fig = gc.parse_sweep_log(log)
    assert fig["trials"] == 2 and fig["complete"] == 2 and fig["sweep_total_s"] == 12.5
    assert fig["between_trials_s"] == [pytest.approx(29.657 - 0.7 - 27.959, abs=1e-3)]
    assert fig["first_trial_setup_s"] == pytest.approx(27.592 - 1.6 - 22.627, abs=1e-3)


@pytest.mark.slow
def test_quick_cpu_run_records_every_step_and_goes_on_after_failures(tmp_path):
    out = tmp_path / "out"
    # 'nonexistent' is an unknown step and matmul's command is made to fail: both are recorded as
    # failed, and every step after them still runs.
    steps = "wheels,env,nonexistent,matmul,throughput,sweep,pytest,fused,compile"
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out),
           "--wheels", str(tmp_path / "no-wheels"), "--workdir", str(tmp_path / "work"),
           "--steps", steps, "--inject-failure", "matmul"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    log = (out / "log.txt").read_text() if (out / "log.txt").is_file() else ""
    assert proc.returncode == 1, (proc.stdout + proc.stderr + log)[-4000:]  # 1: some step failed
    summary = json.loads((out / "summary.json").read_text())
    md = (out / "summary.md").read_text()
    s = summary["steps"]
    assert list(s) == steps.split(","), s.keys()
    diag = json.dumps({k: {kk: v.get(kk) for kk in ("status", "reason", "output_tail")} for k, v in s.items()},
                      indent=1)[-6000:]

    # the machine is named
    m = summary["machine"]
    assert m["device_name"] == "cpu" and m["torch"] == torch.__version__, m
    assert m["peak_bf16_tflops"] is None and "MFU not computed" in m["peak_note"]
    assert "# GPU check: cpu" in md and torch.__version__ in md

    # the failures, recorded, and the rest ran
    assert s["wheels"]["status"] == "skipped" and "no wheels" in s["wheels"]["reason"]
    assert s["nonexistent"]["status"] == "failed" and "unknown step" in s["nonexistent"]["reason"]
    assert s["matmul"]["status"] == "failed" and s["matmul"]["returncode"] == 3, diag
    for name in ("env", "throughput", "sweep", "compile"):
        assert s[name]["status"] == "passed", diag
    assert re.search(r"\| nonexistent \| failed \|", md) and re.search(r"\| matmul \| failed \|", md)

    # throughput for both batch sizes, ours against the reference, and the between-trials figures
    tp = s["throughput"]["figures"]
    assert set(tp["by_batch"]) == {"8", "16"}, tp
    for bs, b in tp["by_batch"].items():
        for pipe in ("ours", "reference"):
            r = b[pipe]
            assert r["images_per_s"] > 0 and r["tflops"] > 0 and r["mfu"] is None, (bs, pipe, r)
            assert abs(r["epoch_s"] * r["images_per_s"] - 50_000) < 0.01 * 50_000
        assert b["speedup"] > 0
    bt = tp["between_trials"]
    assert bt["trials"] == 5 and bt["overhead_s_mean"] > 0 and bt["overhead_s_max"] > 0
    sw = s["sweep"]["figures"]
    assert sw["trials"] == sw["complete"] == 3 and len(sw["between_trials_s"]) == 2, sw
    assert all(g > 0 for g in sw["between_trials_s"]) and sw["tracking"].startswith("MLflow")
    cp = s["compile"]["figures"]
    assert set(cp["by_batch"]) == {"8", "16"} and all(b["speedup_vs_reference"] > 0 for b in cp["by_batch"].values())

    # pytest -m gpu: collected, and skipped without CUDA
    assert s["pytest"]["status"] == "skipped" and s["pytest"]["reason"] == "skipped: no CUDA", diag
    tests = s["pytest"]["figures"]["tests"]
    assert len(tests) >= 3 and all(t["outcome"] == "skipped" for t in tests), tests
    assert any(t["test"].startswith("tests/test_faults.py::") for t in tests)
    assert "skipped: no CUDA" in md and (out / "junit.xml").is_file()

    # the fused benchmark: run when it exists, 'not available' until then
    if (ROOT / "benchmarks" / "fused.py").is_file() or "--fused" in (ROOT / "benchmarks" / "throughput.py").read_text():
        assert s["fused"]["status"] in ("passed", "failed", "timeout") and s["fused"].get("command")
    else:
        assert s["fused"]["status"] == "not available"

    # every target has a row; on the CPU none is judged
    targets = {t["target"]: t for t in summary["targets"]}
    assert any("batch 16" in k and "10x" in k for k in targets) and any(k.startswith("MFU") for k in targets)
    assert any("between trials" in k for k in targets) and any(k.startswith("fused") for k in targets)
    assert all(t["verdict"] == "not measured" or t["verdict"].startswith("not judged") for t in targets.values())
    assert summary["finished"] and not list(out.glob("*.tmp"))
