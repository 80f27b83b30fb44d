"""Choosing each arm's configuration on the validation metric, and its test value over seeds.

Two cases, decided by how the arm was run:

- **grid** (one Tune experiment, every configuration × every seed): the configuration with the
  highest validation mean over its finished seeds is selected; ties go to the one with more usable
  seeds, then to the first in sorted order. Its test values over its usable seeds give the interval.
- **replicates** (random / optuna: one independent search per seed): each seed's search selects its
  own best trial on validation; the interval is over those per-seed selections.

**Failures are penalised.** A diverged or errored seed counts as the failure value (default 0, the
floor of every retrieval metric) in the configuration's validation mean, so a configuration that
diverged on 2 of 3 seeds is not selected on the strength of its one surviving seed. Unfinished
trials are left out (they have no result yet).

**Winner's curse.** The selected configuration's validation mean is biased upward: it won because
its seeds were lucky as well as because it is good. The *cross-fitted* estimate selects on all
seeds but one and reads the value on the held-out seed, for each seed in turn, and averages.

The test metric never takes part in a choice. Intervals are Student-t intervals of the mean over
seeds (none with a single seed); an interval from fewer than 3 seeds is flagged as unreliable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from .trials import StudyTable, short_name

FEW_SEEDS = 3                 # intervals from fewer seeds than this are flagged
FAILURE_VALUE = 0.0           # default validation value of a diverged or errored seed
FEW_SEEDS_NOTE = f"fewer than {FEW_SEEDS} seeds: interval unreliable"


@dataclass
class Estimate:
    """Mean over seeds with the half-width of its confidence interval (NaN when n < 2)."""

    mean: float
    half: float
    n: int

    @property
    def few_seeds(self) -> bool:
        return 0 < self.n < FEW_SEEDS

    def text(self, digits: int = 4) -> str:
        if self.n == 0 or not math.isfinite(self.mean):
            return "–"
        flag = f"; {FEW_SEEDS_NOTE}" if self.few_seeds else ""
        if not math.isfinite(self.half):
            return f"{self.mean:.{digits}f} (n = {self.n}{flag})"
        return f"{self.mean:.{digits}f} ± {self.half:.{digits}f} (n = {self.n}{flag})"


def estimate(values, confidence: float = 0.95) -> Estimate:
    v = np.asarray(pd.Series(values, dtype=float).dropna(), dtype=float)
    n = len(v)
    if n == 0:
        return Estimate(math.nan, math.nan, 0)
    if n == 1:
        return Estimate(float(v[0]), math.nan, 1)
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * v.std(ddof=1) / math.sqrt(n)
    return Estimate(float(v.mean()), float(half), n)


def config_label(row, dims: list[str]) -> str:
    if not dims:
        return "(single configuration)"
    parts = []
    for c in dims:
        value = row[c]
        parts.append(f"{short_name(c)}={value:.4g}" if isinstance(value, float) else f"{short_name(c)}={value}")
    return ", ".join(parts)


def config_keys(rows: pd.DataFrame, dims: list[str]) -> pd.Series:
    """One string per row naming its configuration (the searched values joined by '|')."""
    if not dims:
        return pd.Series("", index=rows.index, dtype=object)
    keys = rows[dims[0]].astype(str).astype(object)
    for c in dims[1:]:
        keys = keys + "|" + rows[c].astype(str).astype(object)
    return keys


def config_labels(st: StudyTable, arm: str) -> dict[str, str]:
    """Configuration key → readable label, for every configuration of the arm."""
    rows = st.arm_rows(arm)
    dims = st.dims[arm]
    firsts = rows.groupby(config_keys(rows, dims), sort=True).head(1)
    return dict(zip(config_keys(firsts, dims), (config_label(r, dims) for _, r in firsts.iterrows())))


def seed_matrix(st: StudyTable, arm: str, failure_value: float = FAILURE_VALUE) -> pd.DataFrame:
    """The arm's validation values (failures penalised) with one row per configuration key (sorted)
    and one column per seed; NaN where no finished trial."""
    rows = st.arm_rows(arm)
    frame = pd.DataFrame({"key": config_keys(rows, st.dims[arm]), "seed": rows.seed,
                          "value": st.scored(rows, failure_value)}).dropna(subset=["value"])
    if frame.empty:
        keys = sorted(set(config_keys(rows, st.dims[arm])))
        return pd.DataFrame(index=pd.Index(keys, name="key"), dtype=float)
    return frame.pivot_table(index="key", columns="seed", values="value", aggfunc="mean").sort_index()


def _t_half(std: pd.Series, n: pd.Series, confidence: float) -> np.ndarray:
    n = n.to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = stats.t.ppf(0.5 + confidence / 2, np.where(n > 1, n - 1, np.nan))
        return np.where(n > 1, q * std.to_numpy(dtype=float) / np.sqrt(n), np.nan)


def configurations(st: StudyTable, arm: str, confidence: float = 0.95,
                   failure_value: float = FAILURE_VALUE) -> pd.DataFrame:
    """One row per configuration of an arm: its parameters, trials, usable and failed seeds,
    validation mean (failures penalised) and test mean with interval half-widths, and cost. Sorted
    best first (the selection order)."""
    rows = st.arm_rows(arm)
    dims = st.dims[arm]
    if rows.empty:
        return pd.DataFrame(columns=dims + ["configuration", "trials", "usable", "failed", "val_mean", "val_half",
                                            "val_n", "test_mean", "test_half", "test_n", "cost_h", "_key"])
    usable = st.usable(rows)
    test = rows[st.test_metric].astype(float).where(usable) if st.test_metric in rows else pd.Series(np.nan, index=rows.index)
    frame = pd.DataFrame({"_key": config_keys(rows, dims), "usable": usable, "failed": rows.status.isin(st.FAILED),
                          "score": st.scored(rows, failure_value), "test": test, "cost_h": rows.cost_h})
    g = frame.groupby("_key", sort=True)
    agg = pd.DataFrame({"trials": g.size(), "usable": g.usable.sum().astype(int), "failed": g.failed.sum().astype(int),
                        "val_mean": g.score.mean(), "val_std": g.score.std(ddof=1), "val_n": g.score.count(),
                        "test_mean": g.test.mean(), "test_std": g.test.std(ddof=1), "test_n": g.test.count(),
                        "cost_h": g.cost_h.sum()})
    agg["val_half"] = _t_half(agg.val_std, agg.val_n, confidence)
    agg["test_half"] = _t_half(agg.test_std, agg.test_n, confidence)
    firsts = rows.groupby(frame._key, sort=True).head(1)
    params = firsts[dims].set_axis(config_keys(firsts, dims)) if dims else pd.DataFrame(index=agg.index)
    labels = pd.Series([config_label(r, dims) for _, r in firsts.iterrows()], index=config_keys(firsts, dims))
    table = pd.concat([params, agg], axis=1)
    table["configuration"] = labels
    table["_key"] = table.index
    table.index.name = None
    columns = dims + ["configuration", "trials", "usable", "failed", "val_mean", "val_half", "val_n",
                      "test_mean", "test_half", "test_n", "cost_h", "_key"]
    table = table[columns]
    table["_rank_val"] = table.val_mean.fillna(-np.inf)
    table = table.sort_values(["_rank_val", "usable", "_key"], ascending=[False, False, True], kind="stable")
    return table.drop(columns=["_rank_val"]).reset_index(drop=True)


def _best_row(matrix: np.ndarray, usable: np.ndarray) -> int:
    """Index of the row with the highest mean (NaN ignored); ties to more usable values, then the
    first row (rows are in sorted key order). -1 when no row has a value."""
    with np.errstate(invalid="ignore"):
        n = np.isfinite(matrix).sum(axis=1)
        means = np.where(n > 0, np.nansum(matrix, axis=1) / np.maximum(n, 1), -np.inf)
    if not np.isfinite(means).any():
        return -1
    order = np.lexsort((np.arange(len(means)), -usable, -means))
    return int(order[0])


def cross_fitted(matrix: pd.DataFrame, usable: pd.DataFrame | None = None, confidence: float = 0.95) -> Estimate:
    """Leave-one-seed-out estimate of the selected configuration's value, free of the winner's curse.

    For each seed s: select the configuration with the best mean over the other seeds, take its value
    on s. The mean of these held-out values estimates the true value of a configuration selected by
    the same rule (from one seed fewer), without the upward bias of reading the selection's own
    values. NaN with fewer than two seeds."""
    values = matrix.to_numpy(dtype=float)
    ok = (usable.reindex_like(matrix).fillna(False).to_numpy(dtype=bool) if usable is not None
          else np.isfinite(values))
    held = []
    for j in range(values.shape[1]):
        others = np.delete(values, j, axis=1)
        pick = _best_row(others, np.delete(ok, j, axis=1).sum(axis=1))
        if pick >= 0 and np.isfinite(values[pick, j]):
            held.append(values[pick, j])
    if len(held) < 2:
        return Estimate(math.nan, math.nan, 0)
    return estimate(held, confidence)


@dataclass
class Selection:
    arm: str
    mode: str                         # "grid" or "replicates"
    configuration: str                # label of the selected configuration
    val: Estimate                     # naive: the selected configuration's own seeds (failures penalised)
    test: Estimate
    trials: pd.DataFrame = field(repr=False)  # the selected usable trials' final rows (one per seed)
    dims: list[str] = field(default_factory=list)
    values: pd.Series = field(default_factory=lambda: pd.Series(dtype=float), repr=False)  # val by seed
    val_crossfit: Estimate = field(default_factory=lambda: Estimate(math.nan, math.nan, 0))
    failed: int = 0                   # diverged or errored seeds of the selected configuration


def select(st: StudyTable, arm: str, confidence: float = 0.95, failure_value: float = FAILURE_VALUE) -> Selection:
    rows = st.arm_rows(arm)
    dims = st.dims[arm]
    scored = st.scored(rows, failure_value)
    finished = rows[scored.notna()].assign(_score=scored[scored.notna()])
    usable = st.usable(rows)
    if rows.experiment.nunique() > 1:  # one independent search per seed
        picks = []
        for _, group in finished.groupby("experiment", sort=True):
            picks.append(group.assign(_ok=st.usable(group)).sort_values(
                ["_score", "_ok", "trial_id"], ascending=[False, False, True], kind="stable").iloc[0])
        picked = pd.DataFrame(picks)
        labels = sorted({config_label(r, dims) for _, r in picked.iterrows()}) if len(picked) else []
        label = labels[0] if len(labels) == 1 else f"best of each seed's search ({len(labels)} distinct)"
        values = picked.set_index("seed")._score if len(picked) else pd.Series(dtype=float)
        chosen = picked[st.usable(picked)] if len(picked) else picked
        failed = int(picked.status.isin(st.FAILED).sum()) if len(picked) else 0
        return Selection(arm, "replicates", label, estimate(values, confidence),
                         estimate(chosen.get(st.test_metric, pd.Series(dtype=float)), confidence),
                         chosen.drop(columns=["_score", "_ok"], errors="ignore"), dims, values.astype(float),
                         Estimate(math.nan, math.nan, 0), failed)
    table = configurations(st, arm, confidence, failure_value)
    if table.empty or not np.isfinite(table.val_mean.iloc[0]):
        return Selection(arm, "grid", "none usable", Estimate(math.nan, math.nan, 0), Estimate(math.nan, math.nan, 0),
                         rows.iloc[0:0], dims)
    best = table.iloc[0]
    key = config_keys(rows, dims)
    mine = rows[key == best["_key"]]
    values = st.scored(mine, failure_value).set_axis(mine.seed).dropna()
    chosen = mine[usable[key == best["_key"]]]
    matrix = seed_matrix(st, arm, failure_value)
    ok = pd.DataFrame({"key": key, "seed": rows.seed, "ok": usable}).pivot_table(
        index="key", columns="seed", values="ok", aggfunc="max").reindex(index=matrix.index, columns=matrix.columns)
    crossfit = cross_fitted(matrix, ok, confidence) if dims else estimate(values, confidence)
    test = chosen[st.test_metric] if st.test_metric in chosen else pd.Series(dtype=float)
    return Selection(arm, "grid", best["configuration"], estimate(values, confidence), estimate(test, confidence),
                     chosen, dims, values.astype(float), crossfit, int(best["failed"]))
