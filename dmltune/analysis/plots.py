"""Comparison plots of an analysed study (matplotlib, PNG and SVG).

Every function takes an :class:`~dmltune.analysis.Analysis` and returns a matplotlib ``Figure``
(``None`` when the study has nothing to draw for it, e.g. no searched arm for the heatmaps).
Figures are built without pyplot, so they work in scripts, in Ray workers and inline in notebooks.
``save_figures`` writes all of them as ``figures/<name>.png`` and ``.svg``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..atomic import replacing
from .compare import Analysis
from .selection import configurations
from .trials import KEY, short_name

FIGURES = ("best_so_far", "heatmaps", "trajectories", "pbt_schedule", "mined_pairs", "test_metric", "similarity_histograms")


def _metric_name(column: str) -> str:
    return column.split("/", 1)[1]


def _arm_colours(analysis: Analysis) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {arm: cmap(i % 10) for i, arm in enumerate(analysis.table.arms)}


def _grid(n: int, width: float = 4.2, height: float = 3.4):
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


METRIC_RANGE = (0.0, 1.0)   # every retrieval metric dmltune reports (Recall@K, MAP@R, R-precision, NMI)


def metric_limits(values, margin: float = 0.05) -> tuple[float, float]:
    """Axis limits around the finite values, padded, and never outside the metric's range."""
    lo_range, hi_range = METRIC_RANGE
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    v = np.clip(v, lo_range, hi_range)
    if v.size == 0:
        return METRIC_RANGE
    lo, hi = float(v.min()), float(v.max())
    pad = max((hi - lo) * margin, 0.01)
    return max(lo_range, lo - pad), min(hi_range, hi + pad)


def _clipped_error(mean: float, half: float) -> list[list[float]]:
    """Asymmetric error-bar lengths of mean ± half, clipped to the metric's range."""
    if not np.isfinite(half):
        return [[0.0], [0.0]]
    lo, hi = METRIC_RANGE
    return [[mean - max(lo, mean - half)], [min(hi, mean + half) - mean]]


def best_so_far_figure(analysis: Analysis) -> Figure:
    """1. Expected best validation value against budget: for every searched arm, the expected seed-mean
    value of the configuration a search of n trials selects, estimated on held-out seeds (cross-fitted,
    :mod:`.expected_best_curve`), against the expected cost of n trials, with its interval from a
    bootstrap over seeds; single-configuration arms as a point at the mean cost of one run with the
    confidence interval over seeds. An arm whose curve cannot be estimated is named in the legend
    without a curve. The y-axis stays within the metric's range."""
    st = analysis.table
    colours = _arm_colours(analysis)
    eb = analysis.expected_best
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    shown = []
    for arm in st.arms:
        rows = st.arm_rows(arm)
        sel = analysis.selections[arm]
        curve = eb[eb.arm == arm]
        if st.dims[arm] and not curve.empty and not curve.expected_best.notna().any():
            note = curve.note.iloc[0] if "note" in curve and isinstance(curve.note.iloc[0], str) else ""
            ax.plot([], [], color=colours[arm], ls=":",
                    label=f"{arm}: no held-out curve" + (f" ({note.split(':')[0]})" if note else ""))
        elif st.dims[arm] and not curve.empty:
            x = np.concatenate([[0.0], curve.cost_h.to_numpy(dtype=float)])
            y = np.concatenate([[np.nan], curve.expected_best.to_numpy(dtype=float)])
            ax.plot(x, y, color=colours[arm], label=f"{arm} (search)", drawstyle="steps-post")
            low = np.clip(curve.low.to_numpy(dtype=float), *METRIC_RANGE)
            high = np.clip(curve.high.to_numpy(dtype=float), *METRIC_RANGE)
            ax.fill_between(curve.cost_h, low, high, color=colours[arm], alpha=0.2, step="post")
            shown += [*curve.expected_best, *low, *high]
        elif math.isfinite(sel.val.mean):
            per_run = rows.cost_h.mean()
            ax.errorbar([per_run], [sel.val.mean], yerr=_clipped_error(sel.val.mean, sel.val.half),
                        fmt="o", color=colours[arm], capsize=4,
                        label=arm + (" (n < 3 seeds)" if sel.val.few_seeds else ""))
            shown += [sel.val.mean, *(sel.val.mean + np.array([-1, 1]) * np.nan_to_num(sel.val.half))]
    if math.isfinite(analysis.target):
        ax.axhline(analysis.target, color="grey", ls="--", lw=1,
                   label=f"{analysis.reference} mean − δ ({analysis.target:.4f}); orientation only: "
                         "the verdicts decide matches")
        shown.append(analysis.target)
    ax.set_ylim(*metric_limits(shown))
    ax.set_xlim(left=0)
    ax.set_xlabel(f"expected {st.cost_unit} spent (n trials × mean cost per trial)")
    ax.set_ylabel(f"seed-mean validation {_metric_name(st.metric)} of the selection")
    conf = round(100 * analysis.settings["confidence"])
    ax.set_title("Expected seed-mean value of the configuration a search of n trials selects\n"
                 f"(estimated on held-out seeds; band: {conf}% bootstrap interval over seeds)", fontsize=10)
    ax.legend(fontsize=8)
    return fig


def heatmaps_figure(analysis: Analysis) -> Figure | None:
    """2. Validation mean over each searched arm's grid (first two searched parameters; any further
    ones take their best value), the reference's value marked on the colour bar."""
    st = analysis.table
    arms = [a for a in analysis.searched_arms if a != analysis.reference]
    if not arms:
        return None
    ref = analysis.selections[analysis.reference].val.mean
    fig, axes = _grid(len(arms), 4.8, 3.8)
    for ax, arm in zip(axes, arms):
        dims = st.dims[arm]
        table = configurations(st, arm, analysis.settings["confidence"], analysis.settings["failure_value"])
        rows_dim, cols_dim = dims[0], (dims[1] if len(dims) > 1 else None)
        if cols_dim is None:
            table = table.assign(_col="")
            cols_dim = "_col"
        pivot = table.pivot_table(index=rows_dim, columns=cols_dim, values="val_mean", aggfunc="max")
        values = pivot.to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        low = min([*finite, ref] if math.isfinite(ref) else finite, default=0.0)
        high = max([*finite, ref] if math.isfinite(ref) else finite, default=1.0)
        image = ax.imshow(values, cmap="viridis", vmin=low, vmax=high if high > low else low + 1e-9,
                          aspect="auto", origin="lower")
        for (i, j), v in np.ndenumerate(values):
            ax.text(j, i, "–" if not np.isfinite(v) else f"{v:.3f}", ha="center", va="center", fontsize=8,
                    color="white" if np.isfinite(v) and v < (low + high) / 2 else "black")
        ax.set_xticks(range(len(pivot.columns)), [f"{c:g}" if isinstance(c, float) else str(c) for c in pivot.columns])
        ax.set_yticks(range(len(pivot.index)), [f"{c:g}" if isinstance(c, float) else str(c) for c in pivot.index])
        ax.set_ylabel(short_name(rows_dim))
        ax.set_xlabel("" if cols_dim == "_col" else short_name(cols_dim))
        ax.set_title(arm, fontsize=10)
        bar = fig.colorbar(image, ax=ax)
        label = f"validation {_metric_name(st.metric)} (mean over seeds)"
        if math.isfinite(ref):
            bar.ax.axhline(ref, color="red", lw=2)
            label += f"\nred line: {analysis.reference} {ref:.3f}"
        bar.set_label(label, fontsize=8)
    return fig


def _selected_epochs(analysis: Analysis, arm: str) -> pd.DataFrame:
    """Per-epoch reports of the trials selected for an arm."""
    st, chosen = analysis.table, analysis.selections[arm].trials
    if chosen.empty:
        return st.per_epoch.iloc[0:0]
    keys = chosen[KEY].drop_duplicates()
    return st.per_epoch.merge(keys, on=KEY, how="inner")


def _per_epoch_mean(analysis: Analysis, column: str) -> dict[str, pd.Series]:
    out = {}
    for arm in analysis.table.arms:
        rows = _selected_epochs(analysis, arm)
        if column in rows and rows[column].notna().any():
            out[arm] = rows.groupby("epoch")[column].mean()
    return out


SNR_SIGNIFICANT = 2.0  # an epoch's hypergradient counts as signal when |mean| ≥ 2 standard errors


def _low_snr_epochs(analysis: Analysis, arm: str) -> pd.Series | None:
    """Meta-λ arms: per epoch, whether the median over seeds of |hypergradient SNR| (the epoch's
    mean hypergradient over its standard error) is below SNR_SIGNIFICANT (or unknown); None for an
    arm without a meta-learned λ."""
    rows = _selected_epochs(analysis, arm)
    if "lam_hypergrad_snr" not in rows or not rows["lam_hypergrad_snr"].notna().any():
        return None
    snr = rows.assign(_abs=rows["lam_hypergrad_snr"].abs()).groupby("epoch")["_abs"].median()
    return ~(snr >= SNR_SIGNIFICANT)


def trajectories_figure(analysis: Analysis) -> Figure | None:
    """3. λ and the tolerances γ̂_pos, γ̂_neg per epoch (selected configuration, mean over seeds).

    A meta-learned λ's epochs whose hypergradient SNR (median over seeds) is below 2 have hollow
    markers: there λ had no detectable signal to follow, so its movement is not evidence."""
    panels = [(c, label) for c, label in (("lam", "λ (loss threshold)"), ("gamma_pos", "γ̂_pos"), ("gamma_neg", "γ̂_neg"))
              if _per_epoch_mean(analysis, c)]
    if not panels:
        return None
    colours = _arm_colours(analysis)
    fig, axes = _grid(len(panels))
    for ax, (column, label) in zip(axes, panels):
        hollow_shown = False
        for arm, series in _per_epoch_mean(analysis, column).items():
            low = _low_snr_epochs(analysis, arm) if column == "lam" else None
            if low is None:
                ax.plot(series.index, series.to_numpy(), marker=".", color=colours[arm], label=arm)
                continue
            low = low.reindex(series.index, fill_value=True).to_numpy(dtype=bool)
            x, y = series.index.to_numpy(), series.to_numpy()
            ax.plot(x, y, color=colours[arm], label=arm)
            ax.plot(x[~low], y[~low], linestyle="none", marker="o", markersize=4, color=colours[arm])
            ax.plot(x[low], y[low], linestyle="none", marker="o", markersize=4, markerfacecolor="white",
                    markeredgecolor=colours[arm])
            hollow_shown = hollow_shown or bool(low.any())
        if hollow_shown:
            ax.plot([], [], linestyle="none", marker="o", markersize=4, markerfacecolor="white",
                    markeredgecolor="grey", label=f"hollow: hypergradient SNR < {SNR_SIGNIFICANT:g}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.suptitle("Thresholds over training (epoch means)")
    return fig


SCHEDULE_PREFIX = "schedule/"
REPORTED_AS = {"loss.lam": "lam", "miner.gamma_pos": "gamma_pos", "miner.gamma_neg": "gamma_neg"}


def pbt_schedule_figure(analysis: Analysis) -> Figure | None:
    """3b. PBT arms: the value of each mutated threshold that every population member trained with per
    epoch (thin lines; the selected members thick), beside the other arms' trajectories of the same
    threshold (dashed, epoch means of their selected configurations) where they report one."""
    st = analysis.table
    columns = sorted(c for c in st.per_epoch.columns if c.startswith(SCHEDULE_PREFIX) and st.per_epoch[c].notna().any())
    if not columns:
        return None
    colours = _arm_colours(analysis)
    fig, axes = _grid(len(columns))
    for ax, column in zip(axes, columns):
        key = column[len(SCHEDULE_PREFIX):]
        rows = st.per_epoch[st.per_epoch[column].notna()].sort_values("epoch")
        for arm, members in rows.groupby("arm", sort=False):
            chosen = set(analysis.selections[arm].trials.get("trial_id", [])) if arm in analysis.selections else set()
            for i, (trial, member) in enumerate(members.groupby("trial_id", sort=True)):
                best = trial in chosen
                ax.plot(member["epoch"], member[column], color=colours.get(arm, "grey"), drawstyle="steps-post",
                        linewidth=2.0 if best else 0.8, alpha=1.0 if best else 0.5,
                        label=f"{arm} (thick: selected)" if i == 0 else None)
        reported = REPORTED_AS.get(key)
        if reported:
            for arm, series in _per_epoch_mean(analysis, reported).items():
                if arm not in set(rows.arm):
                    ax.plot(series.index, series.to_numpy(), linestyle="--", color=colours[arm], label=arm)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.legend(fontsize=7)
    fig.suptitle("PBT schedules: each member's thresholds per epoch")
    return fig


def mined_pairs_figure(analysis: Analysis) -> Figure | None:
    """4. Positive and negative pairs kept by the miner per batch, per epoch (as DDTAS's Fig. 4)."""
    panels = [(c, label) for c, label in (("pos_after", "mined positive pairs per batch"),
                                          ("neg_after", "mined negative pairs per batch"))
              if _per_epoch_mean(analysis, c)]
    if not panels:
        return None
    colours = _arm_colours(analysis)
    fig, axes = _grid(len(panels), 5, 3.6)
    for ax, (column, label) in zip(axes, panels):
        for arm, series in _per_epoch_mean(analysis, column).items():
            ax.plot(series.index, series.to_numpy(), marker=".", color=colours[arm], label=arm)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_yscale("symlog")
        ax.legend(fontsize=7)
    return fig


def test_metric_figure(analysis: Analysis) -> Figure | None:
    """5. Test metric of each arm's selected configuration, mean with its confidence interval."""
    st = analysis.table
    rows = analysis.summary
    if rows.test.notna().sum() == 0:
        return None
    colours = _arm_colours(analysis)
    fig = Figure(figsize=(7, 0.5 * len(rows) + 1.5), layout="constrained")
    ax = fig.subplots()
    shown = []
    for i, row in enumerate(rows.itertuples()):
        if not math.isfinite(row.test):
            continue
        ax.errorbar([row.test], [i], xerr=_clipped_error(row.test, row.test_half),
                    fmt="s" if row.arm == analysis.reference else "o", color=colours[row.arm], capsize=4)
        few = " (n < 3 seeds)" if 0 < row.seeds < 3 else ""
        ax.text(row.test, i + 0.18, f"{row.test:.4f}{few}", ha="center", fontsize=8)
        shown += [row.test, *(row.test + np.array([-1, 1]) * np.nan_to_num(row.test_half))]
    ax.set_xlim(*metric_limits(shown))
    ax.set_yticks(range(len(rows)), rows.arm)
    ax.invert_yaxis()
    conf = int(round(100 * analysis.settings["confidence"]))
    ax.set_xlabel(f"test {_metric_name(st.test_metric)} at the configuration selected on validation "
                  f"(mean, {conf}% CI over seeds)")
    return fig


_HIST = re.compile(r"^val_simhist/(pos|neg)/(\d+)$")


def similarity_histograms_figure(analysis: Analysis) -> Figure | None:
    """6. Cosine similarities of positive and negative validation pairs at the last evaluation of
    each arm's selected trials (mean over seeds), if the trials recorded them."""
    columns = sorted((c for c in analysis.table.per_epoch.columns if _HIST.match(c)),
                     key=lambda c: (_HIST.match(c)[1], int(_HIST.match(c)[2])))
    if not columns:
        return None
    arms = [a for a in analysis.table.arms if not analysis.selections[a].trials.empty
            and analysis.selections[a].trials.reindex(columns=columns).notna().any(axis=None)]
    if not arms:
        return None
    fig, axes = _grid(len(arms), 4, 3)
    for ax, arm in zip(axes, arms):
        chosen = analysis.selections[arm].trials
        for kind, colour in (("pos", "tab:green"), ("neg", "tab:red")):
            cols = [c for c in columns if _HIST.match(c)[1] == kind]
            share = chosen[cols].mean().to_numpy(dtype=float)
            edges = np.linspace(-1, 1, len(cols) + 1)
            ax.stairs(share, edges, color=colour, fill=True, alpha=0.35,
                      label="positive pairs" if kind == "pos" else "negative pairs")
        ax.set_title(f"{arm}", fontsize=10)
        ax.set_xlabel("cosine similarity")
        ax.set_ylabel("share of pairs")
        ax.legend(fontsize=7)
    fig.suptitle("Validation pair similarities at the last evaluation of the selected trials")
    return fig


DRAW = {"best_so_far": best_so_far_figure, "heatmaps": heatmaps_figure, "trajectories": trajectories_figure,
        "pbt_schedule": pbt_schedule_figure,
        "mined_pairs": mined_pairs_figure, "test_metric": test_metric_figure,
        "similarity_histograms": similarity_histograms_figure}


def save_figures(analysis: Analysis, folder: str | Path) -> dict[str, Path]:
    """Draw every figure that has data; write ``<name>.png`` and ``<name>.svg``; return the PNG paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in FIGURES:
        fig = DRAW[name](analysis)
        if fig is None:
            continue
        for ext in ("png", "svg"):
            with replacing(folder / f"{name}.{ext}") as partial:
                fig.savefig(partial, format=ext, dpi=120)
        written[name] = folder / f"{name}.png"
    return written
