"""The sweep figures of a replicated sweep: the same bars and scatter, each mean with its 95% CI.

A bar or a point of several seeds drawn bare hides the one thing that says
whether two of them differ; the interval drawn is the one the tables give
(mean ± t(0.975, n-1)·sem), so the figures and the text never disagree. A row
of one run is drawn without a bar, as ``sweeps.plots`` draws it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sweeps.report.stats import Dist

CAPTION = "error bars: 95% CI of the mean over seeds"


def half_ci(d: Dist | None) -> float:
    """The 95% interval's half-width in percent points, 0 for a single run."""
    if d is None:
        return 0.0
    low, high = d.ci95
    return 100 * (high - low) / 2


def axis_bars(axis: str, bars: Sequence[Mapping[str, Any]], path: Path, title: str | None = None) -> Path:
    """``sweeps.plots.axis_bars`` with error bars: ``bars`` also carry ``val_err`` / ``test_err`` (pp)."""
    import numpy as np

    from sweeps.plots import _save, _wrap, percent, plt

    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(bars) + 2), 4.5))
    xs = np.arange(len(bars))
    width = 0.38
    has_test = any(b.get("test_acc") is not None for b in bars)
    tops = []
    for offset, key, colour in ((-width / 2 if has_test else 0, "val_acc", "tab:blue"),
                                (width / 2, "test_acc", "tab:green")):
        if key == "test_acc" and not has_test:
            continue
        heights = [percent(b.get(key)) for b in bars]
        errs = [float(b.get(key.replace("_acc", "_err")) or 0.0) for b in bars]
        rects = ax.bar(xs + offset, [h if h is not None else 0 for h in heights], width if has_test else 0.6,
                       yerr=errs, capsize=3, ecolor="black", color=colour, alpha=0.85,
                       label="validation" if key == "val_acc" else "test")
        for rect, h, e, b in zip(rects, heights, errs, bars):
            text = "n/a" if h is None else f"{h:.2f}" + (" ★" if b.get("best") and key == "val_acc" else "")
            ax.annotate(text, (rect.get_x() + rect.get_width() / 2, rect.get_height() + e), ha="center",
                        va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
            if h is not None:
                tops.append(h + e)
    if len(bars) > 5:
        ax.set_xticks(xs, [_wrap(str(b["label"]), 28) for b in bars], fontsize=6, rotation=30, ha="right")
    else:
        ax.set_xticks(xs, [_wrap(str(b["label"]), 18) for b in bars], fontsize=7)
    ax.set_ylim(0.0, min(105.0, max(tops) * 1.08 + 1) if tops else 100.0)  # from 0, as the plain bars
    ax.set_ylabel("accuracy (%)")
    ax.set_xlabel(axis)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{title or f'ablation: {axis}'}\n({CAPTION})", fontsize=10)
    return _save(fig, path)


def accuracy_vs_params(points: Sequence[Mapping[str, Any]], path: Path, budget: float | None = None,
                       title: str | None = None) -> Path:
    """``sweeps.plots.accuracy_vs_params`` with each point's ``val_err`` (pp) as a vertical error bar."""
    import matplotlib.ticker

    from sweeps.plots import _human, _save, _wrap, pareto_front, percent, plt
    from sweeps_optuna.contract import COMPLETE, PRUNED

    fig, ax = plt.subplots(figsize=(8, 5))
    done = [p for p in points if p.get("val_acc") is not None and p.get("n_params")]
    other = [p for p in points if p not in done and p.get("n_params")]
    xs = [float(p["n_params"]) for p in done]
    ys = [percent(p["val_acc"]) for p in done]
    errs = [float(p.get("val_err") or 0.0) for p in done]
    colours = {COMPLETE: "tab:blue", PRUNED: "tab:orange"}
    for x, y, e, p in zip(xs, ys, errs, done):
        ax.errorbar([x], [y], yerr=[e] if e else None, fmt="o", markersize=5, capsize=3, alpha=0.8, zorder=2,
                    color=colours.get(p.get("state", COMPLETE), "tab:gray"))
    front = [i for i in pareto_front(list(zip(xs, ys))) if done[i].get("state", COMPLETE) == COMPLETE]
    if front:
        ax.plot([xs[i] for i in front], [ys[i] for i in front], "-o", color="tab:red", markersize=8,
                markerfacecolor="none", zorder=3, label="Pareto front of the means (complete runs)")
        for i in front:
            ax.annotate(_wrap(str(done[i].get("label", "")), 32), (xs[i], ys[i]), fontsize=6,
                        xytext=(4, 4), textcoords="offset points")
    if other:
        floor = (min(ys) - 0.05 * max(max(ys) - min(ys), 1.0)) if ys else 0.0
        ax.scatter([float(p["n_params"]) for p in other], [floor] * len(other), marker="x", color="black",
                   zorder=2, label="no accuracy (failed / over budget)")
    for state, colour in colours.items():
        if any(p.get("state", COMPLETE) == state for p in done):
            ax.scatter([], [], color=colour, label=state.lower())
    if budget:
        ax.axvline(float(budget), color="tab:red", linestyle=":", label=f"budget {int(budget):,} params")
    counts = [float(p["n_params"]) for p in points if p.get("n_params")] + ([float(budget)] if budget else [])
    if counts and max(counts) / max(min(counts), 1.0) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("best validation accuracy (%), mean over seeds")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_human))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"{title or 'validation accuracy vs parameter count'}\n({CAPTION})", fontsize=10)
    return _save(fig, path)
