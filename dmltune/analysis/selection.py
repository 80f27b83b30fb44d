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
    keys = rows[dims[0]].map(str).astype(object)
    for c in dims[1:]:
        keys = keys + "|" + rows[c].map(str).astype(object)
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
    from .tuning_cost import cells

    c = cells(st, arm, arm_seeds(st, arm), failure_value)
    return pd.DataFrame(c.value, index=pd.Index(c.keys, name="key"), columns=pd.Index(c.seeds, name="seed"))


def arm_seeds(st: StudyTable, arm: str) -> list:
    return sorted(set(st.arm_rows(arm).seed.dropna()), key=str)


def _group_moments(groups: np.ndarray, values: np.ndarray, n_groups: int):
    """Count, mean and unbiased std of the finite values per group index."""
    have = np.isfinite(values)
    n = np.bincount(groups[have], minlength=n_groups).astype(float)
    total = np.bincount(groups[have], weights=values[have], minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, total / n, np.nan)
        dev = np.where(have, values - mean[groups], 0.0)
        var = np.bincount(groups, weights=dev ** 2, minlength=n_groups) / (n - 1)
    return n, mean, np.where(n > 1, np.sqrt(var), np.nan)


def _t_half(std: np.ndarray, n: np.ndarray, confidence: float) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        q = stats.t.ppf(0.5 + confidence / 2, np.where(n > 1, n - 1, np.nan))
        return np.where(n > 1, q * std / np.sqrt(n), np.nan)


CONFIGURATION_COLUMNS = ["configuration", "trials", "usable", "failed", "val_mean", "val_half", "val_n",
                         "test_mean", "test_half", "test_n", "cost_h", "_key"]


def configurations(st: StudyTable, arm: str, confidence: float = 0.95,
                   failure_value: float = FAILURE_VALUE) -> pd.DataFrame:
    """One row per configuration of an arm: its parameters, trials, usable and failed seeds,
    validation mean (failures penalised) and test mean with interval half-widths, and cost. Sorted
    best first (the selection order)."""
    key = ("configurations", arm, confidence, failure_value)
    if key not in st.cache:
        st.cache[key] = _configurations(st, arm, confidence, failure_value)
    return st.cache[key].copy()


def _configurations(st: StudyTable, arm: str, confidence: float, failure_value: float) -> pd.DataFrame:
    rows = st.arm_rows(arm)
    dims = st.dims[arm]
    if rows.empty:
        return pd.DataFrame(columns=dims + CONFIGURATION_COLUMNS)
    usable = st.usable(rows).to_numpy(dtype=bool)
    keys, groups = np.unique(config_keys(rows, dims).to_numpy(dtype=str), return_inverse=True)
    G = len(keys)
    score = st.scored(rows, failure_value).to_numpy(dtype=float)
    test = (np.where(usable, rows[st.test_metric].to_numpy(dtype=float), np.nan) if st.test_metric in rows
            else np.full(len(rows), np.nan))
    # a seed counts once per configuration: repeated (configuration, seed) rows are averaged first
    cells = pd.DataFrame({"g": groups, "seed": rows.seed.map(str).to_numpy(), "score": score, "test": test})
    cells = cells.groupby(["g", "seed"], sort=False).mean().reset_index()
    cell_groups = cells.g.to_numpy(dtype=int)
    val_n, val_mean, val_std = _group_moments(cell_groups, cells.score.to_numpy(dtype=float), G)
    test_n, test_mean, test_std = _group_moments(cell_groups, cells.test.to_numpy(dtype=float), G)
    first = np.unique(groups, return_index=True)[1]
    firsts = rows.iloc[first]
    table = pd.DataFrame({c: firsts[c].to_numpy() for c in dims})
    table["configuration"] = [config_label(r, dims) for _, r in firsts.iterrows()]
    table["trials"] = np.bincount(groups, minlength=G)
    table["usable"] = np.bincount(groups, weights=usable, minlength=G).astype(int)
    table["failed"] = np.bincount(groups, weights=rows.status.isin(st.FAILED).to_numpy(), minlength=G).astype(int)
    table["val_mean"], table["val_half"], table["val_n"] = val_mean, _t_half(val_std, val_n, confidence), val_n.astype(int)
    table["test_mean"], table["test_half"] = test_mean, _t_half(test_std, test_n, confidence)
    table["test_n"] = test_n.astype(int)
    table["cost_h"] = np.bincount(groups, weights=rows.cost_h.to_numpy(dtype=float), minlength=G)
    table["_key"] = keys
    table["_rank_val"] = table.val_mean.fillna(-np.inf)
    table["_any_usable"] = table.usable > 0
    table = table.sort_values(["_any_usable", "_rank_val", "usable", "_key"], ascending=[False, False, False, True],
                              kind="stable")
    return table.drop(columns=["_rank_val", "_any_usable"]).reset_index(drop=True)


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


def held_out_values(matrix: pd.DataFrame, usable: pd.DataFrame | None = None) -> pd.Series:
    """For each seed (column) s: the value on s of the configuration (row) with the best mean over the
    other seeds (ties as in :func:`_best_row`). ``usable`` (same shape): which cells hold a usable
    trial. Seeds whose pick has no value on s are left out."""
    values = matrix.to_numpy(dtype=float)
    ok = usable.to_numpy(dtype=bool) if usable is not None else np.isfinite(values)
    held = {}
    for j, seed in enumerate(matrix.columns):
        pick = _best_row(np.delete(values, j, axis=1), np.delete(ok, j, axis=1).sum(axis=1))
        if pick >= 0 and np.isfinite(values[pick, j]):
            held[seed] = values[pick, j]
    return pd.Series(held, dtype=float)


def cross_fitted(matrix: pd.DataFrame, usable: pd.DataFrame | None = None, confidence: float = 0.95) -> Estimate:
    """Leave-one-seed-out estimate of the selected configuration's value, free of the winner's curse.

    For each seed s: select the configuration with the best mean over the other seeds, take its value
    on s (:func:`held_out_values`). The mean of these held-out values estimates the true value of a
    configuration selected by the same rule (from one seed fewer), without the upward bias of reading
    the selection's own values. NaN with fewer than two seeds."""
    return _held_out_estimate(held_out_values(matrix, usable), confidence)


def _held_out_estimate(held: pd.Series, confidence: float) -> Estimate:
    return estimate(held, confidence) if len(held) >= 2 else Estimate(math.nan, math.nan, 0)


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
    held_out: pd.Series = field(default_factory=lambda: pd.Series(dtype=float), repr=False)  # cross-fitted, by seed


def select(st: StudyTable, arm: str, confidence: float = 0.95, failure_value: float = FAILURE_VALUE) -> Selection:
    rows = st.arm_rows(arm)
    dims = st.dims[arm]
    scored = st.scored(rows, failure_value)
    finished = rows[scored.notna()].assign(_score=scored[scored.notna()])
    usable = st.usable(rows)
    pbt = st.search_mode(arm) == "pbt"
    if rows.experiment.nunique() > 1 or pbt:  # one independent search (PBT: population) per seed
        picks = []
        for _, group in finished.groupby("experiment", sort=True):
            picks.append(group.assign(_ok=st.usable(group)).sort_values(
                ["_score", "_ok", "trial_id"], ascending=[False, False, True], kind="stable").iloc[0])
        picked = pd.DataFrame(picks)
        labels = sorted({config_label(r, dims) for _, r in picked.iterrows()}) if len(picked) else []
        label = labels[0] if len(labels) == 1 else f"best of each seed's search ({len(labels)} distinct)"
        if pbt:  # a member's configuration is where its schedule ended
            label = f"best member of each seed's population (final {label})" if len(labels) == 1 else \
                f"best member of each seed's population ({len(labels)} distinct final settings)"
        values = picked.set_index("seed")._score.groupby(level=0).mean() if len(picked) else pd.Series(dtype=float)
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
    values = st.scored(mine, failure_value).set_axis(mine.seed).dropna().groupby(level=0).mean()
    chosen = mine[usable[key == best["_key"]]]
    if dims:
        from .tuning_cost import cells

        c = cells(st, arm, arm_seeds(st, arm), failure_value)
        held = held_out_values(pd.DataFrame(c.value, columns=c.seeds), pd.DataFrame(c.usable > 0, columns=c.seeds))
        crossfit = _held_out_estimate(held, confidence)
    else:
        held, crossfit = values, estimate(values, confidence)
    test = (chosen.groupby("seed")[st.test_metric].mean() if st.test_metric in chosen and len(chosen)
            else pd.Series(dtype=float))
    return Selection(arm, "grid", best["configuration"], estimate(values, confidence), estimate(test, confidence),
                     chosen, dims, values.astype(float), crossfit, int(best["failed"]), held.astype(float))
