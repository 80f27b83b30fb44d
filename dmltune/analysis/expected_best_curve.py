"""Expected best validation value against budget (Dodge et al. 2019; Tang et al. 2020).

An arm ran N single-seed trials with validation values v_(1) ≤ … ≤ v_(N) (failed trials counted at
the failure value; unfinished ones left out). Drawing n of them without replacement, the chance that
v_(j) is the largest drawn is C(j−1, n−1)/C(N, n), so the expected best of n trials is

    E[max_n] = Σ_j v_(j) · C(j−1, n−1) / C(N, n),   n = 1 … N,

the unbiased estimator of Tang et al. (2020); Dodge et al. (2019) gave the with-replacement form
Σ_j v_(j) ((j/N)^n − ((j−1)/N)^n). The cost of n trials is n times the arm's mean cost per trial.

The interval includes seed noise: a bootstrap over seeds (the study's seeds drawn with
replacement; every configuration keeps its trials of the drawn seeds, as often as the seed was
drawn), with E[max_n] recomputed on each replicate. Configurations are the fixed upper level of
the hierarchy and seeds the resampled lower level; a seed is drawn for all configurations at once
because a seed's initialisation and batch order are shared by all of them.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd
from scipy.special import gammaln

from .trials import StudyTable
from .tuning_cost import percentile_interval, seed_draws


@lru_cache(maxsize=64)
def _weights(N: int) -> np.ndarray:
    """W[n−1, j−1] = C(j−1, n−1)/C(N, n) for n, j = 1…N (zero where j < n)."""
    n = np.arange(1, N + 1)[:, None]
    j = np.arange(1, N + 1)[None, :]
    valid = j >= n
    jj, nn = np.where(valid, j, n), n + 0 * j
    log_w = (gammaln(jj) - gammaln(nn) - gammaln(jj - nn + 1)
             - (gammaln(N + 1) - gammaln(nn + 1) - gammaln(N - nn + 1)))
    w = np.where(valid, np.exp(log_w), 0.0)
    w.setflags(write=False)
    return w


def expected_max(values) -> np.ndarray:
    """E[max_n] for n = 1…N of values drawn without replacement (NaN values are left out)."""
    v = np.sort(np.asarray(values, dtype=float)[np.isfinite(np.asarray(values, dtype=float))])
    if len(v) == 0:
        return np.zeros(0)
    return _weights(len(v)) @ v


def expected_best(st: StudyTable, arm: str, failure_value: float, replicates: int = 1000,
                  confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Columns ``arm, trials, cost_h, expected_best, low, high, seeds`` for n = 1…N."""
    rows = st.arm_rows(arm)
    score = st.scored(rows, failure_value)
    finished = score.notna()
    values = score[finished].to_numpy(dtype=float)
    seeds_of = rows.seed[finished].to_numpy()
    N = len(values)
    if N == 0:
        return pd.DataFrame(columns=["arm", "trials", "cost_h", "expected_best", "low", "high", "seeds"])
    per_trial = float(rows.cost_h[finished].mean())
    point = expected_max(values)
    seeds = sorted(set(seeds_of), key=str)
    low = high = np.full(N, np.nan)
    if len(seeds) >= 2:
        index = {s: i for i, s in enumerate(seeds)}
        which = np.array([index[s] for s in seeds_of])
        curves = np.full((replicates, N), np.nan)
        for b, counts in enumerate(seed_draws(len(seeds), replicates, seed)):
            drawn = np.repeat(values, counts[which])
            if len(drawn) == 0:
                continue
            curve = expected_max(drawn)
            curves[b] = curve[np.minimum(np.arange(N), len(curve) - 1)]  # beyond N' trials: the best of all
        bounds = np.array([percentile_interval(curves[:, n], confidence) for n in range(N)])
        low, high = bounds[:, 0], bounds[:, 1]
    n = np.arange(1, N + 1)
    return pd.DataFrame({"arm": arm, "trials": n, "cost_h": n * per_trial, "expected_best": point,
                         "low": low, "high": high, "seeds": len(seeds)})


__all__ = ["expected_best", "expected_max"]
