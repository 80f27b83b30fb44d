"""Thresholds over training: λ, the tolerances γ̂_pos, γ̂_neg, ε and the dynamic-sampling τ per epoch
for each arm's selected configuration (mean over seeds, Student-t band), fixed ones included."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.transforms import ScaledTranslation

from ..compare import Analysis
from . import style
from .tables import StudyFacts, epoch_bands, facts, selected_epochs

NAME = "trajectories"
PANELS = {"lam": "λ (loss threshold)", "gamma_pos": "γ̂_pos (positive tolerance)",
          "gamma_neg": "γ̂_neg (negative tolerance)", "epsilon": "ε (MS tolerance)",
          "tau_p": "τ_p", "tau_n": "τ_n", "tau_b": "τ_b"}
SNR_SIGNIFICANT = 2.0  # an epoch's hypergradient counts as signal when |mean| ≥ 2 standard errors


def low_snr_epochs(analysis: Analysis, arm: str) -> pd.Series | None:
    """Meta-λ arms: per epoch, whether the median over seeds of |hypergradient SNR| (the epoch's mean
    hypergradient over its standard error) is below SNR_SIGNIFICANT (or unknown); None for an arm
    without a meta-learned λ."""
    rows = selected_epochs(analysis, arm)
    if "lam_hypergrad_snr" not in rows or not rows["lam_hypergrad_snr"].notna().any():
        return None
    snr = rows.assign(_abs=rows["lam_hypergrad_snr"].abs()).groupby("epoch")["_abs"].median()
    return ~(snr >= SNR_SIGNIFICANT)


def data(analysis: Analysis) -> pd.DataFrame:
    """Tidy: ``parameter, arm, epoch, mean, low, high, n, low_snr`` (``low_snr``: a meta-learned λ's
    epoch without hypergradient signal; NA elsewhere)."""
    frames = []
    for column in PANELS:
        bands = epoch_bands(analysis, column)
        if bands.empty:
            continue
        bands = bands.assign(parameter=column, low_snr=pd.NA)
        if column == "lam":
            for arm in set(bands.arm):
                low = low_snr_epochs(analysis, arm)
                if low is not None:
                    where = bands.arm == arm
                    bands.loc[where, "low_snr"] = bands.epoch[where].map(low).fillna(True).astype(bool).to_numpy()
        frames.append(bands)
    if not frames:
        return pd.DataFrame(columns=["parameter", "arm", "epoch", "mean", "low", "high", "n", "low_snr"])
    return pd.concat(frames, ignore_index=True)[["parameter", "arm", "epoch", "mean", "low", "high", "n", "low_snr"]]


def overlapping_groups(series: dict[str, pd.Series], tolerance: float) -> list[list[str]]:
    """Arms (in order) whose epoch-mean series lie within ``tolerance`` of each other at every epoch:
    drawn plainly, they would hide each other."""
    groups: list[list[str]] = []
    for arm, s in series.items():
        for g in groups:
            other = series[g[0]]
            if other.index.equals(s.index) and np.allclose(other.to_numpy(float), s.to_numpy(float), rtol=0,
                                                           atol=tolerance, equal_nan=True):
                g.append(arm)
                break
        else:
            groups.append([arm])
    return groups


LEGEND_LINE = 0.16     # inches of figure height per legend entry under a panel
OVERLAP_SHARE = 0.01   # series closer than 1% of the panel's range overlap on the page
NUDGE_POINTS = 2.5     # overlapping series are drawn this far apart (vertically, in points)


def _nudges(ax, rows: pd.DataFrame, arms: list[str]) -> tuple[dict, dict]:
    """Per arm: the arms its line would hide (or be hidden by), and a transform that draws it a few
    points above or below them (its data unchanged)."""
    finite = rows["mean"].to_numpy(dtype=float)
    finite = finite[np.isfinite(finite)]
    span = float(finite.max() - finite.min()) if finite.size else 0.0
    tolerance = max(OVERLAP_SHARE * span, 1e-9 * max(1.0, float(np.abs(finite).max()) if finite.size else 1.0))
    series = {a: rows[rows.arm == a].set_index("epoch")["mean"] for a in arms}
    others, transforms = {}, {}
    for group in overlapping_groups(series, tolerance):
        for i, arm in enumerate(group):
            others[arm] = [a for a in group if a != arm]
            shift = (i - (len(group) - 1) / 2) * NUDGE_POINTS / 72
            transforms[arm] = ax.transData + ScaledTranslation(0, shift, ax.figure.dpi_scale_trans) if shift else \
                ax.transData
    return others, transforms


def _panel(ax, rows: pd.DataFrame, f: StudyFacts, looks: dict) -> None:
    """One threshold: every arm's epoch means, band, and (meta-learned λ) its SNR markers."""
    arms = [a for a in f.arms if a in set(rows.arm)]
    others, nudge = _nudges(ax, rows, arms)
    hollow_shown = False
    for arm in arms:
        r = rows[rows.arm == arm].sort_values("epoch")
        look, x, y = looks[arm], r.epoch.to_numpy(dtype=float), r["mean"].to_numpy(dtype=float)
        label = f"{arm} ({style.n_text(int(r.n.max()))})" + (f": overlaps {', '.join(others[arm])}" if others[arm]
                                                             else "")
        if np.isfinite(r.low.to_numpy(dtype=float)).any():
            ax.fill_between(x, r.low.to_numpy(dtype=float), r.high.to_numpy(dtype=float), color=look["color"],
                            alpha=0.12, linewidth=0)
        ax.update_datalim(np.column_stack([x, y])[np.isfinite(y)])   # a nudged line does not set limits
        low = r.low_snr
        if low.notna().any():  # a meta-learned λ: hollow markers where the hypergradient had no signal
            low = low.fillna(True).to_numpy(dtype=bool)
            ax.plot(x, y, color=look["color"], linestyle=look["linestyle"], label=label, transform=nudge[arm])
            ax.plot(x[~low], y[~low], linestyle="none", marker="o", color=look["color"], transform=nudge[arm])
            ax.plot(x[low], y[low], linestyle="none", marker="o", markerfacecolor="white",
                    markeredgecolor=look["color"], transform=nudge[arm])
            hollow_shown = hollow_shown or bool(low.any())
        else:
            ax.plot(x, y, color=look["color"], linestyle=look["linestyle"], marker=look["marker"], label=label,
                    clip_on=False, transform=nudge[arm])
    if hollow_shown:
        ax.plot([], [], linestyle="none", marker="o", markerfacecolor="white", markeredgecolor="grey",
                label=f"hollow: hypergradient SNR < {SNR_SIGNIFICANT:g}")
    style.epoch_axis(ax)
    ax.margins(x=0.04, y=0.12)
    ax.autoscale_view()
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncols=1, frameon=False, borderaxespad=0)


@style.styled
def draw(table: pd.DataFrame, f: StudyFacts) -> Figure | None:
    if table.empty:
        return None
    looks = style.arm_styles(f.arms)
    panels = [c for c in PANELS if c in set(table.parameter)]
    entries = max(table[table.parameter == c].arm.nunique() + (c == "lam") for c in panels)
    fig, axes = style.grid(len(panels), 3.5, 2.2 + LEGEND_LINE * entries)
    for ax, column in zip(axes, panels):
        _panel(ax, table[table.parameter == column], f, looks)
        ax.set_ylabel(PANELS[column])
    fig.suptitle(f"Thresholds over training (selected configuration; mean, band: {f.t_interval()})")
    style.mark_few_seeds(fig, table.n)
    return fig


def figure(analysis: Analysis) -> Figure | None:
    return draw(data(analysis), facts(analysis))


def caption(analysis: Analysis) -> str:
    f = facts(analysis)
    return ("λ, the tolerances (γ̂_pos, γ̂_neg, ε) and any τ per epoch for each arm's selected configuration: "
            f"the mean over its n seeds (in the legend; † marks n < 3) with a band, the {f.t_interval()}. Flat lines "
            "are fixed values, moving ones are adapted during training. Arms whose lines would hide each other "
            "(closer than 1% of the panel's range at every epoch) say \"overlaps\" in the legend and are drawn "
            "2.5 points apart vertically, so each stays visible (the shift is in print only: their values "
            "coincide within 1%). A meta-learned λ has hollow markers at epochs whose hypergradient "
            "signal-to-noise ratio (the epoch's mean hypergradient over its standard error, median |SNR| over "
            "seeds) is below 2: there the hypergradient's sign was not detectable, so λ's movement (if any) is "
            "not evidence.")
