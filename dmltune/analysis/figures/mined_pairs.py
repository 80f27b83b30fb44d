"""Positive and negative pairs the miner keeps per batch, per epoch (as DDTAS's Fig. 4), with their
spread over seeds."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..compare import Analysis
from . import style
from .tables import StudyFacts, epoch_bands, facts

NAME = "mined_pairs"
PANELS = {"pos_after": "mined positive pairs per batch", "neg_after": "mined negative pairs per batch"}
LINEAR_BELOW = 1.0   # the symmetric-log axis is linear in [−1, 1] (0 pairs can be drawn)


def data(analysis: Analysis) -> pd.DataFrame:
    """Tidy: ``column, arm, epoch, mean, low, high, n`` over the seeds of each arm's selected trials."""
    frames = [epoch_bands(analysis, c).assign(column=c) for c in PANELS]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=["column", "arm", "epoch", "mean", "low", "high", "n"])
    return pd.concat(frames, ignore_index=True)[["column", "arm", "epoch", "mean", "low", "high", "n"]]


@style.styled
def draw(table: pd.DataFrame, f: StudyFacts) -> Figure | None:
    if table.empty:
        return None
    looks = style.arm_styles(f.arms)
    panels = [c for c in PANELS if c in set(table.column)]
    fig, axes = style.grid(len(panels), 3.5, 3.0)
    for ax, column in zip(axes, panels):
        rows = table[table.column == column]
        for arm in (a for a in f.arms if a in set(rows.arm)):
            r = rows[rows.arm == arm].sort_values("epoch")
            look, x = looks[arm], r.epoch.to_numpy(dtype=float)
            ax.plot(x, r["mean"], color=look["color"], linestyle=look["linestyle"], marker=look["marker"],
                    label=f"{arm} ({style.n_text(int(r.n.max()))})", clip_on=False)
            low, high = r.low.to_numpy(dtype=float), r.high.to_numpy(dtype=float)
            if np.isfinite(low).any():
                ax.fill_between(x, np.clip(low, 0, None), high, color=look["color"], alpha=0.12, linewidth=0)
        ax.set_yscale("symlog", linthresh=LINEAR_BELOW)
        ax.set_ylim(bottom=0)
        style.epoch_axis(ax)
        ax.set_ylabel(f"{PANELS[column]}\n(symmetric log scale, linear below {LINEAR_BELOW:g})")
        ax.margins(x=0.04)
    shown = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            shown.setdefault(label, handle)
    style.figure_legend(fig, list(shown.values()), list(shown), table.n, ncols=3)
    fig.suptitle(f"Pairs kept by the miner per batch (selected configuration; mean, band: {f.t_interval()})")
    return fig


def figure(analysis: Analysis) -> Figure | None:
    return draw(data(analysis), facts(analysis))


def caption(analysis: Analysis) -> str:
    f = facts(analysis)
    return ("Positive and negative pairs the miner keeps per batch, per epoch, for each arm's selected configuration "
            f"(as in DDTAS's Fig. 4): the mean over its n seeds (legend; † marks n < 3) with a band, the "
            f"{f.t_interval()} (cut at 0). The y-axis is a symmetric log scale, linear below 1 so that epochs with "
            "no mined pair can be drawn.")
