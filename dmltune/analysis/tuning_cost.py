"""What an arm's search pays before it reaches the reference, in closed form, with seed noise.

A configuration *reaches the target* when its validation mean over seeds (failures penalised) is
at least the reference's mean − δ. Take the arm's N finished trials (every configuration × seed, as
run) in a uniformly random order; m of them are usable trials of configurations that reach it.

- Expected trials to the first such trial: (N + 1)/(m + 1) (the first of m marked items among N in
  random order).
- Expected cost to it: Σ_{unmarked} c_i/(m + 1) + Σ_{marked} c_j/m (an unmarked trial comes before
  every marked one with probability 1/(m + 1); a marked one is the first marked with probability 1/m).
- Trials needed to reach it with probability p: the smallest n with
  1 − C(N − m, n)/C(N, n) ≥ p (sampling without replacement).

Intervals come from a bootstrap over seeds: the study's seeds are drawn with replacement, and the
reference mean, every configuration's mean, m and N are recomputed from the drawn seeds' trials;
so the interval shows how much the answer moves with seed noise, not only with the order of trials.

The numbers are reported only for an arm whose verdict is ``matched`` (:mod:`.verdict`); for the
others "trials to match" is not a claim the study can make.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .trials import StudyTable


def _first_hit(hits, trials, hit_cost, total_cost):
    """The closed form: expected trials and cost up to the first of ``hits`` marked trials among
    ``trials`` in uniformly random order (inf where there is no hit). Works on arrays."""
    with np.errstate(invalid="ignore", divide="ignore"):
        expected_trials = np.where(hits > 0, (trials + 1) / (hits + 1), np.inf)
        expected_cost = np.where(hits > 0, (total_cost - hit_cost) / (hits + 1) + hit_cost / np.maximum(hits, 1), np.inf)
    return expected_trials, expected_cost


def first_match(hits: np.ndarray, cost: np.ndarray) -> tuple[float, float]:
    """Expected trials and cost up to and including the first hit, over uniformly random orders
    (NaN when there is no hit)."""
    hits = np.asarray(hits, dtype=bool)
    cost = np.asarray(cost, dtype=float)
    if not hits.any():
        return math.nan, math.nan
    t, c = _first_hit(hits.sum(), len(hits), cost[hits].sum(), cost.sum())
    return float(t), float(c)


def trials_for_probability(n_trials: int, n_hits: int, probability: float) -> float:
    """Smallest n such that n trials drawn without replacement from n_trials include one of the
    n_hits hits with at least ``probability`` (NaN when there is no hit)."""
    if n_hits <= 0 or n_trials <= 0:
        return math.nan
    miss = 1.0
    for n in range(1, n_trials + 1):
        miss *= (n_trials - n_hits - (n - 1)) / (n_trials - (n - 1))
        if 1 - miss >= probability - 1e-12:
            return float(n)
    return float(n_trials)


@dataclass
class Cells:
    """An arm's finished trials aggregated per (configuration, seed) cell, as C × S arrays."""

    keys: list[str]
    seeds: list
    value: np.ndarray        # mean validation value of the cell (failures penalised), NaN if none
    finished: np.ndarray     # finished trials in the cell
    usable: np.ndarray       # usable trials in the cell
    cost: np.ndarray         # hours of the cell's finished trials
    usable_cost: np.ndarray  # hours of its usable trials


def cells(st: StudyTable, arm: str, seeds: list, failure_value: float) -> Cells:
    key = ("cells", arm, tuple(seeds), failure_value)
    if key not in st.cache:
        st.cache[key] = _cells(st, arm, seeds, failure_value)
    return st.cache[key]


def _cells(st: StudyTable, arm: str, seeds: list, failure_value: float) -> Cells:
    from .selection import config_keys

    rows = st.arm_rows(arm)
    score = st.scored(rows, failure_value).to_numpy(dtype=float)
    finished = ~np.isnan(score)
    usable = st.usable(rows).to_numpy(dtype=bool)
    cost = np.where(finished, rows.cost_h.to_numpy(dtype=float), 0.0)
    key_of = config_keys(rows, st.dims[arm]).to_numpy()
    keys = sorted(set(key_of))
    k_index = {k: i for i, k in enumerate(keys)}
    s_index = {s: j for j, s in enumerate(seeds)}
    ki = np.array([k_index[k] for k in key_of], dtype=int)
    si = np.array([s_index.get(s, -1) for s in rows.seed.to_numpy()], dtype=int)
    keep = si >= 0
    ki, si = ki[keep], si[keep]
    shape = (len(keys), len(seeds))

    def add(values) -> np.ndarray:
        out = np.zeros(shape)
        np.add.at(out, (ki, si), np.asarray(values, dtype=float)[keep])
        return out

    n_finished = add(finished)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(n_finished > 0, add(np.where(finished, score, 0.0)) / n_finished, np.nan)
    return Cells(keys, list(seeds), value, n_finished, add(usable), add(cost), add(np.where(usable, cost, 0.0)))


def seed_draws(n_seeds: int, replicates: int, seed: int) -> np.ndarray:
    """How often each seed is drawn, per bootstrap replicate (replicates × n_seeds counts)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_seeds, size=(replicates, n_seeds))
    return np.stack([np.bincount(d, minlength=n_seeds) for d in draws])


def _weighted_means(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean of each row of values (C × S, NaN = absent) under each weight row (B × S): C × B."""
    have = np.isfinite(values)
    total = np.where(have, values, 0.0) @ weights.T
    count = have.astype(float) @ weights.T
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def match_costs(arm: Cells, ref_values: np.ndarray, delta: float, weights: np.ndarray):
    """Expected trials and cost to the first matching trial under each seed weighting (B × S).

    Returns (trials, cost, hits, finished) arrays of length B; inf where nothing reaches the target."""
    target = _weighted_means(ref_values[None, :], weights)[0] - delta          # B
    means = _weighted_means(arm.value, weights)                                # C × B
    reaches = np.nan_to_num(means, nan=-np.inf) >= target[None, :]
    hits = (reaches * (arm.usable @ weights.T)).sum(axis=0)
    finished = (arm.finished @ weights.T).sum(axis=0)
    hit_cost = (reaches * (arm.usable_cost @ weights.T)).sum(axis=0)
    trials, cost = _first_hit(hits, finished, hit_cost, (arm.cost @ weights.T).sum(axis=0))
    return trials, cost, hits, finished


def percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    lo, hi = 50 * (1 - confidence), 50 * (1 + confidence)
    s = np.asarray(samples, dtype=float)
    s = s[~np.isnan(s)]
    if len(s) == 0:
        return math.nan, math.nan
    return float(np.percentile(s, lo, method="lower")), float(np.percentile(s, hi, method="higher"))


__all__ = ["Cells", "cells", "first_match", "match_costs", "percentile_interval", "seed_draws",
           "trials_for_probability"]
