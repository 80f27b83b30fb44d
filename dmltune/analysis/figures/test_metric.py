"""Test metric of each arm's selected configuration: mean over seeds with its Student-t interval."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from ..compare import Analysis
from . import style
from .tables import StudyFacts, facts

NAME = "test_metric"


def data(analysis: Analysis) -> pd.DataFrame:
    """Tidy: ``arm, mean, low, high, n, reference`` — the test metric at the configuration selected
    on validation, over seeds, with the report's Student-t interval (NaN bounds for n < 2)."""
    s = analysis.summary
    half = s.test_half.astype(float)
    return pd.DataFrame({"arm": s.arm, "mean": s.test.astype(float), "low": s.test - half, "high": s.test + half,
                         "n": s.seeds.astype(int), "reference": s.arm == analysis.reference}).reset_index(drop=True)


@style.styled
def draw(table: pd.DataFrame, f: StudyFacts) -> Figure | None:
    if table["mean"].notna().sum() == 0:
        return None
    looks = style.arm_styles(f.arms)
    fig = style.new_figure(style.PAPER_WIDTH, 0.42 * len(table) + 1.3)
    ax = fig.subplots()
    values = blended_transform_factory(ax.transAxes, ax.transData)
    shown = []
    for i, row in enumerate(table.itertuples()):
        if not np.isfinite(row.mean):
            ax.text(1.02, i, "no finished test value", transform=values, va="center", fontsize=7)
            continue
        look = looks.get(row.arm, {"color": "black", "marker": "o"})
        ax.errorbar([row.mean], [i], xerr=style.clipped_error(row.mean, row.low, row.high),
                    fmt="s" if row.reference else look["marker"], color=look["color"], capsize=3, clip_on=False)
        interval = (f" [{max(row.low, 0):.4f}, {min(row.high, 1):.4f}]" if np.isfinite(row.low)
                    else " (no interval)")
        ax.text(1.02, i, f"{row.mean:.4f}{interval}", transform=values, va="center", fontsize=7)
        shown += [row.mean, row.low, row.high]
    low, high = style.metric_limits(shown)
    ax.set_xlim(low, high)
    ax.set_ylim(len(table) - 0.5, -0.5)
    ax.set_yticks(range(len(table)), [f"{a}{' (reference)' if r else ''} ({style.n_text(n)})"
                                      for a, r, n in zip(table.arm, table.reference, table.n)])
    ax.set_xlabel(f"test {style.metric_name(f.test_metric)} at the configuration selected on validation\n"
                  f"(mean over seeds, bars: {f.t_interval()}, clipped to [0, 1])")
    style.mark_few_seeds(fig, table.n)
    return fig


def figure(analysis: Analysis) -> Figure | None:
    return draw(data(analysis), facts(analysis))


def caption(analysis: Analysis) -> str:
    f = facts(analysis)
    return ("Test metric at the configuration selected on validation: the mean over n seeds (beside each arm; "
            f"† marks n < 3) with its {f.t_interval()}, the same interval as the report's tables, clipped to "
            "the metric's range; the numbers on the right are the mean and the interval's bounds. An arm with "
            "one seed has no interval and no bar. The reference is the square.")
