"""What would decide an inconclusive arm, and what it would cost (docs/analysis.md, "Advice").

**Selection bias.** The best configuration's estimated gap ĝ is the largest of C noisy estimates,
so it is biased upward by about se·e_C, with e_C the expected largest of C standard normals (Blom's
approximation e_C ≈ Φ⁻¹((C − 0.375)/(C + 0.25)); e_1 = 0). With the corrected gap ĝ_c = ĝ − se·e_C
the advice plans for

- e = δ, "the best is exactly as good as the reference", when that is plausible (ĝ_c + z·se ≥ 0,
  z the two-sided normal quantile at the study's confidence); never for a best better than the
  reference, which would promise a decision with fewer seeds than the equal case needs;
- e = δ + ĝ_c when the data say the best is worse but still within δ;
- showing the arm short, with |e| = −(δ + ĝ_c), when δ + ĝ_c ≤ 0.

**Designs costed** (n: seeds, C: configurations, σ²_d: the variance of one seed's difference):

- *fixed*: every configuration and the reference on n seeds, (C + 1)·n trials. A match needs the
  blocked model's Dunnett bound (max-t quantile q_C at df C(n − 1)) to clear 0:
  power = P(t'(df, e/√(σ²_d/n)) > q_C); for the search over n, q_C(df) is approximated by the t
  quantile at the per-comparison level of the max-normal quantile, Φ(q_C(∞)) (one max-t computation
  instead of one per n tried).
- *two_stage*: the configurations already run select one; it and the reference run n₂ fresh seeds
  and a paired t-test at level α decides, 2·n₂ more trials (section "Designs").

The cheaper one that reaches the power is named, with its trials and cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

MAX_CONFIRM = 1000


@dataclass
class Advice:
    seeds: float                    # fixed design: seeds per configuration that would decide
    reason: str
    design: str = ""                # the cheapest design that would decide ("" when none)
    trials: float = math.nan        # its further trials
    cost: float = math.nan          # and their cost (the table's cost unit)
    confirm_seeds: float = math.nan  # two_stage: fresh seeds for the selected configuration and the reference
    options: list = field(default_factory=list)   # every design costed: dicts design, seeds, trials, cost


def expected_max_normal(C: int) -> float:
    """Blom's approximation of E[max of C independent standard normals] (0 for C = 1)."""
    return float(stats.norm.ppf((C - 0.375) / (C + 0.25))) if C >= 1 else 0.0


def planned_effect(gap: float, se: float, delta: float, C: int, confidence: float = 0.95) -> tuple[float, str]:
    """(effect, goal): the θ to plan for, corrected for selection, and whether it plans to show a
    ``match`` or a ``short`` arm (see the module docstring)."""
    if not math.isfinite(gap):
        return math.nan, "match"
    se = se if math.isfinite(se) else 0.0
    corrected = gap - se * expected_max_normal(C)
    if corrected + stats.norm.ppf(0.5 + confidence / 2) * se >= 0:
        return delta, "match"                 # as good as the reference is plausible: plan for exactly that
    if delta + corrected > 0:
        return delta + corrected, "match"
    return delta + corrected, "short"


def confirm_seeds(effect: float, var_d: float, alpha: float, power: float, cap: int = MAX_CONFIRM) -> float:
    """Fresh seeds n₂ at which a paired one-sided t-test at ``alpha`` shows θ > 0 (or < 0) with
    ``power`` when the true θ is ``effect``; inf beyond ``cap``."""
    from .verdict import seeds_needed

    n = seeds_needed(effect, var_d, alpha, power, paired=True)
    return n if not (math.isfinite(n) and n > cap) else math.inf


def fixed_seeds(effect: float, var_d: float, alpha: float, power: float, C: int, goal: str) -> float:
    """Seeds per configuration for the fixed design under the blocked model (see module docstring)."""
    from .blocked import max_t_quantile
    from .verdict import seeds_needed

    corr = np.full((C, C), 0.5)
    np.fill_diagonal(corr, 1.0)
    if goal == "match":
        # the max-t quantile at df = ∞ once, then the t quantile at its per-comparison level for each
        # df the search tries (a planning approximation, a little larger: within 3% for df ≥ 24)
        level = float(stats.norm.cdf(max_t_quantile(1 - alpha, math.inf, corr)))
        quantile = lambda n: stats.t.ppf(level, C * (n - 1.0))  # noqa: E731
    else:
        quantile = lambda n: stats.t.ppf(1 - alpha, C * (n - 1.0))  # noqa: E731
    # the df of the noncentral t is that of the pooled variance, C(n − 1), not n − 1
    return seeds_needed(effect, var_d, alpha, power, paired=True, quantile=quantile, df_of=lambda n: C * (n - 1.0)) \
        if C > 1 else seeds_needed(effect, var_d, alpha, power, paired=True)


def difference_variance(A: np.ndarray, b: np.ndarray, bd, row: int) -> float:
    """The variance of one seed's difference for configuration ``row``: 2σ̂² under the blocked model,
    else its own (paired: var of d; Welch: var_a + var_b, borrowed from the other side if missing)."""
    from .differences import pooled_variance

    if bd.pooled is not None and bd.pooled[row] and math.isfinite(bd.sigma2):
        return 2 * bd.sigma2
    n = np.isfinite(A[row] - b).sum() if bd.method != "welch" else 0
    if n >= 2 and np.isfinite(bd.se[row]):
        return float(bd.se[row] ** 2 * n)
    var_a, var_b = pooled_variance(A), pooled_variance(b[None, :])
    var_a = var_b if not math.isfinite(var_a) else var_a
    var_b = var_a if not math.isfinite(var_b) else var_b
    return var_a + var_b


def advise_fixed(A: np.ndarray, b: np.ndarray, bd, best: int, delta: float, alpha: float, power: float,
                 tested: int, cost_per_trial: float = math.nan, selected: str = "the selected configuration") -> Advice:
    """Advice for an arm left inconclusive by the fixed design."""
    C = len(A)
    gap, se = float(bd.mean[best]), float(bd.se[best])
    effect, goal = planned_effect(gap, se, delta, max(tested, 1), 1 - alpha)
    var_d = difference_variance(A, b, bd, best)
    n_now = int(np.median(np.isfinite(A).sum(axis=1))) if C else 0
    seeds = fixed_seeds(effect, var_d, alpha, power, max(C, 1), goal)
    options = []
    if math.isfinite(seeds):
        extra = max(seeds - n_now, 0) * (C + 1)
        options.append({"design": "fixed", "seeds": seeds, "trials": extra, "cost": extra * cost_per_trial})
    if goal == "match" and C > 1:
        n2 = confirm_seeds(effect, var_d, alpha, power)
        if math.isfinite(n2):
            options.append({"design": "two_stage", "seeds": n2, "trials": 2 * n2, "cost": 2 * n2 * cost_per_trial})
    if tested == 0:
        why = "no configuration has two seeds to estimate its spread"
    else:
        why = f"the best configuration's gap {gap:+.4f} is within the seed noise"
    if math.isnan(seeds) and not options:
        return Advice(seeds, why + "; the seed variance is unknown, so the seeds needed cannot be estimated")
    if not options:
        return Advice(seeds, why + "; its estimate is too close to the target for any number of seeds up to 10000")
    best_option = min(options, key=lambda o: o["trials"])
    if best_option["design"] == "two_stage":
        what = (f"cheapest to decide: design two_stage, confirming {selected} and the reference on about "
                f"{best_option['seeds']:.0f} fresh seeds ({best_option['trials']:.0f} trials)")
    else:
        what = (f"cheapest to decide: about {best_option['seeds']:.0f} seeds per configuration "
                f"({best_option['trials']:.0f} more trials)")
    if math.isfinite(seeds) and best_option["design"] != "fixed":
        what += f"; the fixed design would need about {seeds:.0f} seeds per configuration"
    what += f", {power:.0%} power, planned for a gap of {effect - delta:+.4f} (selection-corrected)"
    return Advice(seeds, f"{why}; {what}", best_option["design"], best_option["trials"], best_option["cost"],
                  best_option["seeds"] if best_option["design"] == "two_stage" else math.nan, options)


__all__ = ["Advice", "advise_fixed", "confirm_seeds", "expected_max_normal", "fixed_seeds", "planned_effect"]
