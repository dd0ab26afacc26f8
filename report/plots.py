"""Report figures: pure drawing functions (data in, PNG file out) on matplotlib's Agg backend.

Each function takes plain numbers, draws one figure, writes it atomically and closes it; none of
them reads run folders (that is `records.py` and `run_report.py`). Colours follow the variant
order, so a variant has the same colour in every figure.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from ssl_bf.atomic_write import write_figure  # noqa: E402
from ssl_bf.run_layout import Owner  # noqa: E402

DPI = 120


def variant_colors(n: int) -> list:
    """n distinct colours, stable in order (tab10, then tab20 beyond 10 variants)."""
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def save_figure(fig, path: str) -> None:
    """Write `fig` as PNG (through the output guard, atomically), then close it."""
    try:
        write_figure(fig, path, option="the report image", owner=Owner.REPORT, dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)


def plot_curves(series: Sequence[dict], path: str, *, title: str, xlabel: str, ylabel: str,
                markers: bool = False, band: bool = True, integer_x: bool = False) -> None:
    """One line per series.

    Args:
        series: [{'label', 'x', 'mean', optional 'low'/'high' (band), 'n', 'color'}], x ascending.
        markers: draw a marker at every point (sparse curves such as per-epoch k-NN).
        band: shade low..high where given (min..max over seeds).
        integer_x: integer ticks on x (epochs), the axis starting at 0.
    """
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for s, default in zip(series, variant_colors(len(series))):
        color = s.get("color", default)
        x, y = np.asarray(s["x"], float), np.asarray(s["mean"], float)
        label = s["label"] + (f" (n={s['n']})" if s.get("n", 1) > 1 else "")
        ax.plot(x, y, color=color, label=label, marker="o" if markers or len(x) == 1 else None,
                markersize=4, linewidth=1.4)
        if band and s.get("low") is not None and s.get("high") is not None:
            ax.fill_between(x, s["low"], s["high"], color=color, alpha=0.15, linewidth=0)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    right = max((max(s["x"]) for s in series if len(s["x"])), default=1.0)
    ax.set_xlim(-0.05 * max(right, 1.0) if integer_x else 0.0, max(right, 1.0) * 1.05 if integer_x else None)
    if integer_x:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    if series:
        ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_ablation_bars(metrics: Sequence[str], variants: Sequence[str], means: np.ndarray, stds: np.ndarray,
                       path: str, *, anchors: Optional[dict[int, tuple[float, str]]] = None,
                       colors: Optional[Sequence] = None, title: str = "ablation") -> None:
    """Grouped bars: one group per metric, one bar per variant, error bars = std over seeds.

    Args:
        means, stds: (n_metrics, n_variants); NaN mean = no bar, NaN std = no error bar (one seed).
        anchors: {metric index: (value, label)} drawn as a dashed line across that metric's group.
        colors: one per variant (default: `variant_colors`).
    """
    means, stds = np.asarray(means, float), np.asarray(stds, float)
    n_m, n_v = means.shape
    width = 0.8 / max(n_v, 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 + n_m * (0.35 * n_v + 0.6)), 4.8))
    for j, (name, color) in enumerate(zip(variants, colors or variant_colors(n_v))):
        x = np.arange(n_m) - 0.4 + width * (j + 0.5)
        ax.bar(x, np.nan_to_num(means[:, j], nan=0.0), width, color=color, label=name)
        has_err = np.isfinite(stds[:, j]) & np.isfinite(means[:, j])
        if has_err.any():  # no error bar at all for a single seed
            ax.errorbar(x[has_err], means[has_err, j], yerr=stds[has_err, j], fmt="none", ecolor="black",
                        capsize=3, linewidth=1)
    anchor_labelled = False
    for i, (value, label) in (anchors or {}).items():
        ax.hlines(value, i - 0.45, i + 0.45, colors="black", linestyles="dashed", linewidth=1.2,
                  label=None if anchor_labelled else label)
        ax.annotate(f"{value:.2f}", (i + 0.45, value), fontsize=7, va="bottom", ha="right")
        anchor_labelled = True
    finite = means[np.isfinite(means)]
    if finite.size:  # accuracies sit in a narrow band: start the axis near the lowest bar
        low_values = [*(means - np.nan_to_num(stds))[np.isfinite(means)].tolist(),
                      *(v for v, _ in (anchors or {}).values())]
        bottom = max(0.0, 5 * math.floor((min(low_values) - 3) / 5))
        top = max([*(means + np.nan_to_num(stds))[np.isfinite(means)].tolist(),
                   *(v for v, _ in (anchors or {}).values())])
        ax.set_ylim(bottom, min(100.0, top + 0.08 * (top - bottom) + 1))
    ax.set_xticks(np.arange(n_m), metrics, fontsize=8)
    ax.set(title=title, ylabel="top-1 accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if n_v > 4 else 1, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save_figure(fig, path)


def plot_embedding_maps(maps: Sequence[dict], path: str, *, class_names: Optional[Sequence[str]] = None,
                        title: str = "test embeddings (t-SNE)") -> None:
    """One scatter subplot per map, points coloured by class, one shared legend.

    Args:
        maps: [{'label', optional 'title' (default: the label), 'xy' (N, 2), 'labels' (N,) int}].
        class_names: names of labels 0..C-1 (else the label numbers).
    """
    n = len(maps)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.0 * rows), squeeze=False)
    num_classes = 1 + max(int(np.max(m["labels"])) for m in maps)
    cmap = plt.get_cmap("tab10" if num_classes <= 10 else "tab20")
    for ax, m in zip(axes.flat, maps):
        labels = np.asarray(m["labels"])
        ax.scatter(m["xy"][:, 0], m["xy"][:, 1], c=[cmap(int(c) % cmap.N) for c in labels], s=4,
                   linewidths=0, alpha=0.8)
        ax.set_title(m.get("title", m["label"]), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if num_classes <= 20:
        names = list(class_names) if class_names else [str(c) for c in range(num_classes)]
        handles = [plt.Line2D([], [], linestyle="", marker="o", markersize=6, color=cmap(c % cmap.N))
                   for c in range(num_classes)]
        fig.legend(handles, names[:num_classes], loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
