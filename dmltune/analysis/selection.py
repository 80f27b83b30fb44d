"""Choosing each arm's configuration on the validation metric, and its test value over seeds.

Two cases, decided by how the arm was run:

- **grid** (one Tune experiment, every configuration × every seed): the configuration with the
  highest validation mean over its usable seeds is selected; ties go to the one with more usable
  seeds, then to the first in sorted order. Its test values over those seeds give the interval.
- **replicates** (random / optuna: one independent search per seed): each seed's search selects its
  own best trial on validation; the interval is over those per-seed selections.

The test metric never takes part in a choice. Intervals are Student-t intervals of the mean over
seeds (none with a single seed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from .trials import StudyTable, short_name


@dataclass
class Estimate:
    """Mean over seeds with the half-width of its confidence interval (NaN when n < 2)."""

    mean: float
    half: float
    n: int

    def text(self, digits: int = 4) -> str:
        if self.n == 0 or not math.isfinite(self.mean):
            return "–"
        if not math.isfinite(self.half):
            return f"{self.mean:.{digits}f} (n = {self.n})"
        return f"{self.mean:.{digits}f} ± {self.half:.{digits}f} (n = {self.n})"


def estimate(values, confidence: float = 0.95) -> Estimate:
    v = np.asarray(pd.Series(values, dtype=float).dropna(), dtype=float)
    n = len(v)
    if n == 0:
        return Estimate(math.nan, math.nan, 0)
    if n == 1:
        return Estimate(float(v[0]), math.nan, 1)
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * v.std(ddof=1) / math.sqrt(n)
    return Estimate(float(v.mean()), float(half), n)


def difference(a, b, confidence: float = 0.95) -> Estimate:
    """mean(a) − mean(b) with a Welch interval (n is the smaller sample)."""
    a = pd.Series(a, dtype=float).dropna().to_numpy()
    b = pd.Series(b, dtype=float).dropna().to_numpy()
    if len(a) == 0 or len(b) == 0:
        return Estimate(math.nan, math.nan, 0)
    diff, n = float(a.mean() - b.mean()), min(len(a), len(b))
    if len(a) < 2 or len(b) < 2:
        return Estimate(diff, math.nan, n)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Estimate(diff, 0.0, n)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return Estimate(diff, float(stats.t.ppf(0.5 + confidence / 2, df) * se), n)


def config_label(row, dims: list[str]) -> str:
    if not dims:
        return "(single configuration)"
    parts = []
    for c in dims:
        value = row[c]
        parts.append(f"{short_name(c)}={value:.4g}" if isinstance(value, float) else f"{short_name(c)}={value}")
    return ", ".join(parts)


def configurations(st: StudyTable, arm: str, confidence: float = 0.95) -> pd.DataFrame:
    """One row per configuration of an arm: its parameters, trials, usable seeds, validation and test
    means (with interval half-widths) and cost. Sorted best first (the selection order)."""
    rows = st.arm_rows(arm).copy()
    dims = st.dims[arm]
    rows["_usable"] = st.usable(rows)
    rows["_key"] = rows[dims].astype(str).agg("|".join, axis=1) if dims else ""
    out = []
    for key, group in rows.groupby("_key", sort=True):
        ok = group[group._usable]
        val, test = estimate(ok[st.metric], confidence), estimate(ok.get(st.test_metric, pd.Series(dtype=float)), confidence)
        first = group.iloc[0]
        out.append({**{c: first[c] for c in dims}, "configuration": config_label(first, dims), "trials": len(group),
                    "usable": len(ok), "val_mean": val.mean, "val_half": val.half,
                    "test_mean": test.mean, "test_half": test.half, "test_n": test.n,
                    "cost_h": group.cost_h.sum(), "_key": key})
    table = pd.DataFrame(out)
    table["_rank_val"] = table.val_mean.fillna(-np.inf)
    table = table.sort_values(["_rank_val", "usable", "_key"], ascending=[False, False, True], kind="stable")
    return table.drop(columns=["_rank_val"]).reset_index(drop=True)


@dataclass
class Selection:
    arm: str
    mode: str                         # "grid" or "replicates"
    configuration: str                # label of the selected configuration
    val: Estimate
    test: Estimate
    trials: pd.DataFrame = field(repr=False)  # the selected trials' final rows (one per seed)
    dims: list[str] = field(default_factory=list)


def select(st: StudyTable, arm: str, confidence: float = 0.95) -> Selection:
    rows = st.arm_rows(arm)
    dims = st.dims[arm]
    usable = rows[st.usable(rows)]
    if rows.experiment.nunique() > 1:  # one independent search per seed
        picks = []
        for _, group in usable.groupby("experiment", sort=True):
            picks.append(group.sort_values([st.metric, "trial_id"], ascending=[False, True], kind="stable").iloc[0])
        chosen = pd.DataFrame(picks)
        labels = sorted({config_label(r, dims) for _, r in chosen.iterrows()}) if len(chosen) else []
        label = labels[0] if len(labels) == 1 else f"best of each seed's search ({len(labels)} distinct)"
        mode = "replicates"
    else:
        table = configurations(st, arm, confidence)
        best = table.iloc[0] if len(table) and np.isfinite(table.val_mean.iloc[0]) else None
        if best is None:
            chosen, label = usable.iloc[0:0], "none usable"
        else:
            key = usable[dims].astype(str).agg("|".join, axis=1) if dims else pd.Series("", index=usable.index)
            chosen, label = usable[key == best["_key"]], best["configuration"]
        mode = "grid"
    test = chosen[st.test_metric] if st.test_metric in chosen else pd.Series(dtype=float)
    return Selection(arm, mode, label, estimate(chosen[st.metric] if len(chosen) else [], confidence),
                     estimate(test, confidence), chosen, dims)
