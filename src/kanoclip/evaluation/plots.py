"""The report's plots as PNG bytes (matplotlib, as the field's tools draw them): ROC and PR curves, score histograms
with thresholds, few-shot metrics with error bars over seeds, the defect-typing confusion matrix.

Figures are made with `matplotlib.figure.Figure` and the Agg canvas, never pyplot: no global state, no display, safe
in a server's threads.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from numpy.typing import NDArray

from kanoclip.evaluation.metrics import CurvePoints

SIZE = (4.2, 3.3)  # inches, at DPI: about 420 x 330 pixels
DPI = 100
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")


def roc_png(curves: Mapping[str, CurvePoints], title: str) -> bytes:
    """ROC curves (e.g. image and pixel level) with each AUROC in the legend."""
    fig, ax = _figure(title)
    for (name, c), colour in zip(curves.items(), COLOURS, strict=False):
        ax.plot(c.fpr, c.tpr, color=colour, lw=1.6, label=f"{name}: AUROC {100 * c.auroc:.1f}")
    ax.plot([0, 1], [0, 1], color="#999", lw=0.8, ls="--", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def pr_png(curves: Mapping[str, CurvePoints], title: str) -> bytes:
    """Precision-recall curves with each AP in the legend, and the chance level (the positive rate) for reading."""
    fig, ax = _figure(title)
    for (name, c), colour in zip(curves.items(), COLOURS, strict=False):
        ax.plot(c.recall, c.precision, color=colour, lw=1.6, label=f"{name}: AP {100 * c.ap:.1f}")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower left", fontsize=8)
    return _png(fig)


def histogram_png(
    groups: Mapping[str, NDArray[np.floating]], lines: Mapping[str, float | None], title: str, xlabel: str = "score"
) -> bytes:
    """Overlaid histograms of scores (e.g. normal vs anomalous) on shared bins, each threshold a labelled line."""
    fig, ax = _figure(title)
    values = [np.asarray(v, dtype=np.float64) for v in groups.values() if len(v)]
    edges = np.histogram_bin_edges(np.concatenate(values) if values else np.zeros(1), bins=30)
    for (name, v), colour in zip(groups.items(), COLOURS, strict=False):
        if len(v):
            ax.hist(v, bins=list(edges), color=colour, alpha=0.55, label=f"{name} ({len(v)})")
    drawn = [(k, v) for k, v in lines.items() if v is not None]
    for (name, value), style in zip(drawn, ("-", "--", ":", "-."), strict=False):
        ax.axvline(value, color="black", ls=style, lw=1.2, label=f"{name} {value:.4g}")
    ax.set(xlabel=xlabel, ylabel="images")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    return _png(fig)


def seeds_png(per_seed: Sequence[Mapping[str, float]], columns: Sequence[tuple[str, str]], title: str) -> bytes:
    """Few-shot: each metric's mean over seeds as a bar with ± one standard deviation, and each seed as a dot."""
    fig, ax = _figure(title)
    shown = [(key, label) for key, label in columns if not all(math.isnan(m[key]) for m in per_seed)]
    x = np.arange(len(shown))
    values = np.array([[100 * m[key] for key, _ in shown] for m in per_seed])  # (seeds, metrics)
    ax.bar(x, np.nanmean(values, axis=0), yerr=np.nanstd(values, axis=0), capsize=4, color="#9ecae1")
    for row in values:
        ax.plot(x, row, "o", color="#08519c", ms=3)
    ax.set_xticks(x, [label for _, label in shown], rotation=45, ha="right", fontsize=8)
    ax.set(ylabel=f"% (mean ± std over {len(per_seed)} seeds)", ylim=(0, 100))
    return _png(fig)


def confusion_png(matrix: NDArray[np.integer], rows: Sequence[str], columns: Sequence[str], title: str) -> bytes:
    """A confusion matrix as a heatmap: true types down, predicted across, each cell its count, coloured by the
    fraction of its row (the row's recall on the diagonal), so a rare type reads as clearly as a common one."""
    counts = np.asarray(matrix)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    width = max(SIZE[0], 1.6 + 0.55 * len(columns))
    fig, ax = _figure(title, (width, max(SIZE[1], 1.4 + 0.45 * len(rows))))
    ax.grid(False)
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for (i, j), n in np.ndenumerate(counts):
        ax.text(j, i, str(n), ha="center", va="center", fontsize=8, color="white" if shares[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(columns)), list(columns), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), list(rows), fontsize=8)
    ax.set(xlabel="predicted type", ylabel="true type")
    fig.colorbar(image, ax=ax, label="share of the row")
    return _png(fig)


def _figure(title: str, size: tuple[float, float] = SIZE) -> tuple[Figure, Axes]:
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    return fig, ax


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
