"""Verdicts of the staged designs, and the plans of their next stage or look (docs/analysis.md,
"Designs"). Results rows carry a ``stage`` column: the stage (two_stage: 1 or 2) or look
(sequential: 1 … K) that ran them; a table without one is stage 1.

**two_stage** (Thall, Simon and Ellenberg 1988: selection, then confirmation on fresh data). Stage 1
runs every configuration on the select seeds; the arm's best configuration on validation (the
usual selection) and the reference then run fresh confirm seeds. With α = 1 − confidence:

- ``matched`` when the paired one-sided lower bound of the selected configuration's gap on the
  confirm seeds *alone*, at level 1 − α, is ≥ −δ. The selection used other data, so no
  multiplicity correction is due, and the variance is that configuration's own (pooling it from
  stage 1 gave 11–17% false matches in the simulations behind the issue);
- ``not_matched`` when every configuration is shown short at 1 − α/2, at the end of stage 1 (the
  arm then skips stage 2), or at the end of stage 2 with the selected configuration's bound over both
  stages (its stage-1 seeds are biased upward by the selection, which only makes its bound
  conservative) and the others' stage-1 bounds: two looks at α/2 each;
- an arm with a single configuration (or a PBT population) selects nothing: its stage 2 is more
  seeds, and its verdict uses all of them (one look for a match at α, two for a shortfall at α/2).

**sequential** (group-sequential, Jennison and Turnbull 2000, with Bonferroni spending α/K per
look): at look k every configuration still in play has n_k seeds; the arm is ``matched`` when a
simultaneous lower bound (:mod:`.blocked`, paying for all C configurations) at 1 − α/K clears 0;
a configuration whose upper bound at 1 − α/K is below 0 is dropped (shown short) and gets no more
seeds; the arm is ``not_matched`` when every configuration is dropped. Summed over K looks, the
error rates stay ≤ α.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .differences import paired
from .verdict import INCONCLUSIVE, MATCHED, NOT_MATCHED, Verdict, bounds

STAGE = "stage"


def confirms_selection(search_mode: str | None, searched: bool) -> bool:
    """Does a later stage of this arm confirm one selected configuration (True), or run the arm's own
    procedure on more seeds (False: a single configuration, or a PBT population)?"""
    return searched and search_mode != "pbt"


def stage_of(rows: pd.DataFrame) -> np.ndarray:
    if STAGE not in rows:
        return np.ones(len(rows), dtype=int)
    return rows[STAGE].fillna(1).astype(int).to_numpy()


# ---------------------------------------------------------------- two-stage, over arrays
def two_stage_verdict(arm: str, A1: np.ndarray, b1: np.ndarray, a2: np.ndarray, b2: np.ndarray, sel: int,
                      delta: float, alpha: float, power: float, labels: list[str],
                      cost_per_trial: float = math.nan) -> Verdict:
    """``A1`` (C × stage-1 seeds) and ``b1``: stage 1; ``a2`` and ``b2`` over the confirm seeds (NaN
    where missing; empty when stage 2 has not run); ``sel``: the selected configuration's row."""
    from .advice import confirm_seeds, planned_effect

    A1 = np.atleast_2d(np.asarray(A1, dtype=float))
    C = len(A1)
    bd1 = bounds(A1, b1, alpha, alpha / 2)
    base = dict(arm=arm, method="paired", seed_correlation=math.nan, configurations=C,
                tested=int(np.isfinite(bd1.upper).sum()), seeds=float(np.median(np.isfinite(A1).sum(axis=1))),
                lower=bd1.lower, upper=bd1.upper, mean=bd1.mean, se=bd1.se, df=bd1.df, design="two_stage")
    label = labels[sel] if 0 <= sel < C else "–"
    if C and np.all(bd1.upper + delta < 0):
        best = int(np.nanargmax(np.where(np.isfinite(bd1.mean), bd1.mean, -np.inf)))
        return Verdict(verdict=NOT_MATCHED, best_configuration=labels[best], gap=float(bd1.mean[best]),
                       gap_lower=-math.inf, gap_upper=float(bd1.upper[best]), seeds_needed=math.nan,
                       reason=f"stage 1: all {C} configuration(s) fall short of the reference − δ at "
                              f"{1 - alpha / 2:.1%} confidence", **base)
    a2, b2 = np.asarray(a2, dtype=float), np.asarray(b2, dtype=float)
    d = paired(a2[None, :], b2) if len(a2) else None
    n2 = int(d.n[0]) if d is not None else 0
    if n2 < 2:
        return Verdict(verdict=INCONCLUSIVE, best_configuration=label, gap=math.nan, gap_lower=math.nan,
                       gap_upper=math.nan, seeds_needed=math.nan,
                       reason="stage 2 has not run yet: `dmltune resume` runs it (the selected configuration "
                              "and the reference on fresh seeds)", **base)
    gap2, low2 = float(d.mean[0]), float(d.lower(1 - alpha)[0])
    if low2 + delta >= 0:
        return Verdict(verdict=MATCHED, best_configuration=label, gap=gap2, gap_lower=low2,
                       gap_upper=float(d.upper(1 - alpha)[0]), seeds_needed=math.nan,
                       reason=f"stage 2: {label} is within δ of the reference on {n2} fresh seeds at "
                              f"{1 - alpha:.0%} confidence (paired, no multiplicity: selected on stage 1)",
                       **{**base, "seeds": float(n2)})
    both = paired(np.concatenate([A1[sel], a2])[None, :], np.concatenate([b1, b2]))
    up_sel = float(both.upper(1 - alpha / 2)[0])
    others = np.delete(bd1.upper, sel)
    if up_sel + delta < 0 and np.all(others + delta < 0):
        return Verdict(verdict=NOT_MATCHED, best_configuration=label, gap=gap2, gap_lower=low2, gap_upper=up_sel,
                       seeds_needed=math.nan, reason=f"stage 2: every configuration falls short of the reference − δ "
                                                     f"at {1 - alpha / 2:.1%} confidence", **base)
    var_d = float(d.se[0] ** 2 * n2) if np.isfinite(d.se[0]) else math.nan
    effect, goal = planned_effect(gap2, float(d.se[0]), delta, 1, 1 - alpha)
    need = confirm_seeds(effect, var_d, alpha, power) if goal == "match" else math.nan
    more = max(need - n2, 0) if math.isfinite(need) else math.nan
    why = f"stage 2: {label}'s gap {gap2:+.4f} on {n2} fresh seeds is within the seed noise"
    if math.isfinite(more):
        why += (f"; about {need:.0f} confirm seeds in all would have decided with {power:.0%} power ({2 * more:.0f} "
                "more trials); confirming again on these data would be a second look, so run a new study (or "
                "design sequential) rather than adding seeds here")
    elif goal == "short":
        why += "; its estimate is below the target, but the other configurations are not all shown short"
    return Verdict(verdict=INCONCLUSIVE, best_configuration=label, gap=gap2, gap_lower=low2,
                   gap_upper=float(d.upper(1 - alpha)[0]), seeds_needed=need, reason=why,
                   **{**base, "seeds": float(n2)})


def pooled_two_look_verdict(arm: str, A: np.ndarray, b: np.ndarray, first: np.ndarray, bfirst: np.ndarray,
                            delta: float, alpha: float, power: float, labels: list[str],
                            cost_per_trial: float = math.nan) -> Verdict:
    """An arm whose stage 2 is more seeds (nothing selected): shortfall looked at after stage 1 and
    at the end (α/2 each), a match at the end only (α)."""
    from .verdict import arm_verdict

    A = np.atleast_2d(np.asarray(A, dtype=float))
    A1 = np.where(first, A, np.nan)
    b1 = np.where(bfirst, b, np.nan)
    cols = pd.RangeIndex(A.shape[1])
    look1 = bounds(A1, b1, alpha, alpha / 2)
    if len(A) and np.all(look1.upper + delta < 0):
        v = arm_verdict(arm, pd.DataFrame(A1, columns=cols), pd.Series(b1, index=cols), delta, 1 - alpha, power,
                        labels, alpha_short=alpha / 2, cost_per_trial=cost_per_trial)
        v.reason = "stage 1: " + v.reason
    else:
        v = arm_verdict(arm, pd.DataFrame(A, columns=cols), pd.Series(b, index=cols), delta, 1 - alpha, power,
                        labels, alpha_short=alpha / 2, cost_per_trial=cost_per_trial)
    v.design = "two_stage"
    return v


# ---------------------------------------------------------------- sequential, over arrays
@dataclass
class SequentialState:
    verdict: Verdict
    look: int                                  # the last look analysed
    short: np.ndarray                          # configurations dropped (shown short)
    decided_at: int | None = None
    history: list = field(default_factory=list)   # per look: (look, active configurations, decision)

    @property
    def active(self) -> np.ndarray:
        return ~self.short


def sequential_verdict(arm: str, A: np.ndarray, L: np.ndarray, b: np.ndarray, bL: np.ndarray, looks: int,
                       delta: float, alpha: float, power: float, labels: list[str],
                       cost_per_trial: float = math.nan, seeds_at: tuple = ()) -> SequentialState:
    """Replay the looks: ``L`` (same shape as ``A``) and ``bL`` give the look that ran each cell
    (0: none). ``looks``: K, the planned looks (α/K each)."""
    from .verdict import arm_verdict

    A = np.atleast_2d(np.asarray(A, dtype=float))
    C = len(A)
    short = np.zeros(C, dtype=bool)
    last = int(max(np.max(L, initial=0), np.max(bL, initial=0)))
    cols = pd.RangeIndex(A.shape[1])
    a_k = alpha / looks
    history, verdict = [], None
    for k in range(1, max(last, 1) + 1):
        Ak = np.where((L >= 1) & (L <= k), A, np.nan)
        bk = np.where((bL >= 1) & (bL <= k), b, np.nan)
        bd = bounds(Ak, bk, a_k, a_k, total=C)
        active = ~short
        short |= active & (bd.upper + delta < 0)       # shown short: dropped (its lower bound is below 0 too)
        if (np.where(active, bd.lower, -np.inf) + delta >= 0).any():
            verdict = arm_verdict(arm, pd.DataFrame(np.where(active[:, None], Ak, np.nan), columns=cols),
                                  pd.Series(bk, index=cols), delta, 1 - alpha, power, labels,
                                  alpha_match=a_k, alpha_short=a_k, total=C)
            if verdict.verdict != MATCHED:  # the same bounds, so never; kept for safety
                verdict.verdict = MATCHED
            verdict.reason = f"look {k}: " + verdict.reason
            history.append((k, int(active.sum()), MATCHED))
            return _finish(verdict, k, short, k, history, A, bk)
        if short.all():
            verdict = arm_verdict(arm, pd.DataFrame(Ak, columns=cols), pd.Series(bk, index=cols), delta,
                                  1 - alpha, power, labels, alpha_match=a_k, alpha_short=a_k, total=C, advise=False)
            verdict.verdict = NOT_MATCHED
            which = "its configuration was" if C == 1 else f"each of its {C} configurations was"
            verdict.reason = (f"look {k}: {which} shown short of the reference − δ at {1 - a_k:.2%} confidence "
                              f"(α/{looks} per look)")
            history.append((k, int(active.sum()), NOT_MATCHED))
            return _finish(verdict, k, short, k, history, A, bk)
        history.append((k, int((~short).sum()), INCONCLUSIVE))
    Ak = np.where(L >= 1, A, np.nan)
    bk = np.where(bL >= 1, b, np.nan)
    verdict = arm_verdict(arm, pd.DataFrame(Ak, columns=cols), pd.Series(bk, index=cols), delta, 1 - alpha, power,
                          labels, alpha_match=a_k, alpha_short=a_k, total=C, cost_per_trial=cost_per_trial)
    if verdict.verdict != INCONCLUSIVE:  # dropped configurations can make the plain verdict differ
        verdict.verdict = INCONCLUSIVE
    remaining = int((~short).sum())
    verdict.reason = (f"undecided after look {last} of {looks}: {remaining} configuration(s) still in play"
                      + (f"; the next look runs them on {seeds_at[last]} seeds" if last < len(seeds_at) else
                         "; the looks are spent: `dmltune extend` with more looks or max_seeds would go on"))
    return _finish(verdict, last, short, None, history, A, bk)


def _finish(verdict: Verdict, look: int, short, decided_at, history, A, b) -> SequentialState:
    verdict.design = "sequential"
    verdict.seeds = float(np.median(np.isfinite(A).sum(axis=1))) if len(A) else 0.0
    return SequentialState(verdict, look, short, decided_at, history)


__all__ = ["STAGE", "SequentialState", "confirms_selection", "pooled_two_look_verdict", "sequential_verdict",
           "stage_of", "two_stage_verdict"]
