"""Figures for one run (learning curves, confusion matrix) and for a sweep.

Pure matplotlib on the Agg backend: no display, no seaborn. Every function
takes plain Python data (lists, dicts, arrays), writes one PNG and returns its
path, so the same code serves ``sweeps.train`` (figures of a finished run) and
``sweeps.report`` (figures of a whole sweep, read back from MLflow).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sweeps_optuna.contract import COMPLETE, INFEASIBLE, PRUNED  # noqa: E402

log = logging.getLogger("sweeps.plots")

DPI = 110


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def percent(v: Any) -> float | None:
    """A fraction (0.9123) as a percent (91.23); None for a missing or NaN value.

    The one place a fraction becomes a percent, for the figures here and the
    report's tables alike, so a bar and its table cell cannot disagree.
    """
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else 100 * v


def _series(history: Iterable[Any], key: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of ``key`` from EpochMetrics objects or dicts."""
    xs, ys = [], []
    for m in history:
        row = m if isinstance(m, Mapping) else vars(m)
        if key in row and row[key] is not None:
            xs.append(int(row["epoch"]))
            ys.append(float(row[key]))
    return xs, ys


# --------------------------------------------------------------------- one run


def learning_curves(history: Sequence[Any], path: Path, title: str | None = None) -> Path:
    """Train/val loss (left) and accuracy (right) against the epoch."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, kind in ((ax_loss, "loss"), (ax_acc, "acc")):
        for split, style in (("train", "-"), ("val", "--")):
            xs, ys = _series(history, f"{split}_{kind}")
            if kind == "acc":
                ys = [100 * y for y in ys]
            ax.plot(xs, ys, style, marker="o", markersize=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss" if kind == "loss" else "accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax_loss.set_title("loss")
    ax_acc.set_title("accuracy")
    if title:
        fig.suptitle(_wrap(title, 110), fontsize=9)
    return _save(fig, path)


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int, path: Path,
                     class_names: Sequence[str] | None = None, title: str | None = None) -> Path:
    """Row-normalised confusion matrix (rows: true class), with the counts written in."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    k = int(num_classes)
    counts = np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = max(4.0, min(0.45 * k + 2, 16.0))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if k <= 20:
        names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
        ax.set_xticks(range(k), names, rotation=45 if max(map(len, names)) > 2 else 0)
        ax.set_yticks(range(k), names)
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(title or f"test confusion matrix ({100 * acc:.2f}% of {counts.sum():,} correct)")
    return _save(fig, path)


def run_figures(history: Sequence[Any], y_true: Sequence[int] | None, y_pred: Sequence[int] | None,
                num_classes: int, out_dir: Path, title: str | None = None,
                class_names: Sequence[str] | None = None) -> Path:
    """The figures of one finished run in ``out_dir``; never raises (a figure is not worth a run)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        learning_curves(history, out_dir / "learning_curves.png", title)
    except Exception as e:  # noqa: BLE001
        log.warning(f"could not draw the learning curves: {type(e).__name__}: {e}")
    if y_true is not None and y_pred is not None and len(y_pred):
        try:
            n = min(len(y_true), len(y_pred))
            confusion_matrix(np.asarray(y_true)[:n], np.asarray(y_pred)[:n], num_classes,
                             out_dir / "confusion_matrix.png", class_names=class_names)
        except Exception as e:  # noqa: BLE001
            log.warning(f"could not draw the confusion matrix: {type(e).__name__}: {e}")
    return out_dir


# ------------------------------------------------------------------- a sweep


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: fewer (or equal) params and higher (or equal) accuracy."""
    front, best = [], -math.inf
    for i in sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1])):
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


# The caption of a figure drawn with replicated rows' error bars (the interval the report's tables give).
ERROR_BARS = "error bars: 95% CI of the mean over seeds"


def accuracy_vs_params(points: Sequence[Mapping[str, Any]], path: Path, budget: float | None = None,
                       title: str | None = None) -> Path:
    """Validation accuracy against parameter count, budget line, Pareto front highlighted.

    ``points``: dicts with ``n_params``, ``val_acc`` (fraction), ``label`` and
    ``state``; points without an accuracy (refused, failed) are drawn on the
    x axis as crosses so an over-budget configuration is still visible.
    """
    fig, ax = plt.subplots(figsize=(8, 5))
    done = [p for p in points if p.get("val_acc") is not None and not math.isnan(p["val_acc"])
            and p.get("n_params")]
    other = [p for p in points if p not in done and p.get("n_params")]
    xs = [float(p["n_params"]) for p in done]
    ys = [percent(p["val_acc"]) for p in done]
    colours = {COMPLETE: "tab:blue", PRUNED: "tab:orange"}
    errs = [float(p.get("val_err") or 0.0) for p in done]
    if any(errs):  # replicated rows: the 95% CI of each mean
        for x, y, e, p in zip(xs, ys, errs, done):
            ax.errorbar([x], [y], yerr=[e] if e else None, fmt="o", markersize=5, capsize=3, alpha=0.8, zorder=2,
                        color=colours.get(p.get("state", COMPLETE), "tab:gray"))
    else:
        ax.scatter(xs, ys, c=[colours.get(p.get("state", COMPLETE), "tab:gray") for p in done], s=30,
                   alpha=0.8, zorder=2)
    front = [i for i in pareto_front(list(zip(xs, ys))) if done[i].get("state", COMPLETE) == COMPLETE]
    if front:
        ax.plot([xs[i] for i in front], [ys[i] for i in front], "-o", color="tab:red", markersize=8,
                markerfacecolor="none", zorder=3,
                label="Pareto front of the means (complete runs)" if any(errs) else "Pareto front (complete runs)")
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
        ax.set_xscale("log")  # tiny and budget-sized models on one axis
    ax.set_xlabel("parameters")
    ax.set_ylabel("best validation accuracy (%)" + (", mean over seeds" if any(errs) else ""))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_human))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    title = title or "validation accuracy vs parameter count"
    ax.set_title(f"{title}\n({ERROR_BARS})" if any(errs) else title, fontsize=10 if any(errs) else None)
    return _save(fig, path)


def _human(x: float, _pos=None) -> str:
    if abs(x) >= 1e6:
        return f"{x / 1e6:.1f}M"
    if abs(x) >= 1e3:
        return f"{x / 1e3:.0f}k"
    return f"{x:.0f}"


def axis_bars(axis: str, bars: Sequence[Mapping[str, Any]], path: Path, title: str | None = None) -> Path:
    """One bar per value of an ablation axis: validation (and test) accuracy in percent.

    ``bars``: dicts with ``label``, ``val_acc``, optional ``test_acc`` and
    ``best`` (bool, drawn with a star), and for a row of several seeds
    ``val_err`` / ``test_err``: the half-width of its 95% CI in points, drawn as
    an error bar.
    """
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(bars) + 2), 4.5))
    xs = np.arange(len(bars))
    width = 0.38
    has_test = any(b.get("test_acc") is not None for b in bars)
    tops: list[float] = []
    errors = any(b.get("val_err") or b.get("test_err") for b in bars)
    for offset, key, colour in ((-width / 2 if has_test else 0, "val_acc", "tab:blue"),
                                (width / 2, "test_acc", "tab:green")):
        if key == "test_acc" and not has_test:
            continue
        heights = [percent(b.get(key)) for b in bars]
        errs = [float(b.get(key.replace("_acc", "_err")) or 0.0) for b in bars]
        rects = ax.bar(xs + offset, [h if h is not None else 0 for h in heights], width if has_test else 0.6,
                       yerr=errs if any(errs) else None, capsize=3, ecolor="black",
                       color=colour, alpha=0.85, label="validation" if key == "val_acc" else "test")
        for rect, h, e, b in zip(rects, heights, errs, bars):
            text = "n/a" if h is None else f"{h:.2f}" + (" ★" if b.get("best") and key == "val_acc" else "")
            ax.annotate(text, (rect.get_x() + rect.get_width() / 2, rect.get_height() + e), ha="center",
                        va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
            if h is not None:
                tops.append(h + e)
    if len(bars) > 5:  # whole labels, wrapped, never cut: bars must be told apart by what differs
        ax.set_xticks(xs, [_wrap(str(b["label"]), 28) for b in bars], fontsize=6, rotation=30, ha="right")
    else:
        ax.set_xticks(xs, [_wrap(str(b["label"]), 18) for b in bars], fontsize=7)
    # bars start at 0: a cut axis makes a 2-point difference look like a 2x one
    ax.set_ylim(0.0, min(105.0 if errors else 100.0, max(tops) * 1.08 + 1) if tops else 100.0)
    ax.set_ylabel("accuracy (%)")
    ax.set_xlabel(axis)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    title = title or f"ablation: {axis}"
    ax.set_title(f"{title}\n({ERROR_BARS})" if errors else title, fontsize=10 if errors else None)
    return _save(fig, path)


def _wrap(text: str, width: int = 16) -> str:
    """Break ``text`` into lines of about ``width`` characters at spaces and commas."""
    parts, line = [], ""
    for token in text.replace(",", ", ").split(" "):
        if line and len(line) + len(token) > width:
            parts.append(line)
            line = ""
        line = f"{line} {token}".strip()
    parts.append(line)
    return "\n".join(parts)


def overlaid_curves(curves: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]], path: Path,
                    title: str | None = None) -> Path:
    """Validation accuracy and loss per epoch of several runs on shared axes.

    ``curves``: {run label: {metric name: [(step, value), ...]}} with metric
    names ``val_acc``, ``val_loss`` (and optionally ``train_loss``, dotted).
    """
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.5))
    cmap = plt.get_cmap("tab10")
    for i, (label, metrics) in enumerate(curves.items()):
        colour = cmap(i % 10)
        short = _wrap(label, 48)  # whole, on more lines: a cut label repeats the prefix all runs share
        acc = sorted(metrics.get("val_acc", []))
        ax_acc.plot([s for s, _ in acc], [100 * v for _, v in acc], "-o", markersize=3, color=colour, label=short)
        loss = sorted(metrics.get("val_loss", []))
        ax_loss.plot([s for s, _ in loss], [v for _, v in loss], "-o", markersize=3, color=colour, label="_" + short)
        train = sorted(metrics.get("train_loss", []))
        if train:
            ax_loss.plot([s for s, _ in train], [v for _, v in train], ":", color=colour, label="_nolegend_")
    ax_acc.set_ylabel("validation accuracy (%)")
    ax_loss.set_ylabel("loss (solid: validation, dotted: train)")
    for ax in (ax_acc, ax_loss):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=7)
    for ax in (ax_acc, ax_loss):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    fig.suptitle(title or "learning curves of the best runs")
    return _save(fig, path)


def optuna_figure(kind: str, study, path: Path, target_name: str = "objective",
                  target: Callable[[Any], float] | None = None) -> Path:
    """Optuna's own matplotlib plot (``history`` or ``importances``) of a study, as a PNG.

    ``target`` picks the value to plot from a FrozenTrial, as Optuna's plot
    functions take it: they refuse a multi-objective study without one.
    """
    import warnings

    import optuna.visualization.matplotlib as ovm

    # Optuna switches the global style to ggplot; the context restores ours afterwards.
    with warnings.catch_warnings(), plt.style.context("default"):
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
        if kind == "history":
            ax = ovm.plot_optimization_history(study, target=target, target_name=target_name)
        elif kind == "importances":
            ax = ovm.plot_param_importances(study, target=target, target_name=target_name)
        else:
            raise ValueError(f"unknown Optuna figure {kind!r}")
    fig = ax.figure if hasattr(ax, "figure") else np.ravel(ax)[0].figure
    fig.set_size_inches(8, 5)
    if kind == "history":  # Optuna plots the complete trials only: say what else the study holds
        trials = study.get_trials(deepcopy=False)
        shown = sum(t.state.name == COMPLETE for t in trials)
        others = {}
        for t in trials:
            if t.state.name != COMPLETE:
                name = INFEASIBLE if t.user_attrs.get(INFEASIBLE) else t.state.name.lower()
                others[name] = others.get(name, 0) + 1
        if others:
            rest = ", ".join(f"{n} {name}" for name, n in sorted(others.items()))
            fig.text(0.01, 0.01, f"{shown} of {len(trials)} trials shown (complete); not shown: {rest}",
                     fontsize=8, color="0.3")
    return _save(fig, path)


def is_png(path: Path) -> bool:
    """A non-empty file with the PNG signature."""
    path = Path(path)
    return path.is_file() and path.stat().st_size > 8 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
