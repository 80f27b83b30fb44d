"""Validation metric per epoch of each arm's selected configuration: the mean over seeds with its
Student-t band, one panel per arm (the view experiment trackers show), the reference dashed in every
panel for comparison."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ..compare import Analysis
from . import style
from .tables import StudyFacts, epoch_bands, facts

NAME = "validation_curves"


def data(analysis: Analysis) -> pd.DataFrame:
    """Tidy: ``arm, epoch, mean, low, high, n`` of the validation metric at every evaluated epoch, over
    the seeds of each arm's selected (usable) trials."""
    return epoch_bands(analysis, analysis.table.metric)


@style.styled
def draw(table: pd.DataFrame, f: StudyFacts) -> Figure | None:
    if table.empty:
        return None
    looks = style.arm_styles(f.arms)
    arms = [a for a in f.arms if a in set(table.arm)]
    fig, axes = style.grid(len(arms), 3.4, 2.4, sharey=True)
    reference = table[table.arm == f.reference].sort_values("epoch")
    values = [*table["mean"], *table.low, *table.high]
    for ax, arm in zip(axes, arms):
        r = table[table.arm == arm].sort_values("epoch")
        look, x = looks[arm], r.epoch.to_numpy(dtype=float)
        low, high = r.low.to_numpy(dtype=float), r.high.to_numpy(dtype=float)
        if np.isfinite(low).any():
            ax.fill_between(x, np.clip(low, *style.METRIC_RANGE), np.clip(high, *style.METRIC_RANGE),
                            color=look["color"], alpha=0.2, linewidth=0)
        ax.plot(x, r["mean"], color=look["color"], marker=look["marker"], clip_on=False)
        if arm != f.reference and not reference.empty:
            ax.plot(reference.epoch, reference["mean"], color="grey", linestyle="--", linewidth=1)
        n = r.n.to_numpy(dtype=int)
        counts = style.n_text(n.max()) if n.min() == n.max() else f"n = {n.min()}–{n.max()}" + (
            style.FEW_MARK if style.few(n.min()) else "")
        ax.set_title(f"{arm} ({counts} seeds)")
        style.epoch_axis(ax)
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel(f"validation {style.metric_name(f.metric)}")
        ax.margins(x=0.04)
    low, high = style.metric_limits(values)
    axes[0].set_ylim(low, high if high > low else low + 0.01)
    if math.isfinite(f.target):
        for ax in axes:
            ax.axhline(f.target, color="0.6", linestyle=":", linewidth=0.8)
    key = [Line2D([], [], color="0.3", marker="o", label="mean over seeds"),
           Patch(color="0.3", alpha=0.2, label=f"band: {f.t_interval()}"),
           Line2D([], [], color="grey", linestyle="--", linewidth=1, label=f"{f.reference} (reference) mean")]
    if math.isfinite(f.target):
        key.append(Line2D([], [], color="0.6", linestyle=":", linewidth=0.8, label=f"{f.reference} mean − δ"))
    style.figure_legend(fig, key, [h.get_label() for h in key], table.n, ncols=2)
    fig.suptitle(f"Validation {style.metric_name(f.metric)} per epoch (selected configuration; band: {f.t_interval()})")
    return fig


def figure(analysis: Analysis) -> Figure | None:
    return draw(data(analysis), facts(analysis))


def caption(analysis: Analysis) -> str:
    f = facts(analysis)
    return (f"Validation {style.metric_name(f.metric)} at every evaluated epoch of each arm's selected configuration: "
            f"the mean over its usable seeds (n in each panel's title; † marks n < 3) with a band, the "
            f"{f.t_interval()} (no band for n = 1). The reference arm's mean is dashed in every other panel; the "
            "dotted line is the reference mean − δ. Diverged and errored seeds have no curve here (the report "
            "counts them at the failure value).")
