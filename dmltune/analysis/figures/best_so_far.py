"""Expected best validation value against budget (the headline curve of :mod:`..expected_best_curve`).

Searched arms: the expected seed-mean value of the configuration a search of n trials selects
(cross-fitted), at the expected cost of n trials, with its band. Single-configuration arms: one point
at the cost of one run. Bands and bars are the bootstrap percentile intervals over seeds of
``tables/expected_best.csv``, the same numbers, in the report's cost unit."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..compare import Analysis
from . import style
from .tables import StudyFacts, facts

NAME = "best_so_far"


def data(analysis: Analysis) -> pd.DataFrame:
    """Tidy: the rows of ``analysis.expected_best`` (``arm, trials, cost_h, expected_best, low, high,
    seeds, note``) with ``kind`` "search" or "single"; a single configuration's first row only."""
    eb = analysis.expected_best
    if eb.empty:
        return eb.assign(kind=pd.Series(dtype=str))
    kind = eb.arm.map(lambda arm: "search" if analysis.table.dims[arm] else "single")
    eb = eb.assign(kind=kind)
    return eb[(eb.kind == "search") | (eb.trials == 1)].reset_index(drop=True)


def _why(note) -> str:
    return note.split(":")[0] if isinstance(note, str) and note else "not estimable"


@style.styled
def draw(table: pd.DataFrame, f: StudyFacts) -> Figure | None:
    if table.empty:
        return None
    looks = style.arm_styles(f.arms)
    factor, unit = style.cost_scale(table.cost_h.to_numpy(dtype=float))
    fig = style.new_figure(style.PAPER_WIDTH, 4.0)
    ax = fig.subplots()
    shown, counts = [], []
    drawn = [arm for arm in f.arms if ((table.arm == arm) & table.expected_best.notna()).any()]
    for arm in [a for a in f.arms if a in set(table.arm)]:
        rows = table[table.arm == arm]
        look = looks[arm]
        seeds = int(rows.seeds.iloc[0])
        counts.append(seeds)
        x = rows.cost_h.to_numpy(dtype=float) * factor
        y, low, high = (rows[c].to_numpy(dtype=float) for c in ("expected_best", "low", "high"))
        no_band = not np.isfinite(low).any()
        suffix = f"{style.n_text(seeds)} seeds" + (", no interval" if no_band and np.isfinite(y).any() else "")
        if not np.isfinite(y).any():
            why = _why(rows.note.iloc[0])
            ax.plot([], [], color=look["color"], ls=":",
                    label=f"{arm}: no held-out estimate ({why}; {style.n_text(seeds)} seeds)")
        elif rows.kind.iloc[0] == "search":
            shift = style.dodge(ax, drawn.index(arm), len(drawn))
            ax.plot(x, y, color=look["color"], marker=look["marker"], linestyle=look["linestyle"],
                    label=f"{arm}: search of n trials ({suffix})", clip_on=False, transform=shift)
            if not no_band:
                ax.fill_between(x, np.clip(low, *style.METRIC_RANGE), np.clip(high, *style.METRIC_RANGE),
                                color=look["color"], alpha=0.15, linewidth=0, transform=shift)
            shown += [*y, *low, *high]
        else:
            ax.errorbar(x[:1], y[:1], yerr=style.clipped_error(y[0], low[0], high[0]), fmt=look["marker"],
                        color=look["color"], capsize=3, transform=style.dodge(ax, drawn.index(arm), len(drawn)),
                        clip_on=False,
                        label=f"{arm}: single configuration, one run ({suffix})")
            shown += [y[0], low[0], high[0]]
    if math.isfinite(f.target):
        ax.axhline(f.target, color="grey", ls="--", lw=1,
                   label=f"{f.reference} mean − δ ({f.target:.4f}): orientation only, the verdicts decide")
        shown.append(f.target)
    ax.set_ylim(*style.metric_limits(shown))
    top = np.nanmax(table.cost_h.to_numpy(dtype=float)) * factor if table.cost_h.notna().any() else 1.0
    ax.set_xlim(0, top * 1.06 if top > 0 else 1.0)
    ax.set_xlabel(f"expected {f.cost_kind} spent ({unit}): n trials × mean cost of a trial")
    ax.set_ylabel(f"seed-mean validation {style.metric_name(f.metric)}\nof the selected configuration")
    ax.set_title(f"Expected best validation value against budget\nband and bars: {f.bootstrap_interval()}")
    style.figure_legend(fig, *ax.get_legend_handles_labels(), counts, ncols=2)
    return fig


def figure(analysis: Analysis) -> Figure | None:
    return draw(data(analysis), facts(analysis))


def caption(analysis: Analysis) -> str:
    f = facts(analysis)
    return ("Expected seed-mean validation value of the configuration a search of n trials selects, estimated on "
            "held-out seeds (selected on one seed, measured on the others), against the expected cost of n "
            "trials (n × the arm's mean cost of a trial, in the report's unit). Band and bars: the "
            f"{f.bootstrap_interval()}, the same numbers as tables/expected_best.csv. Single-configuration arms "
            "are one point at the cost of one run (points at the same cost are set a few points apart sideways; "
            "their x is unchanged). Arms whose curve cannot be estimated (one search per seed, PBT, fewer than two "
            "seeds) are named in the legend without a curve; with two seeds there is no interval. n: seeds; "
            "† marks n < 3. The dashed line is the reference mean − δ, for orientation only: whether an arm "
            "matches is its verdict.")
