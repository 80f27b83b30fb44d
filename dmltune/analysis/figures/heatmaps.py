"""Validation mean over each searched arm's grid, every cell with its interval and seed count, the
cells the verdict leaves undecided hatched, on a colour scale no finer than the seed noise."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from ..compare import Analysis
from ..selection import configurations
from ..trials import short_name
from ..tuning_cost import cells
from ..selection import arm_seeds
from . import style
from .tables import StudyFacts, facts

NAME = "heatmaps"
COLUMNS = ["arm", "row_param", "row_value", "col_param", "col_value", "mean", "low", "high", "n", "decision"]
MATCHES, SHORT, UNDECIDED = "shown to match", "shown short", "undecided"


def _decisions(analysis: Analysis, arm: str) -> dict[str, str]:
    """Configuration key → what the arm's verdict shows about it: reaching the reference − δ (its
    simultaneous lower bound ≥ −δ), falling short (upper bound < −δ), or neither; {} when the verdict
    has no per-configuration bounds for these configurations."""
    verdict = analysis.verdicts.get(arm)
    st = analysis.table
    keys = cells(st, arm, arm_seeds(st, arm), analysis.settings["failure_value"]).keys
    if verdict is None or len(verdict.lower) != len(keys):
        return {}
    delta = analysis.settings["delta"]
    out = {}
    for key, low, high in zip(keys, verdict.lower, verdict.upper):
        out[key] = MATCHES if low >= -delta else SHORT if high < -delta else UNDECIDED
    return out


def data(analysis: Analysis) -> pd.DataFrame:
    """Tidy: one row per grid cell of every searched arm but the reference (parameters beyond the
    first two at their best value): ``arm, row_param, row_value, col_param, col_value, mean, low,
    high, n, decision`` — the validation mean over seeds with its Student-t interval."""
    st, s = analysis.table, analysis.settings
    frames = []
    for arm in (a for a in analysis.searched_arms if a != analysis.reference):
        dims = st.dims[arm]
        table = configurations(st, arm, s["confidence"], s["failure_value"])
        if table.empty:
            continue
        decided = _decisions(analysis, arm)
        row_dim, col_dim = dims[0], (dims[1] if len(dims) > 1 else None)
        table = table.sort_values("val_mean", ascending=False, na_position="last", kind="stable")
        table = table.drop_duplicates([row_dim] + ([col_dim] if col_dim else []))
        frames.append(pd.DataFrame({
            "arm": arm, "row_param": short_name(row_dim), "row_value": table[row_dim].to_numpy(),
            "col_param": short_name(col_dim) if col_dim else "",
            "col_value": table[col_dim].to_numpy() if col_dim else "",
            "mean": table.val_mean.to_numpy(dtype=float),
            "low": (table.val_mean - table.val_half).to_numpy(dtype=float),
            "high": (table.val_mean + table.val_half).to_numpy(dtype=float), "n": table.val_n.to_numpy(dtype=int),
            "decision": table._key.map(lambda k: decided.get(k, "")).to_numpy()}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def _tick(value) -> str:
    return f"{value:g}" if isinstance(value, (float, np.floating)) else str(value)


def colour_range(means, halves, reference: float = math.nan) -> tuple[float, float]:
    """Colour limits around the cell means (and the reference) that span at least the median interval
    width, so two cells within seed noise of each other get nearly the same colour."""
    values = [v for v in [*means, reference] if np.isfinite(v)]
    if not values:
        return 0.0, 1.0
    lo, hi = min(values), max(values)
    widths = [2 * h for h in halves if np.isfinite(h)]
    span = max(hi - lo, float(np.median(widths)) if widths else 0.0, 1e-6)
    mid = (lo + hi) / 2
    return mid - span / 2, mid + span / 2


@style.styled
def draw(table: pd.DataFrame, f: StudyFacts) -> Figure | None:
    if table.empty:
        return None
    arms = [a for a in f.arms if a in set(table.arm)]
    fig, axes = style.grid(len(arms), 3.5, 3.2)
    hatched = False
    for ax, arm in zip(axes, arms):
        rows = table[table.arm == arm]
        row_values = sorted(set(rows.row_value), key=lambda v: (str(type(v)), v))
        col_values = sorted(set(rows.col_value), key=lambda v: (str(type(v)), v))
        grid = np.full((len(row_values), len(col_values)), np.nan)
        lookup = {}
        for r in rows.itertuples():
            i, j = row_values.index(r.row_value), col_values.index(r.col_value)
            grid[i, j] = r.mean
            lookup[(i, j)] = r
        halves = ((rows["high"] - rows["low"]) / 2).to_numpy(dtype=float)
        vmin, vmax = colour_range(rows["mean"].to_numpy(dtype=float), halves, f.reference_value)
        norm = Normalize(vmin, vmax)
        image = ax.imshow(grid, cmap="viridis", norm=norm, aspect="auto", origin="lower")
        size = max(5.0, 7.5 - 0.4 * max(grid.shape))
        for (i, j), r in lookup.items():
            if np.isfinite(r.mean):
                half = (r.high - r.low) / 2
                spread = f"± {half:.3f}" if np.isfinite(half) else "no interval"
                text = f"{r.mean:.3f}\n{spread}\n{style.n_text(r.n)}"
                text += {MATCHES: "\nmatches", SHORT: "\nshort"}.get(r.decision, "")
            else:
                text = f"no value\n{style.n_text(r.n)}"
            ax.text(j, i, text, ha="center", va="center", fontsize=size, color="black", zorder=3,
                    bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "boxstyle": "round,pad=0.25"})
            if r.decision == UNDECIDED:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="0.85",
                                       linewidth=0))
                hatched = True
        ax.set_xticks(range(len(col_values)), [_tick(c) for c in col_values])
        ax.set_yticks(range(len(row_values)), [_tick(c) for c in row_values])
        ax.set_ylabel(rows.row_param.iloc[0])
        ax.set_xlabel(rows.col_param.iloc[0])
        ax.set_title(arm)
        bar = fig.colorbar(image, ax=ax, shrink=0.9)
        label = f"validation {style.metric_name(f.metric)}, mean over seeds"
        if math.isfinite(f.reference_value):
            bar.ax.axhline(f.reference_value, color="red", lw=2)
            label += f"\nred: {f.reference} {f.reference_value:.3f}"
        bar.set_label(label)
    key = [Patch(facecolor="none", edgecolor="0.4", hatch="///")] if hatched else []
    style.figure_legend(fig, key, [f"undecided: not shown to reach {f.reference} − δ, nor to fall short"] if hatched
                        else [], table.n)
    fig.suptitle(f"Validation mean per grid cell\n± half-width of its {f.t_interval()}")
    return fig


def figure(analysis: Analysis) -> Figure | None:
    return draw(data(analysis), facts(analysis))


def caption(analysis: Analysis) -> str:
    f = facts(analysis)
    return ("Validation mean over seeds (failures counted at the failure value) for every cell of each searched "
            f"grid, with the half-width of its {f.t_interval()} and its n (seeds; † marks n < 3). The colour "
            "scale spans at least the median interval width, so cells within seed noise of each other look "
            "alike; the red line on the colour bar is the reference arm's value. Hatched cells are undecided: the "
            "verdict shows them neither to reach the reference − δ nor to fall short of it; a decided cell says "
            "\"matches\" or \"short\". Differences between cells smaller than their intervals are seed noise, "
            "not evidence that the thresholds need careful tuning.")
