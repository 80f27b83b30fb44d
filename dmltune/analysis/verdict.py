"""Does an arm match the reference? A verdict that accounts for seed noise on both sides and for
the number of configurations tried (docs/analysis.md, "Verdicts").

For configuration c of an arm, θ_c = μ_c − μ_ref + δ, with μ the true (expected over seeds)
validation value. The arm

- ``matched`` when max_c θ_c ≥ 0 is shown at the study's confidence: some configuration's
  one-sided lower bound on θ_c at level 1 − α/C is ≥ 0 (Bonferroni over the C configurations
  tried: picking the best of C is C chances to be lucky);
- ``not_matched`` when every θ_c < 0 is shown: every configuration's one-sided upper bound at level
  1 − α is < 0 (an intersection–union test: "all below" is shown by showing each, no correction);
- ``inconclusive`` otherwise, with the seeds per configuration that would decide (power analysis).

α = 1 − confidence. θ_c is estimated by a paired difference over shared seeds or by Welch's
(:mod:`.differences`), chosen once per arm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from .differences import choose_pairing, compare, pooled_variance, welch_df

MATCHED, NOT_MATCHED, INCONCLUSIVE = "matched", "not_matched", "inconclusive"
MAX_SEEDS = 10_000


@dataclass
class Verdict:
    arm: str
    verdict: str
    method: str                       # "paired" or "welch"
    seed_correlation: float           # pooled ρ between the arm's configurations and the reference
    configurations: int               # C, the configurations tried
    tested: int                       # configurations with an estimable bound
    best_configuration: str           # highest estimated θ_c
    gap: float                        # its mean − reference mean (θ_c − δ)
    gap_lower: float                  # Bonferroni lower bound of the gap (level 1 − α/C)
    gap_upper: float                  # upper bound of the gap (level 1 − α)
    seeds: float                      # median seeds per configuration
    seeds_needed: float               # inconclusive only: seeds per configuration that would decide
    reason: str
    lower: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)  # per configuration: gap
    upper: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)  # bounds as above, − δ


def seeds_needed(effect: float, var_diff_per_seed: float, alpha: float, power: float, *, paired: bool,
                 var_a: float = math.nan, var_b: float = math.nan) -> float:
    """Smallest n ≥ 2 seeds (per configuration, and for the reference) at which a one-sided t-test
    at level ``alpha`` detects a true difference of ``effect`` with probability ``power``
    (noncentral t). ``inf`` when no n ≤ MAX_SEEDS does; NaN when the spread is unknown."""
    if not (math.isfinite(effect) and math.isfinite(var_diff_per_seed)):
        return math.nan
    if effect == 0:
        return math.inf
    if var_diff_per_seed <= 0:
        return 2.0

    def achieved(n: int) -> float:
        df = n - 1.0 if paired else welch_df(var_a, var_b, n)
        nc = abs(effect) / math.sqrt(var_diff_per_seed / n)
        return float(stats.nct.sf(stats.t.ppf(1 - alpha, df), df, nc))

    if achieved(MAX_SEEDS) < power:
        return math.inf
    lo, hi = 2, MAX_SEEDS
    while lo < hi:
        mid = (lo + hi) // 2
        if achieved(mid) >= power:
            hi = mid
        else:
            lo = mid + 1
    return float(lo)


def _seeds_to_decide(A, b, use_paired: bool, rho: float, effect: float, delta: float, level: float,
                     power: float, tested: int) -> tuple[float, str]:
    """An inconclusive verdict's seeds needed per configuration (from the observed seed variances) and
    its reason. ``effect``: the best configuration's estimated gap + δ; ``level``: the test's α
    (α / C when proving a match, which pays for the C chances)."""
    var_a, var_b = pooled_variance(A), pooled_variance(b[None, :])
    if not math.isfinite(var_a):
        var_a = var_b                 # no configuration ran twice: borrow the reference's seed variance
    if not math.isfinite(var_b):
        var_b = var_a
    if use_paired and math.isfinite(rho):
        var_diff = max(var_a + var_b - 2 * rho * math.sqrt(var_a * var_b), 0.0)
    else:
        var_diff = var_a + var_b
    needed = seeds_needed(effect, var_diff, level, power, paired=use_paired, var_a=var_a, var_b=var_b)
    if tested == 0:
        why = "no configuration has two seeds to estimate its spread"
    else:
        why = f"the best configuration's gap {effect - delta:+.4f} is within the seed noise"
    if math.isfinite(needed):
        why += f"; about {needed:.0f} seeds per configuration would decide with {power:.0%} power"
    elif math.isnan(needed):
        why += "; the seed variance is unknown, so the seeds needed cannot be estimated"
    else:
        why += f"; its estimate is too close to the target for any number of seeds up to {MAX_SEEDS}"
    return needed, why


def arm_verdict(arm: str, values: pd.DataFrame, ref: pd.Series, delta: float, confidence: float,
                power: float = 0.8, labels: list[str] | None = None, pairing: bool | None = None) -> Verdict:
    """``values``: one row per configuration, one column per seed (NaN: no finished trial), failed
    seeds already replaced by the failure value; ``ref``: the reference's values by seed.
    ``pairing``: None chooses (:func:`~.differences.choose_pairing`); True or False forces it."""
    alpha = 1 - confidence
    ref = ref.astype(float).dropna()
    seeds_all = values.columns.union(ref.index)
    A = values.reindex(columns=seeds_all).to_numpy(dtype=float)
    b = ref.reindex(seeds_all).to_numpy(dtype=float)
    labels = labels or [str(k) for k in values.index]
    C = len(A)
    use_paired, rho = choose_pairing(A, b, confidence) if C else (False, math.nan)
    if pairing is not None:
        use_paired = pairing
    method = "paired" if use_paired else "welch"
    seeds = float(np.median(np.isfinite(A).sum(axis=1))) if C else 0.0
    if C == 0 or len(ref) == 0 or not np.isfinite(A).any():
        why = "the reference has no usable trial" if len(ref) == 0 else "the arm has no finished trial"
        return Verdict(arm, INCONCLUSIVE, method, rho, C, 0, "–", math.nan, math.nan, math.nan, seeds, math.nan,
                       why, np.full(C, -np.inf), np.full(C, np.inf))
    d = compare(A, b, use_paired)
    lower = d.lower(1 - alpha / C) + delta
    upper = d.upper(1 - alpha) + delta
    theta = d.mean + delta
    tested = int(np.isfinite(lower).sum())
    best = int(np.argmax(np.where(np.isfinite(theta), theta, -np.inf)))
    pick = int(np.argmax(lower)) if np.max(lower) >= 0 else best

    def verdict(kind: str, needed: float, reason: str) -> Verdict:
        return Verdict(arm, kind, method, rho, C, tested, labels[pick], float(theta[pick] - delta),
                       float(lower[pick] - delta), float(upper[pick] - delta), seeds, needed, reason,
                       lower - delta, upper - delta)

    plural = "s" * (C != 1)
    if np.max(lower) >= 0:
        return verdict(MATCHED, math.nan, f"{labels[pick]} is within δ of the reference at {confidence:.0%} "
                                          f"confidence (Bonferroni over {C} configuration{plural})")
    if np.all(upper < 0):
        return verdict(NOT_MATCHED, math.nan, f"all {C} configuration{plural} fall short of the reference − δ "
                                              f"at {confidence:.0%} confidence")
    needed, why = _seeds_to_decide(A, b, use_paired, rho, float(theta[best]), delta, alpha / C if theta[best] > 0
                                   else alpha, power, tested)
    return verdict(INCONCLUSIVE, needed, why)


__all__ = ["INCONCLUSIVE", "MATCHED", "NOT_MATCHED", "Verdict", "arm_verdict", "seeds_needed"]
