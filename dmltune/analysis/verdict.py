"""Does an arm match the reference? A verdict that accounts for seed noise on both sides and for
the number of configurations tried (docs/analysis.md, "Verdicts").

For configuration c of an arm, θ_c = μ_c − μ_ref + δ, with μ the true (expected over seeds)
validation value. The arm is

- ``matched`` when max_c θ_c ≥ 0 is shown at the study's confidence: some configuration's lower
  bound on θ_c is ≥ 0, with the C lower bounds holding *together* at 1 − α (picking the best of C
  is C chances to be lucky). Where the arm shares seeds with the reference the bounds come from the
  blocked two-way model and a Dunnett-type max-t quantile (:mod:`.blocked`); otherwise from each
  configuration's own comparison with Bonferroni's α/C;
- ``not_matched`` when every θ_c < 0 is shown: every configuration's one-sided upper bound at level
  1 − α is < 0 (an intersection–union test: "all below" is shown by showing each, no correction);
- ``inconclusive`` otherwise, with advice on what would decide (:mod:`.advice`).

α = 1 − confidence. A design with several looks (:mod:`.designs`) passes its own α per look.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from . import blocked
from .differences import compare, seed_correlation, welch_df

MATCHED, NOT_MATCHED, INCONCLUSIVE = "matched", "not_matched", "inconclusive"
MAX_SEEDS = 10_000


@dataclass
class Verdict:
    arm: str
    verdict: str
    method: str                       # "blocked", "paired" or "welch"
    seed_correlation: float           # pooled ρ between the arm's configurations and the reference
    configurations: int               # C, the configurations tried
    tested: int                       # configurations with an estimable bound
    best_configuration: str           # highest estimated θ_c
    gap: float                        # its mean − reference mean (θ_c − δ)
    gap_lower: float                  # simultaneous lower bound of the gap
    gap_upper: float                  # upper bound of the gap (level 1 − α)
    seeds: float                      # median seeds per configuration
    seeds_needed: float               # inconclusive only: seeds per configuration that would decide
    reason: str
    lower: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)  # per configuration: gap
    upper: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)  # bounds as above, − δ
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)   # per configuration: gap
    se: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)     # its standard error
    df: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    fallback: int = 0                 # blocked: configurations that failed the variance check
    sigma2: float = math.nan          # blocked: the pooled residual variance
    design: str = "fixed"
    advice: object = None             # inconclusive: :class:`~.advice.Advice`


def seeds_needed(effect: float, var_diff_per_seed: float, alpha: float, power: float, *, paired: bool,
                 var_a: float = math.nan, var_b: float = math.nan, quantile=None, df_of=None) -> float:
    """Smallest n ≥ 2 seeds (per configuration, and for the reference) at which a one-sided t-test
    at level ``alpha`` detects a true difference of ``effect`` with probability ``power``
    (noncentral t). ``quantile(n)`` and ``df_of(n)``: the critical value and degrees of freedom at n
    seeds when they are not the t-test's (e.g. the blocked model's max-t with C(n − 1) degrees of
    freedom). ``inf`` when no n ≤ MAX_SEEDS does; NaN when the spread is unknown."""
    if not (math.isfinite(effect) and math.isfinite(var_diff_per_seed)):
        return math.nan
    if effect == 0:
        return math.inf
    if var_diff_per_seed <= 0:
        return 2.0

    def achieved(n: int) -> float:
        df = df_of(n) if df_of is not None else (n - 1.0 if paired else welch_df(var_a, var_b, n))
        nc = abs(effect) / math.sqrt(var_diff_per_seed / n)
        crit = quantile(n) if quantile is not None else stats.t.ppf(1 - alpha, df)
        return float(stats.nct.sf(crit, df, nc))

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


@dataclass(frozen=True)
class Bounds:
    """Per configuration: gap estimate (θ_c − δ), its standard error and df, the simultaneous lower
    bound and the upper bound, and how they were computed."""

    mean: np.ndarray
    se: np.ndarray
    df: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    method: str
    fallback: int = 0
    sigma2: float = math.nan
    pooled: np.ndarray | None = None      # blocked: configurations that kept the pooled variance


def shares_seeds(A: np.ndarray, b: np.ndarray) -> bool:
    """Some configuration ran at least two seeds that the reference also ran."""
    both = np.isfinite(np.atleast_2d(A)) & np.isfinite(np.asarray(b, dtype=float))[None, :]
    return bool((both.sum(axis=1) >= 2).any())


def bounds(A: np.ndarray, b: np.ndarray, alpha_match: float, alpha_short: float, total: int | None = None,
           pairing: bool | None = None) -> Bounds:
    """Lower bounds on every configuration's gap that hold together at 1 − ``alpha_match`` (paying
    for ``total`` configurations, default C), and each one's upper bound at 1 − ``alpha_short``.

    ``pairing`` None: the blocked model where the arm shares seeds with the reference, else Welch;
    True/False: each configuration's own paired / Welch comparison (Bonferroni over ``total``)."""
    A = np.atleast_2d(np.asarray(A, dtype=float))
    b = np.asarray(b, dtype=float)
    C = len(A)
    total = max(total or C, C)
    if pairing is None and shares_seeds(A, b):
        f = blocked.fit(A, b)
        return Bounds(f.mean, f.se, f.df, blocked.simultaneous_lower(f, alpha_match, total),
                      blocked.upper_bounds(f, 1 - alpha_short), "blocked", int((~f.pooled & np.isfinite(f.mean)).sum()),
                      f.sigma2, f.pooled)
    use_paired = bool(pairing) if pairing is not None else False
    d = compare(A, b, use_paired)
    return Bounds(d.mean, d.se, d.df, d.lower(1 - alpha_match / total), d.upper(1 - alpha_short), d.method)


def arm_verdict(arm: str, values: pd.DataFrame, ref: pd.Series, delta: float, confidence: float,
                power: float = 0.8, labels: list[str] | None = None, pairing: bool | None = None, *,
                alpha_match: float | None = None, alpha_short: float | None = None, total: int | None = None,
                advise: bool = True, cost_per_trial: float = math.nan) -> Verdict:
    """``values``: one row per configuration, one column per seed (NaN: no finished trial), failed
    seeds already replaced by the failure value; ``ref``: the reference's values by seed.
    ``pairing``: None chooses (the blocked model where seeds are shared); True or False forces each
    configuration's own paired or Welch comparison. ``alpha_match`` / ``alpha_short`` (default
    1 − confidence): the error rates of this look; ``total``: the configurations to pay for."""
    alpha = 1 - confidence
    alpha_match = alpha if alpha_match is None else alpha_match
    alpha_short = alpha if alpha_short is None else alpha_short
    ref = ref.astype(float).dropna()
    seeds_all = values.columns.union(ref.index)
    A = values.reindex(columns=seeds_all).to_numpy(dtype=float)
    b = ref.reindex(seeds_all).to_numpy(dtype=float)
    labels = labels or [str(k) for k in values.index]
    C = len(A)
    rho = seed_correlation(A, b) if C else math.nan
    seeds = float(np.median(np.isfinite(A).sum(axis=1))) if C else 0.0
    if C == 0 or len(ref) == 0 or not np.isfinite(A).any():
        why = "the reference has no usable trial" if len(ref) == 0 else "the arm has no finished trial"
        method = "welch" if pairing is False else ("paired" if pairing else "blocked")
        return Verdict(arm, INCONCLUSIVE, method, rho, C, 0, "–", math.nan, math.nan, math.nan, seeds, math.nan,
                       why, np.full(C, -np.inf), np.full(C, np.inf))
    bd = bounds(A, b, alpha_match, alpha_short, total, pairing)
    lower, upper, theta = bd.lower + delta, bd.upper + delta, bd.mean + delta
    tested = int(np.isfinite(lower).sum())
    best = int(np.argmax(np.where(np.isfinite(theta), theta, -np.inf)))
    pick = int(np.argmax(lower)) if np.max(lower) >= 0 else best

    def verdict(kind: str, needed: float, reason: str, advice=None) -> Verdict:
        return Verdict(arm, kind, bd.method, rho, C, tested, labels[pick], float(theta[pick] - delta),
                       float(lower[pick] - delta), float(upper[pick] - delta), seeds, needed, reason,
                       lower - delta, upper - delta, bd.mean, bd.se, bd.df, bd.fallback, bd.sigma2, "fixed", advice)

    plural = "s" * (C != 1)
    how = ("blocked model, Dunnett-type bound" if bd.method == "blocked" else f"{bd.method}, Bonferroni") \
        + f" over {max(total or C, C)} configuration{'s' * (max(total or C, C) != 1)}"
    if np.max(lower) >= 0:
        return verdict(MATCHED, math.nan, f"{labels[pick]} is within δ of the reference at {1 - alpha_match:.0%} "
                                          f"confidence ({how})")
    if np.all(upper < 0):
        return verdict(NOT_MATCHED, math.nan, f"all {C} configuration{plural} fall short of the reference − δ "
                                              f"at {1 - alpha_short:.0%} confidence")
    if not advise:
        return verdict(INCONCLUSIVE, math.nan, "undecided at this look")
    from .advice import advise_fixed

    adv = advise_fixed(A, b, bd, best, delta, alpha, power, tested, cost_per_trial)
    return verdict(INCONCLUSIVE, adv.seeds, adv.reason, adv)


__all__ = ["Bounds", "INCONCLUSIVE", "MATCHED", "NOT_MATCHED", "Verdict", "arm_verdict", "bounds", "seeds_needed",
           "shares_seeds"]
