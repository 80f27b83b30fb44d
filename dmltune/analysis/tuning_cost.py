"""What a search pays before it first matches the reference, over random orderings of its trials.

An arm's trials are taken in a random order (one bootstrap replicate per ordering) as if they had
been run one after another; the *cost to match* is the number of trials, and the GPU-hours (or
wall-hours) they took, up to and including the first usable trial whose validation value is at
least ``target`` (the reference arm's validation mean − δ). Errored and diverged trials can never
match but their time is paid like any other. The mean over orderings is the expected cost of an
arm's search run in random order; the percentile interval shows its spread. When no trial matches,
the arm does not reach the target within its budget (all its trials, all its hours).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .trials import StudyTable


@dataclass
class MatchCost:
    arm: str
    target: float
    reached: bool
    matching: int                   # trials that match
    trials: int                     # trials of the arm (the budget)
    budget_h: float
    trials_mean: float = np.nan
    trials_low: float = np.nan
    trials_high: float = np.nan
    cost_mean: float = np.nan
    cost_low: float = np.nan
    cost_high: float = np.nan


def orderings(n: int, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """``replicates`` random permutations of ``range(n)``, one per row."""
    return np.argsort(rng.random((replicates, n)), axis=1)


def cost_to_match(st: StudyTable, arm: str, target: float, replicates: int = 1000,
                  confidence: float = 0.95, seed: int = 0) -> MatchCost:
    rows = st.arm_rows(arm)
    values = rows[st.metric].astype(float).to_numpy()
    hits = st.usable(rows).to_numpy() & (np.nan_to_num(values, nan=-np.inf) >= target)
    cost = rows.cost_h.to_numpy(dtype=float)
    result = MatchCost(arm, target, bool(hits.any()), int(hits.sum()), len(rows), float(cost.sum()))
    if not hits.any():
        return result
    perm = orderings(len(rows), replicates, np.random.default_rng(seed))
    first = np.argmax(hits[perm], axis=1)                      # position of the first match
    spent = np.cumsum(cost[perm], axis=1)[np.arange(replicates), first]
    lo, hi = 50 * (1 - confidence), 50 * (1 + confidence)
    n_trials = first + 1.0
    result.trials_mean, result.trials_low, result.trials_high = n_trials.mean(), *np.percentile(n_trials, [lo, hi])
    result.cost_mean, result.cost_low, result.cost_high = spent.mean(), *np.percentile(spent, [lo, hi])
    return result


def best_so_far(st: StudyTable, arm: str, grid: np.ndarray, replicates: int = 500,
                confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Best validation value found so far against cumulative cost, over random orderings.

    Returns columns ``cost_h`` (= ``grid``), ``median``, ``low``, ``high``: the median and the
    percentile band over orderings of the best usable value among the trials paid for by then
    (NaN where no usable trial has finished in most orderings)."""
    rows = st.arm_rows(arm)
    values = np.where(st.usable(rows).to_numpy(), rows[st.metric].astype(float).to_numpy(), np.nan)
    cost = rows.cost_h.to_numpy(dtype=float)
    perm = orderings(len(rows), replicates, np.random.default_rng(seed))
    spent = np.cumsum(cost[perm], axis=1)
    best = np.fmax.accumulate(values[perm], axis=1)            # NaN until the first usable trial
    curves = np.full((replicates, len(grid)), np.nan)
    for r in range(replicates):
        idx = np.searchsorted(spent[r], grid, side="right") - 1
        seen = idx >= 0
        curves[r, seen] = best[r, idx[seen]]
    lo, hi = 50 * (1 - confidence), 50 * (1 + confidence)
    with warnings.catch_warnings():  # all-NaN columns (nothing finished yet) are expected
        warnings.simplefilter("ignore", RuntimeWarning)
        enough = np.isfinite(curves).mean(axis=0) >= 0.5
        med = np.where(enough, np.nanmedian(curves, axis=0), np.nan)
        low = np.where(enough, np.nanpercentile(curves, lo, axis=0), np.nan)
        high = np.where(enough, np.nanpercentile(curves, hi, axis=0), np.nan)
    return pd.DataFrame({"cost_h": grid, "median": med, "low": low, "high": high})
