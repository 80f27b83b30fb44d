"""Expected value of a search of n trials, against budget: the headline curve and its secondary table.

**Headline (``expected_best``): the expected seed-mean value of the configuration that a search of n
trials selects, estimated on held-out seeds.** A search of n trials draws n of the arm's C
configurations without replacement, runs each on one seed and keeps the one with the best validation
value. What it finds is that configuration's *true* value (its mean over seeds), not the lucky value
it was selected on. Cross-fitted estimate, for a grid arm (every configuration run on every seed):

- for each selection seed s, the configurations with a value on s and a value on another seed are
  ranked by their value on s: v_(1) ≤ … ≤ v_(C_s). The j-th is the best of n drawn with probability
  W[n, j] = C(j − 1, n − 1)/C(C_s, n) (ties share their weight evenly: a search breaks them at random);
- the curve of s is Σ_j W[n, j] · m_(j)^(−s), with m_c^(−s) configuration c's mean over the *other*
  seeds (failures at the failure value), so the value that selects never measures; for n > C_s the
  search has tried every configuration and the curve stays at n = C_s;
- the headline is the mean of these curves over the selection seeds.

The curve runs over n = 1 … C. A single configuration is the exception: whatever a search of n trials
does, it selects that configuration, so its curve runs over n = 1 … its finished trials, flat at its
(cross-fitted) seed mean, on the same axis as the secondary table.

It is unbiased for the expected seed-mean of the selection when seeds are independent draws. A
single-configuration arm's curve is flat at its seed mean; a grid of equally good configurations gives
a flat curve however noisy its seeds. The cost of n trials is n × the arm's mean cost of a finished
trial. Interval: a bootstrap over seeds (seeds drawn with replacement, :func:`~.tuning_cost.seed_draws`);
in a replicate each drawn copy of s is a selection seed and its held-out means are over the drawn
seeds *other than s* (never another copy of s), weighted by how often they were drawn; percentile
interval. The headline is NaN, with a ``note``, where it cannot be estimated: fewer than two seeds, or
an arm whose configurations are not shared across seeds (random and optuna arms run one independent
search per seed, PBT one population per seed), so its selections have no held-out value. With two seeds
there is no interval (a replicate either repeats the estimate or has no held-out seed).

**Secondary (``best_single_trial``): the expected best single-seed trial.** An arm ran N single-seed
trials with validation values v_(1) ≤ … ≤ v_(N) (failed trials counted at the failure value;
unfinished ones left out). Drawing n of them without replacement, the chance that v_(j) is the
largest drawn is C(j−1, n−1)/C(N, n), so the expected best of n trials is

    E[max_n] = Σ_j v_(j) · C(j−1, n−1) / C(N, n),   n = 1 … N,

the unbiased estimator of Tang et al. (2020); Dodge et al. (2019) gave the with-replacement form
Σ_j v_(j) ((j/N)^n − ((j−1)/N)^n). It counts every seed of a configuration as a separate draw, so it
rewards the lucky seed and rises even when every configuration is the same: it includes seed luck
and is not a tuning measure. Kept only as a labelled secondary table, with the same bootstrap over
seeds (every configuration keeps its trials of the drawn seeds, as often as the seed was drawn).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd
from scipy.special import gammaln

from .selection import arm_seeds
from .trials import StudyTable
from .tuning_cost import _weighted_means, cells, percentile_interval, seed_draws

COLUMNS = ["arm", "trials", "cost_h", "expected_best", "low", "high", "seeds", "note"]
SECONDARY_COLUMNS = ["arm", "trials", "cost_h", "best_single_trial", "low", "high", "seeds"]

NOTE_ONE_SEED = "fewer than 2 seeds: no seed is left to measure the selection on"
NOTE_NOT_SHARED = "no configuration finished on two or more seeds"
NOTE_TWO_SEEDS = "2 seeds: no interval (every estimable bootstrap replicate repeats the estimate)"
NOTE_REPLICATES = ("one independent search per seed (random/optuna): its configurations are not run on other "
                   "seeds, so a selection has no held-out value")
NOTE_PBT = ("Population Based Training, one population per seed: its members are not run on other seeds, so a "
            "selection has no held-out value")


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


def selection_weights(selection_values, n_max: int) -> np.ndarray:
    """A (n_max × m): A[n−1, c] is the chance that configuration c (of m, in the given order) is the one
    with the best selection value among n drawn without replacement; ties share their weight evenly
    (broken at random); for n > m every configuration is drawn (the row of n = m)."""
    v = np.asarray(selection_values, dtype=float)
    m = len(v)
    out = np.zeros((n_max, m))
    if m == 0:
        return out
    order = np.argsort(v, kind="stable")
    ranked = v[order]
    group = np.concatenate([[0], np.cumsum(ranked[1:] != ranked[:-1])])
    one_hot = np.zeros((m, group[-1] + 1))
    one_hot[np.arange(m), group] = 1.0
    per_group = _weights(m) @ one_hot                       # m × groups: chance the best is in the group
    ranked_weights = per_group[:, group] / one_hot.sum(axis=0)[group]
    rows = np.minimum(np.arange(n_max), m - 1)
    out[:, order] = ranked_weights[rows]
    return out


def held_out_curves(values: np.ndarray, weights: np.ndarray, n_max: int | None = None) -> np.ndarray:
    """The cross-fitted curve for n = 1 … n_max (default C) under each seed weighting.

    ``values``: C × S validation values (configurations × seeds, NaN where none). ``weights``: B × S,
    how often each seed counts (ones: the estimate; bootstrap counts: a replicate). Returns B × n_max:
    for each selection seed s (weighted by its count), the configurations with a value on s are ranked
    on s and each contributes, with its chance of being the best of n (:func:`selection_weights`), its
    mean over the other seeds (weighted, copies of s left out); configurations without such a mean
    are left out for that s. NaN where no selection seed has a held-out value."""
    values = np.asarray(values, dtype=float)
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    C, S = values.shape
    B = weights.shape[0]
    n_max = C if n_max is None else n_max
    total, mass = np.zeros((B, n_max)), np.zeros(B)
    for s in range(S):
        on_s = np.isfinite(values[:, s])
        active = weights[:, s] > 0
        if not on_s.any() or not active.any():
            continue
        others = weights[active].copy()
        others[:, s] = 0.0
        held = _weighted_means(values[on_s], others)          # C_s × B', mean over the other drawn seeds
        chosen = values[on_s, s]
        ok = np.isfinite(held)
        curves = np.full((held.shape[1], n_max), np.nan)
        complete = ok.all(axis=0)
        if complete.any():
            curves[complete] = (selection_weights(chosen, n_max) @ held[:, complete]).T
        for b in np.flatnonzero(~complete & ok.any(axis=0)):   # a configuration without a held-out seed here
            keep = ok[:, b]
            curves[b] = selection_weights(chosen[keep], n_max) @ held[keep, b]
        count = np.where(np.isfinite(curves[:, 0]), weights[active, s], 0.0)
        total[active] += count[:, None] * np.nan_to_num(curves)
        mass[active] += count
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mass[:, None] > 0, total / mass[:, None], np.nan)


def _shares_configurations(st: StudyTable, arm: str, rows: pd.DataFrame) -> str:
    """'' when the arm's configurations are run on every seed (one grid experiment), else why not."""
    mode = st.search_mode(arm)
    if mode == "pbt":
        return NOTE_PBT
    if mode not in (None, "grid") or rows.experiment.nunique() > 1:
        return NOTE_REPLICATES
    return ""


def expected_best(st: StudyTable, arm: str, failure_value: float, replicates: int = 1000,
                  confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Headline curve (module docstring): columns ``arm, trials, cost_h, expected_best, low, high,
    seeds, note`` for n = 1 … the arm's number C of configurations with a finished trial (a single
    configuration: n = 1 … its finished trials, flat; an arm that runs one search per seed: its longest
    search), NaN with a ``note`` where not estimable."""
    rows = st.arm_rows(arm)
    finished = st.scored(rows, failure_value).notna()
    if not finished.any():
        return pd.DataFrame(columns=COLUMNS)
    per_trial = float(rows.cost_h[finished].mean())
    seeds = arm_seeds(st, arm)
    c = cells(st, arm, seeds, failure_value)
    values = c.value[np.isfinite(c.value).any(axis=1)]
    values = values[:, np.isfinite(values).any(axis=0)]
    C, S = values.shape
    note = _shares_configurations(st, arm, rows)
    # a search draws distinct configurations: n = 1 … C; any search of a single configuration selects
    # it, so its curve runs over all its trials (flat); one search per seed: its longest search
    N = int(rows[finished].groupby("experiment").size().max()) if note else C if C > 1 else int(finished.sum())
    point = low = high = np.full(N, np.nan)
    if not note and S < 2:
        note = NOTE_ONE_SEED
    if not note:
        point = held_out_curves(values, np.ones((1, S)), N)[0]
        if not np.isfinite(point).any():
            note = NOTE_NOT_SHARED
        elif S == 2:
            note = NOTE_TWO_SEEDS
        else:
            curves = held_out_curves(values, seed_draws(S, replicates, seed), N)
            bounds = np.array([percentile_interval(curves[:, n], confidence) for n in range(N)])
            low, high = bounds[:, 0], bounds[:, 1]
    n = np.arange(1, N + 1)
    return pd.DataFrame({"arm": arm, "trials": n, "cost_h": n * per_trial, "expected_best": point,
                         "low": low, "high": high, "seeds": S, "note": note})


def best_single_trial(st: StudyTable, arm: str, failure_value: float, replicates: int = 1000,
                      confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Secondary table, E[max_n] of single-seed trials (includes seed luck; not a tuning measure):
    columns ``arm, trials, cost_h, best_single_trial, low, high, seeds`` for n = 1…N."""
    rows = st.arm_rows(arm)
    score = st.scored(rows, failure_value)
    finished = score.notna()
    values = score[finished].to_numpy(dtype=float)
    seeds_of = rows.seed[finished].to_numpy()
    N = len(values)
    if N == 0:
        return pd.DataFrame(columns=SECONDARY_COLUMNS)
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
    return pd.DataFrame({"arm": arm, "trials": n, "cost_h": n * per_trial, "best_single_trial": point,
                         "low": low, "high": high, "seeds": len(seeds)})


def study_curves(st: StudyTable, settings: dict, secondary: bool = False) -> pd.DataFrame:
    """The headline curve (or, with ``secondary``, the best single-seed trial) of every arm, stacked."""
    curve, columns = (best_single_trial, SECONDARY_COLUMNS) if secondary else (expected_best, COLUMNS)
    s = settings
    frames = [curve(st, arm, s["failure_value"], s["bootstrap"], s["confidence"], s["seed"]) for arm in st.arms]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


__all__ = ["best_single_trial", "expected_best", "expected_max", "held_out_curves", "selection_weights",
           "study_curves"]
