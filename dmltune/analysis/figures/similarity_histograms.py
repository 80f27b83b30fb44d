"""Cosine similarities of positive and negative validation pairs at the last evaluation of each
arm's selected trials (share of pairs per bin, mean over seeds)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..compare import Analysis
from . import style
from .tables import StudyFacts, facts

NAME = "similarity_histograms"
HIST = re.compile(r"^val_simhist/(pos|neg)/(\d+)$")
COLUMNS = ["arm", "pairs", "bin_low", "bin_high", "share", "n"]
LOOK = {"pos": ("tab:green", "positive pairs (filled)"), "neg": ("tab:red", "negative pairs (outline)")}


def data(analysis: Analysis) -> pd.DataFrame:
    """Tidy: ``arm, pairs ("pos"/"neg"), bin_low, bin_high, share, n`` — the share of pairs per
    similarity bin over [−1, 1], averaged over the n seeds of the arm's selected trials."""
    columns = [c for c in analysis.table.per_epoch.columns if HIST.match(c)]
    frames = []
    for arm in analysis.table.arms:
        chosen = analysis.selections[arm].trials
        if chosen.empty or not chosen.reindex(columns=columns).notna().any(axis=None):
            continue
        for kind in ("pos", "neg"):
            cols = sorted((c for c in columns if HIST.match(c)[1] == kind), key=lambda c: int(HIST.match(c)[2]))
            by_seed = chosen.groupby("seed")[cols].mean()
            edges = np.linspace(-1, 1, len(cols) + 1)
            frames.append(pd.DataFrame({"arm": arm, "pairs": kind, "bin_low": edges[:-1], "bin_high": edges[1:],
                                        "share": by_seed.mean().to_numpy(dtype=float), "n": len(by_seed)}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


@style.styled
def draw(table: pd.DataFrame, f: StudyFacts) -> Figure | None:
    if table.empty:
        return None
    arms = [a for a in f.arms if a in set(table.arm)]
    fig, axes = style.grid(len(arms), 3.4, 2.5, sharey=True)
    for ax, arm in zip(axes, arms):
        rows = table[table.arm == arm]
        for kind in ("pos", "neg"):
            r = rows[rows.pairs == kind]
            colour, label = LOOK[kind]
            edges = np.concatenate([r.bin_low.to_numpy(dtype=float), r.bin_high.to_numpy(dtype=float)[-1:]])
            if kind == "pos":
                ax.stairs(r.share.to_numpy(dtype=float), edges, color=colour, fill=True, alpha=0.3, label=label)
            else:
                ax.stairs(r.share.to_numpy(dtype=float), edges, color=colour, linewidth=1.4, label=label)
        ax.set_title(f"{arm} ({style.n_text(int(rows.n.max()))} seeds)")
        ax.set_xlabel("cosine similarity")
        ax.set_xlim(-1, 1)
        ax.set_xticks([-1, -0.5, 0, 0.5, 1])
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel("share of pairs")
    handles, labels = axes[0].get_legend_handles_labels()
    style.figure_legend(fig, handles, labels, table.n, ncols=2)
    fig.suptitle("Validation pair similarities at the last evaluation (mean over seeds; same y-scale in every panel)")
    return fig


def figure(analysis: Analysis) -> Figure | None:
    return draw(data(analysis), facts(analysis))


def caption(analysis: Analysis) -> str:
    return ("Cosine similarities of positive (green, filled) and negative (red, outline) validation pairs at the last "
            "evaluation of each arm's selected trials: the share of pairs per bin, averaged over the n seeds in each "
            "panel's title († marks n < 3); every panel has the same y-scale. Less overlap means easier retrieval. "
            "No interval is drawn: the spread over seeds is in trials.parquet (val_simhist/… columns).")
