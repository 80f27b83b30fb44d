"""Tidy tables the figures draw: what a study says, and per-epoch values of the selected trials
summarised over seeds (mean, Student-t interval, n)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from ..compare import Analysis
from ..trials import KEY


@dataclass(frozen=True)
class StudyFacts:
    """What a figure's labels need to know about the study."""

    arms: list[str]                 # in study order
    metric: str                     # "val/map@r"
    test_metric: str                # "test/map@r"
    confidence: float               # 0.95
    reference: str
    target: float                   # reference mean − δ
    cost_unit: str                  # "GPU-hours" or "wall-hours"
    delta: float = math.nan
    reference_value: float = math.nan   # the reference's validation mean

    @property
    def percent(self) -> int:
        return int(round(100 * self.confidence))

    @property
    def cost_kind(self) -> str:
        """"GPU time" or "wall time"."""
        return self.cost_unit.replace("-hours", " time")

    def t_interval(self) -> str:
        return f"{self.percent}% Student-t interval over seeds"

    def bootstrap_interval(self) -> str:
        return f"{self.percent}% bootstrap percentile interval over seeds"


def facts(analysis: Analysis) -> StudyFacts:
    st, s = analysis.table, analysis.settings
    return StudyFacts(list(st.arms), st.metric, st.test_metric, float(s["confidence"]), analysis.reference,
                      float(analysis.target), st.cost_unit, float(s.get("delta", math.nan)),
                      float(analysis.selections[analysis.reference].val.mean))


def t_summary(values: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """Per row of a (things × seeds) table: ``mean, low, high, n`` over the finite seeds, the interval
    Student t's (NaN bounds with n < 2) — the same interval as the report's "mean ± CI" columns."""
    v = values.to_numpy(dtype=float)
    n = np.isfinite(v).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, np.nansum(v, axis=1) / np.maximum(n, 1), np.nan)
        sd = np.sqrt(np.where(n > 1, np.nansum((v - mean[:, None]) ** 2, axis=1) / (n - 1), np.nan))
        half = stats.t.ppf(0.5 + confidence / 2, np.where(n > 1, n - 1, np.nan)) * sd / np.sqrt(n)
    return pd.DataFrame({"mean": mean, "low": mean - half, "high": mean + half, "n": n}, index=values.index)


def selected_epochs(analysis: Analysis, arm: str) -> pd.DataFrame:
    """Per-epoch reports of the trials selected for an arm (its usable trials, one per seed)."""
    st, chosen = analysis.table, analysis.selections[arm].trials
    if chosen.empty:
        return st.per_epoch.iloc[0:0]
    return st.per_epoch.merge(chosen[KEY].drop_duplicates(), on=KEY, how="inner")


def epoch_bands(analysis: Analysis, column: str) -> pd.DataFrame:
    """Tidy: ``arm, epoch, mean, low, high, n`` of a per-epoch column over the seeds of each arm's
    selected trials (a seed's trials, e.g. its folds, averaged first); arms without the column left out."""
    frames = []
    for arm in analysis.table.arms:
        rows = selected_epochs(analysis, arm)
        if column not in rows or not rows[column].notna().any():
            continue
        rows = rows[rows[column].notna()]
        by_seed = rows.assign(_v=rows[column].astype(float)).pivot_table(index="epoch", columns="seed", values="_v",
                                                                          aggfunc="mean")
        frames.append(t_summary(by_seed, analysis.settings["confidence"]).reset_index().assign(arm=arm))
    if not frames:
        return pd.DataFrame(columns=["arm", "epoch", "mean", "low", "high", "n"])
    return pd.concat(frames, ignore_index=True)[["arm", "epoch", "mean", "low", "high", "n"]]
