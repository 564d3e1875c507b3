"""The parsers of what gpu_check.py's steps print: throughput.py's result lines, a real sweep's log
(its timestamps), pytest's junit XML and the fused benchmark's lines.

A step killed at its limit still returns what it printed, so the line parsers pass over a line that
does not parse (one cut off mid-way) instead of failing on it: the figures before it are kept. Only the
standard library is imported: the runner reads these without the project installed.
"""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET
from pathlib import Path


def fields(line: str) -> dict[str, str]:
    """The ``key=value`` fields of one benchmark line."""
    return dict(re.findall(r"(\w+)=(\S+)", line))


def num(v):
    """A float from a benchmark field ('n/a' -> None)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def parse_throughput(out: str) -> dict:
    """throughput.py's machine-readable lines (model, device, data, result, ratio, sweep)."""
    fig: dict = {"by_batch": {}}
    for line in out.splitlines():
        try:
            _parse_throughput_line(fig, line)
        except (KeyError, ValueError):  # a line cut off by a timeout
            continue
    return fig


def _parse_throughput_line(fig: dict, line: str):
    """One line of throughput.py's output into ``fig``."""
    head = line.split(" ", 1)[0]
    f = fields(line)
    if head == "model" and "params" in f:
        fig["params"] = int(f["params"])
        fig["gflop_per_image_fwd_bwd"] = num(f.get("gflop_per_image_fwd_bwd"))
    elif head == "device" and "peak_bf16_tflops" in f:
        fig["device_line"] = line
        fig["peak_bf16_tflops"] = num(f["peak_bf16_tflops"])
    elif head == "data" and "bs" in f and "ours_images_per_s" in f:
        b = fig["by_batch"].setdefault(f["bs"], {})
        b["data_only"] = {"ours_images_per_s": num(f["ours_images_per_s"]),
                          "reference_images_per_s": num(f["reference_images_per_s"]), "speedup": num(f["speedup"])}
    elif head == "result" and "pipeline" in f:
        b = fig["by_batch"].setdefault(f["bs"], {})
        setup = line[line.index("(") + 1:line.rindex(")")] if "(" in line else ""
        b[f["pipeline"]] = {"images_per_s": num(f["images_per_s"]), "epoch_s": num(f["epoch_s"]),
                            "peak_mem_gib": num(f["peak_mem_gib"]), "tflops": num(f["tflops"]),
                            "mfu": num(f["mfu"]), "steps": int(f["steps"]), "setup": setup}
    elif head == "ratio" and "bs" in f:
        fig["by_batch"].setdefault(f["bs"], {})["speedup"] = num(f["speedup"])
    elif head == "sweep" and "trials" in f:
        fig["between_trials"] = {k: (int(v) if k in ("trials", "bs") else num(v)) for k, v in f.items()}


LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[[^\]]+\](?:\[\w+\])?\s*(?:-\s*)?(.*)$")


def parse_sweep_log(out: str) -> dict:
    """Between trials of a real sweep, from its log's timestamps.

    gap(i) = start of trial i's first epoch (the 'epoch 1' line's time minus that epoch's seconds)
             - the 'done:' line of trial i-1 (its test is over),
    i.e. the previous trial's teardown (MLflow, checkpoints), the sweeper's ask/tell and storage, the
    next job's config, run and model set-up and its first batch. Epoch seconds are logged to 0.1 s."""
    trials: dict[int, dict] = {}
    current = None
    total = None
    for line in out.splitlines():
        m = LOG_LINE.match(line.strip())
        if not m:
            continue
        t = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        msg = m.group(2)
        if (s := re.match(r"trial (\d+): ", msg)):
            current = int(s.group(1))
            trials.setdefault(current, {})["start"] = t
        elif current is None:
            continue
        elif (e := re.match(r"epoch 1: .*\| ([\d.]+)s\s*$", msg)):
            trials[current].setdefault("epoch1_start", t - float(e.group(1)))
        elif msg.startswith("done: "):
            trials[current]["done"] = t
        elif (c := re.match(r"trial (\d+) (COMPLETE|PRUNED|FAIL\w*)", msg)):
            trials.setdefault(int(c.group(1)), {})["state"] = c.group(2)
        if (s2 := re.search(r"\| ([\d.]+)s \| results:", msg)):
            total = float(s2.group(1))
    order = sorted(trials)
    gaps = [trials[b]["epoch1_start"] - trials[a]["done"] for a, b in zip(order, order[1:])
            if "done" in trials[a] and "epoch1_start" in trials[b]]
    first = trials[order[0]] if order else {}
    return {"trials": len(order), "complete": sum(1 for t in trials.values() if t.get("state") == "COMPLETE"),
            "between_trials_s": [round(g, 3) for g in gaps],
            "between_trials_s_mean": round(sum(gaps) / len(gaps), 3) if gaps else None,
            "between_trials_s_max": round(max(gaps), 3) if gaps else None,
            "first_trial_setup_s": (round(first["epoch1_start"] - first["start"], 3)
                                    if "epoch1_start" in first and "start" in first else None),
            "sweep_total_s": total}


def parse_junit(path: Path) -> list[dict]:
    """Each test's outcome and why (pytest's last 'E' line added to the message), or [] when no XML was written."""
    if not path.is_file():
        return []
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        cls, name = case.get("classname", ""), case.get("name", "")
        module = cls.replace(".", "/") + ".py" if cls else ""
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (el.get("message") or "").strip()
                errors = re.findall(r"^E\s+(.+)$", el.text or "", re.M)  # pytest's 'E   ...Error: ...' lines
                if errors and errors[-1] not in message:
                    message = f"{message}: {errors[-1]}" if message else errors[-1]
                message = message[:500]
                break
        tests.append({"test": f"{module}::{name}" if module else name, "outcome": outcome, "message": message,
                      "seconds": num(case.get("time"))})
    return tests


def parse_fused(out: str) -> list[dict]:
    """One row per K from throughput.py --fused: ``fused K=.. mode=.. images_per_s=.. peak_mem_gib=..``
    for each mode and ``fused_ratio K=.. vs_sequential=.. vs_concurrent=..``; or a fused.py's
    ``fused k=K images_per_s=.. sequential_images_per_s=.. speedup=..`` line."""
    rows: dict[int, dict] = {}
    for line in out.splitlines():
        if not line.startswith(("fused ", "fused_ratio ")):
            continue
        f = fields(line)
        k = int(f.get("K", f.get("k", 0)))
        row = rows.setdefault(k, {"k": k})
        mode = f.get("mode")
        if line.startswith("fused_ratio "):
            row["speedup"], row["vs_concurrent"] = num(f.get("vs_sequential")), num(f.get("vs_concurrent"))
        elif mode is None:  # fused.py's one line per K
            row.update({key: (num(v) if num(v) is not None else v) for key, v in f.items() if key != "k"})
        else:
            key = "images_per_s" if mode == "fused" else f"{mode}_images_per_s"
            row[key] = num(f.get("images_per_s"))
            row["peak_mem_gib" if mode == "fused" else f"{mode}_peak_mem_gib"] = num(f.get("peak_mem_gib"))
    return [rows[k] for k in sorted(rows)]
