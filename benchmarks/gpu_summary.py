"""gpu_check.py's summary.json and summary.md, and the README's targets held against what was measured.

Everything here is a function of the summary dict alone (its machine, steps and figures), so that the
runner can rewrite both files after every step, and a run cut off at any point still leaves a summary
that says what was measured, what was not, and why. Each target reads met, not met or not measured;
a ``--quick`` run on the CPU judges none (its figures are smoke-test values).
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from gpu_parsers import num

TARGETS_NOTE = ("README targets: ours >= 10x the seed-style reference at batch 128 and 512; MFU >= 30% at batch 512; "
                "< 1 s between trials; fused K=8 >= 3x sequential")


def fmt(v, spec=".3g", none="n/a") -> str:
    return none if v is None else format(v, spec)


def cell(text) -> str:
    """Text for a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def figures(summary: dict, step: str) -> dict:
    return summary["steps"].get(step, {}).get("figures") or {}


def why(summary: dict, step: str) -> str:
    """A step's status and reason in one phrase: why its figures are what they are (or are missing)."""
    rec = summary["steps"].get(step)
    if rec is None:
        return "step not run"
    reason = rec.get("reason") or ""
    if not reason or reason.startswith(rec["status"]):
        return reason or rec["status"]
    return f"{rec['status']}: {reason}"


def targets(summary: dict) -> list[dict]:
    """One row per README target: its value, as shown, and met / not met / not measured (and why)."""
    rows = []
    smoke = summary["quick"] and summary["machine"]["device_requested"] == "cpu"

    def row(target, value, ok, shown, because=""):
        verdict = "not measured" if value is None else ("met" if ok(value) else "not met")
        if smoke and value is not None:
            verdict = f"not judged (--quick on the CPU; would be: {verdict})"
        rows.append({"target": target, "value": value, "shown": shown if value is not None else because or "n/a",
                     "verdict": verdict})

    tp, cp = figures(summary, "throughput"), figures(summary, "compile")
    bss = sorted((int(b) for b in tp.get("by_batch", {})), key=int)
    lo, hi = (str(bss[0]), str(bss[-1])) if bss else ("128", "512")
    for label, fig, key in (("", tp, "speedup"), (" (compiled)", cp, "speedup_vs_reference")):
        for bs in dict.fromkeys((lo, hi)):
            v = fig.get("by_batch", {}).get(bs, {}).get(key)
            row(f"ours{label} >= 10x the seed-style reference, batch {bs}", v, lambda x: x >= 10,
                f"{fmt(v, '.1f')}x", why(summary, "compile" if label else "throughput"))
    for label, fig in (("", tp), (" (compiled)", cp)):
        v = fig.get("by_batch", {}).get(hi, {}).get("ours", {}).get("mfu")
        because = why(summary, "compile" if label else "throughput")
        if v is None and fig.get("by_batch", {}).get(hi, {}).get("ours"):
            because = summary["machine"].get("peak_note") or "unknown device: MFU not computed"
        row(f"MFU{label} >= 30% at batch {hi}", v, lambda x: x >= 0.30, f"{fmt(v and 100 * v, '.1f')}%", because)
    bt = tp.get("between_trials", {})
    v = bt.get("overhead_s_max")
    row("< 1 s between trials (benchmark's in-process mini sweep, max after the first)", v, lambda x: x < 1,
        f"{fmt(v, '.3f')} s (mean {fmt(bt.get('overhead_s_mean'), '.3f')} s)", why(summary, "throughput"))
    sw = figures(summary, "sweep")
    v = sw.get("between_trials_s_max")
    row("< 1 s between trials (real Optuna sweep, sweeps.train --multirun, max)", v, lambda x: x < 1,
        f"{fmt(v, '.3f')} s (mean {fmt(sw.get('between_trials_s_mean'), '.3f')} s; {sw.get('tracking', '')})",
        why(summary, "sweep"))
    fused = {r.get("k"): r for r in figures(summary, "fused").get("rows", [])}
    kmax = 2 if summary["quick"] else 8
    v = fused.get(kmax, {}).get("speedup")
    row(f"fused K={kmax} >= 3x sequential", v, lambda x: x >= 3, f"{fmt(v, '.2f')}x", why(summary, "fused"))
    return rows


def not_measured(summary: dict) -> list[str]:
    """What the figures leave out: each step that did not pass, and the caveats of the run itself."""
    out = [f"{name}: {why(summary, name)}" for name, rec in summary["steps"].items()
           if rec["status"] not in ("passed", "running")]
    sw = figures(summary, "sweep")
    if sw and not str(sw.get("tracking", "")).startswith("MLflow"):
        out.append("sweep: ran without MLflow tracking (mlflow's store does not import); its between-trials time "
                   "leaves out MLflow's per-trial cost")
    if summary["quick"]:
        out.append("--quick on the CPU: every figure is a smoke-test value, not a measurement of a target")
    return out


def _header(summary: dict) -> list[str]:
    """The machine, the run, the targets' table and the steps' table."""
    m = summary["machine"]
    name = m.get("device_name") or "(device not probed)"
    lines = [f"# GPU check: {name}", "",
             f"- machine: {name}; torch {m.get('torch', '?')} (CUDA {m.get('torch_cuda') or '-'}, "
             f"cuDNN {m.get('cudnn') or '-'}), Python {m.get('python', '?')}, {m.get('cpu_count', '?')} CPUs"
             + (f", {m['gpu_memory_gib']} GiB, {m.get('sm_count')} SMs, capability {m.get('capability')}"
                if m.get("gpu_memory_gib") else ""),
             f"- nvidia-smi: {m.get('nvidia_smi', 'not run')}",
             f"- bf16 peak: {m.get('peak_note', 'not read')}",
             f"- run: `python benchmarks/gpu_check.py {shlex.join(summary['argv'])}`, started "
             f"{summary['started']}, {summary['elapsed_s']} s"
             + (" (**--quick on the CPU: smoke-test values, not measurements**)" if summary["quick"] else ""), "",
             "## Targets", "", "| target | value | verdict |", "|---|---|---|"]
    lines += [f"| {cell(t['target'])} | {cell(t['shown'])} | {t['verdict']} |" for t in summary["targets"]]
    lines += ["", "## Steps", "", "| step | status | s | note |", "|---|---|---|---|"]
    lines += [f"| {n} | {r['status']} | {fmt(r.get('seconds'), '.1f', '')} | {cell(r.get('reason', ''))} |"
              for n, r in summary["steps"].items()]
    mm = figures(summary, "matmul")
    if mm:
        lines += ["", f"bf16 matmul {mm['n']}^3: {mm['tflops']:.4g} TFLOP/s"
                  + (f" ({100 * mm['fraction_of_peak']:.0f}% of the datasheet peak)"
                     if mm.get("fraction_of_peak") else "")]
    return lines


def _throughput(title: str, fig: dict) -> list[str]:
    """One throughput step's table (each batch size: ours, the reference, their ratio) and its mini sweep."""
    lines = ["", f"## {title}", "",
             f"resnet18_trunc, {fmt(fig.get('params'), ',.0f')} params, "
             f"{fmt(fig.get('gflop_per_image_fwd_bwd'), '.3f')} GFLOP per training image", "",
             "| batch | pipeline | images/s | s per 50k epoch | peak GiB | TFLOP/s | MFU | setup |",
             "|---|---|---|---|---|---|---|---|"]
    for bs, b in sorted(fig["by_batch"].items(), key=lambda kv: int(kv[0])):
        for pipe in ("ours", "reference"):
            r = b.get(pipe)
            if r:
                lines.append(f"| {bs} | {pipe} | {fmt(r['images_per_s'], ',.0f')} | {fmt(r['epoch_s'], '.2f')} "
                             f"| {fmt(r['peak_mem_gib'], '.2f')} | {fmt(r['tflops'], '.1f')} "
                             f"| {fmt(r['mfu'] and 100 * r['mfu'], '.1f')}{'%' if r['mfu'] else ''} "
                             f"| {r['setup']} |")
        ratio = b.get("speedup") or b.get("speedup_vs_reference")
        if ratio:
            lines.append(f"| {bs} | ours / reference | {ratio:.1f}x | | | | | |")
        if b.get("data_only"):
            d = b["data_only"]
            lines.append(f"| {bs} | input pipeline alone | {fmt(d['ours_images_per_s'], ',.0f')} vs "
                         f"{fmt(d['reference_images_per_s'], ',.0f')} ({fmt(d['speedup'], '.1f')}x) | | | | | |")
    bt = fig.get("between_trials")
    if bt:
        lines += ["", f"In-process mini sweep ({bt.get('trials')} trials, batch {bt.get('bs')}): "
                  f"{fmt(bt.get('overhead_s_mean'), '.3f')} s mean, {fmt(bt.get('overhead_s_max'), '.3f')} s "
                  f"max between trials (first trial {fmt(bt.get('first_trial_overhead_s'), '.3f')} s; first "
                  f"step {fmt(bt.get('first_step_s_mean'), '.3f')} s, counted apart)."]
    return lines


def _sweep_pytest_fused(summary: dict) -> list[str]:
    """The real sweep's between-trials times, each GPU test's outcome and the fused-replicates table."""
    lines = []
    sw = figures(summary, "sweep")
    if sw:
        lines += ["", "## Real sweep", "",
                  f"{sw.get('trials')} trials ({sw.get('complete')} complete), {sw.get('tracking')}: between "
                  f"trials {sw.get('between_trials_s')} s (mean {fmt(sw.get('between_trials_s_mean'), '.3f')}, "
                  f"max {fmt(sw.get('between_trials_s_max'), '.3f')}); first trial's set-up "
                  f"{fmt(sw.get('first_trial_setup_s'), '.2f')} s; whole sweep {fmt(sw.get('sweep_total_s'), '.1f')} s."]
    pt = figures(summary, "pytest")
    if pt or "pytest" in summary["steps"]:
        lines += ["", "## pytest -m gpu", "", f"{why(summary, 'pytest')}", ""]
        lines += [f"- `{t['test']}`: {t['outcome']}" + (f" ({t['message'][:200]})" if t["message"] else "")
                  for t in pt.get("tests", [])]
    fu = summary["steps"].get("fused")
    if fu:
        lines += ["", "## Fused replicates", ""]
        rows = (fu.get("figures") or {}).get("rows") or []
        if rows:
            lines += ["| K | images/s | sequential images/s | speedup |", "|---|---|---|---|"]
            lines += [f"| {r.get('k')} | {fmt(num(r.get('images_per_s')), ',.0f')} "
                      f"| {fmt(num(r.get('sequential_images_per_s')), ',.0f')} | {fmt(num(r.get('speedup')), '.2f')} |"
                      for r in rows]
        else:
            lines.append(f"{fu['status']}: {fu.get('reason', '')}")
    return lines


def markdown(summary: dict) -> str:
    """summary.md: the same as summary.json, for a person and for the README."""
    lines = _header(summary)
    for step, title in (("throughput", "Throughput (eager)"), ("compile", "Throughput (torch.compile)")):
        fig = figures(summary, step)
        if fig.get("by_batch"):
            lines += _throughput(title, fig)
    lines += _sweep_pytest_fused(summary)
    if summary["not_measured"]:
        lines += ["", "## Not measured", ""] + [f"- {x}" for x in summary["not_measured"]]
    lines += ["", f"_{TARGETS_NOTE}._", ""]
    return "\n".join(lines)


def write_summary(out: Path, summary: dict):
    """Bring the targets up to date and replace summary.json and summary.md whole (never half-written)."""
    summary["targets"] = targets(summary)
    summary["not_measured"] = not_measured(summary)
    for path, text in ((out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n"),
                       (out / "summary.md", markdown(summary))):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
