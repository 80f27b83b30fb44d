"""The look every study figure shares: paper-size fonts, editable SVG text, one colour, marker and
line style per arm, the seed count ``n`` with its few-seeds mark, cost axes in the report's units.

Every figure function is wrapped in :func:`styled`, so its artists are made under :data:`RC`;
:func:`save` writes a figure under the same settings (``svg.fonttype: none`` is read when an SVG is
written: text stays ``<text>`` that a researcher can edit for a paper).
"""

from __future__ import annotations

import functools
import math

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.transforms import ScaledTranslation

from ..selection import FEW_SEEDS

PAPER_WIDTH = 7.0           # inches: a two-column paper's full text width; no figure is wider
RC = {
    "svg.fonttype": "none",  # SVG text as <text>, not paths
    "font.size": 8, "axes.titlesize": 8.5, "axes.labelsize": 8, "figure.titlesize": 9,
    "xtick.labelsize": 7.5, "ytick.labelsize": 7.5, "legend.fontsize": 7, "legend.title_fontsize": 7,
    "lines.linewidth": 1.3, "lines.markersize": 4.5, "axes.spines.top": False, "axes.spines.right": False,
    "savefig.dpi": 200,
}
METRIC_RANGE = (0.0, 1.0)   # every retrieval metric dmltune reports (Recall@K, MAP@R, R-precision, NMI)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
LINESTYLES = ("-", "--", "-.", ":")
FEW_MARK = "†"
FEW_NOTE = f"{FEW_MARK} n < {FEW_SEEDS} seeds: interval unreliable (none for n = 1)"


def styled(draw):
    """Run a figure function under :data:`RC` (fonts and sizes are fixed when an artist is made)."""
    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(RC):
            return draw(*args, **kwargs)
    return wrapper


def save(fig: Figure, path, fmt: str | None = None) -> None:
    """Write ``fig`` to ``path`` under :data:`RC` (editable SVG text, the PNG's resolution) through a
    partial file, so a failed write leaves any earlier file whole; ``fmt`` defaults to the suffix."""
    from pathlib import Path

    from ...atomic import replacing

    path = Path(path)
    with matplotlib.rc_context(RC), replacing(path) as partial:
        fig.savefig(partial, format=fmt or path.suffix.lstrip(".").lower())


def new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(min(width, PAPER_WIDTH), height), layout="constrained")


def grid(n: int, panel_width: float, panel_height: float, *, cols: int | None = None, sharey: bool = False):
    """A figure of ``n`` panels no wider than the page, in as few rows as fit with no empty panel
    where that is possible (4 panels: 2 × 2, not 3 + 1). Returns the figure and its ``n`` axes."""
    most = max(1, int(PAPER_WIDTH // panel_width))
    if cols is None:
        rows = math.ceil(n / most)
        cols = math.ceil(n / rows)
    rows = math.ceil(n / cols)
    fig = new_figure(panel_width * cols, panel_height * rows)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=sharey).ravel()
    for ax in axes[n:]:
        ax.remove()
    return fig, list(axes[:n])


def arm_styles(arms: list[str]) -> dict[str, dict]:
    """Per arm: colour, marker and line style, so arms stay apart in greyscale and where they overlap."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {arm: {"color": cmap(i % 10), "marker": MARKERS[i % len(MARKERS)],
                  "linestyle": LINESTYLES[i % len(LINESTYLES)]} for i, arm in enumerate(arms)}


def epoch_axis(ax) -> None:
    """An x-axis of epochs: integer ticks, labelled."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")


def few(n) -> bool:
    try:
        return 0 < float(n) < FEW_SEEDS
    except (TypeError, ValueError):
        return False


def n_text(n) -> str:
    """``n = 8``; ``n = 2†`` below :data:`FEW_SEEDS` seeds."""
    if n is None or (isinstance(n, float) and not math.isfinite(n)):
        return "n = 0"
    return f"n = {int(n)}" + (FEW_MARK if few(n) else "")


def mark_few_seeds(fig: Figure, counts) -> None:
    """The footnote that explains :data:`FEW_MARK`, when any count is below :data:`FEW_SEEDS` (figures
    without a figure legend; :func:`figure_legend` carries it otherwise)."""
    if any(few(n) for n in counts):
        fig.supxlabel(FEW_NOTE, fontsize=7, color="0.3")


def figure_legend(fig: Figure, handles: list, labels: list[str], counts, ncols: int = 1):
    """One legend under the panels; its last line explains :data:`FEW_MARK` when any count is below
    :data:`FEW_SEEDS` (a footnote beside an outside legend would sit on it). None when empty."""
    from matplotlib.lines import Line2D

    handles, labels = list(handles), list(labels)
    if any(few(n) for n in counts):
        handles.append(Line2D([], [], linestyle="none"))
        labels.append(FEW_NOTE)
    if not labels:
        return None
    if max(map(len, labels)) > 55:
        ncols = 1
    return fig.legend(handles, labels, loc="outside lower center", ncols=min(ncols, len(labels)), frameon=False)


def cost_scale(hours) -> tuple[float, str]:
    """(factor from hours, unit) for an axis of costs: the report's rule (formatting.cost), the largest
    of h, min and s in which the largest cost is at least 1; seconds for the short studies."""
    v = np.asarray([h for h in np.ravel(hours) if h is not None and np.isfinite(h)], dtype=float)
    top = float(np.abs(v).max()) if v.size else 0.0
    if top >= 1:
        return 1.0, "h"
    if top * 60 >= 1:
        return 60.0, "min"
    return 3600.0, "s"


def metric_name(column: str) -> str:
    return column.split("/", 1)[1]


def metric_limits(values, margin: float = 0.05) -> tuple[float, float]:
    """Axis limits around the finite values, padded, and never outside the metric's range."""
    lo_range, hi_range = METRIC_RANGE
    v = np.asarray([x for x in np.ravel(values) if x is not None and np.isfinite(x)], dtype=float)
    v = np.clip(v, lo_range, hi_range)
    if v.size == 0:
        return METRIC_RANGE
    lo, hi = float(v.min()), float(v.max())
    pad = max((hi - lo) * margin, 0.01)
    return max(lo_range, lo - pad), min(hi_range, hi + pad)


def clipped_error(mean: float, low: float, high: float) -> list[list[float]]:
    """Error-bar lengths from mean to [low, high], clipped to the metric's range (0 where unknown)."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return [[0.0], [0.0]]
    lo, hi = METRIC_RANGE
    return [[max(0.0, mean - max(lo, low))], [max(0.0, min(hi, high) - mean)]]


def dodge(ax, i: int, k: int, points: float = 6.0):
    """A transform that shifts the i-th of k series sideways by a few points (its data unchanged), so
    error bars at the same x stay apart."""
    shift = (i - (k - 1) / 2) * points / 72
    return ax.transData + ScaledTranslation(shift, 0, ax.figure.dpi_scale_trans)
