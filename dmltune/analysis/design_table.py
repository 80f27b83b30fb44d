"""The staged designs over a results table: each arm's verdict, the table of stages, and the plan of
the next stage or look that the runner asks for (:mod:`.designs` holds the statistics).

The runner records which stage ran each trial (the ``stage`` column); the same functions decide
the next stage while the study runs and replay every decision when `report` reads the table, so the
report always says what the run did."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from ..study.design_settings import Design, seed_sequence
from .designs import STAGE, confirms_selection, pooled_two_look_verdict, sequential_verdict, two_stage_verdict
from .selection import config_labels, configurations, seed_matrix
from .trials import StudyTable
from .verdict import INCONCLUSIVE, Verdict


def with_rows(st: StudyTable, final: pd.DataFrame) -> StudyTable:
    """The same study table over a subset of its final rows (derived tables recomputed)."""
    return dataclasses.replace(st, final=final, cache={})


def stage_column(final: pd.DataFrame) -> pd.Series:
    return final[STAGE].fillna(1).astype(int) if STAGE in final else pd.Series(1, index=final.index)


def confirming_arms(st: StudyTable, design: Design) -> list[str]:
    """two_stage arms whose stage 2 confirms one selected configuration."""
    if design.kind != "two_stage":
        return []
    return [a for a in st.arms if confirms_selection(st.search_mode(a), bool(st.dims[a]))]


def searched_in_stage1(st: StudyTable, arm: str) -> list[str]:
    rows = st.arm_rows(arm)
    from .trials import searched_columns

    return searched_columns(rows[stage_column(rows) == 1])


def selection_table(st: StudyTable, design: Design) -> StudyTable:
    """The rows that selection, cost and sensitivity read: under two_stage, a confirming arm's
    stage-1 rows (its stage 2 is one configuration on fresh seeds, judged apart); all rows otherwise."""
    arms = confirming_arms(st, design)
    if not arms:
        return st
    keep = ~st.final.arm.isin(arms) | (stage_column(st.final) == 1)
    sub = with_rows(st, st.final[keep])
    sub.dims = {a: (searched_in_stage1(st, a) if a in arms else st.dims[a]) for a in st.arms}
    return sub


def _by_seed(st: StudyTable, rows: pd.DataFrame, failure_value: float) -> pd.Series:
    values = st.scored(rows, failure_value).set_axis(rows.seed)
    return values.dropna().groupby(level=0).mean().astype(float)


def _stage_matrix(st: StudyTable, arm: str, values: pd.DataFrame) -> np.ndarray:
    """Per (configuration, seed) cell of ``values``: the stage or look that ran it (0: none)."""
    from .selection import config_keys

    rows = st.arm_rows(arm)
    frame = pd.DataFrame({"key": config_keys(rows, st.dims[arm]).to_numpy(), "seed": rows.seed.to_numpy(),
                          "stage": stage_column(rows).to_numpy()})
    piv = frame.groupby(["key", "seed"]).stage.max().unstack("seed")
    piv = piv.reindex(index=values.index, columns=values.columns)
    return piv.fillna(0).to_numpy(dtype=int) * np.isfinite(values.to_numpy(dtype=float))


def design_verdicts(st: StudyTable, settings: dict, design: Design, reference: str,
                    ref_values: pd.Series) -> dict[str, Verdict]:
    """Every non-reference arm's verdict under the study's staged design."""
    alpha, delta, power, fail = 1 - settings["confidence"], settings["delta"], settings["power"], settings["failure_value"]
    ref_rows = st.arm_rows(reference)
    ref_stage = pd.Series(stage_column(ref_rows).to_numpy(), index=ref_rows.seed.to_numpy()).groupby(level=0).max()
    out = {}
    from .compare import cost_per_trial

    confirming = set(confirming_arms(st, design))
    for arm in st.arms:
        if arm == reference:
            continue
        per_trial = cost_per_trial(st, arm)
        if design.kind == "two_stage" and arm in confirming:
            rows = st.arm_rows(arm)
            stage = stage_column(rows)
            st1 = selection_table(st, design)
            A1 = seed_matrix(st1, arm, fail)
            names = config_labels(st1, arm)
            labels = [names.get(k, str(k)) for k in A1.index]
            confirm = rows[stage >= 2]
            s1 = [s for s in A1.columns]
            b1 = ref_values.reindex(s1).to_numpy(dtype=float)
            a2s = _by_seed(st, confirm, fail)
            sel = _selected_row(st1, arm, A1, confirm, fail)
            seeds2 = sorted(set(a2s.index) | set(ref_stage[ref_stage >= 2].index), key=str)
            b2 = ref_values.reindex(seeds2).to_numpy(dtype=float)
            a2 = a2s.reindex(seeds2).to_numpy(dtype=float)
            out[arm] = two_stage_verdict(arm, A1.to_numpy(dtype=float), b1, a2, b2, sel, delta, alpha, power, labels,
                                         per_trial)
            continue
        values = seed_matrix(st, arm, fail)
        names = config_labels(st, arm)
        labels = [names.get(k, str(k)) for k in values.index]
        seeds = values.columns.union(ref_values.index)
        A = values.reindex(columns=seeds)
        b = ref_values.reindex(seeds).to_numpy(dtype=float)
        L = _stage_matrix(st, arm, A)
        bL = ref_stage.reindex(seeds).fillna(0).to_numpy(dtype=int) * np.isfinite(b)
        if design.kind == "two_stage":
            out[arm] = pooled_two_look_verdict(arm, A.to_numpy(dtype=float), b, L == 1, bL == 1, delta, alpha, power,
                                               labels, per_trial)
        else:
            seeds_at = tuple(design.looks)
            out[arm] = sequential_verdict(arm, A.to_numpy(dtype=float), L, b, bL, len(design.looks), delta, alpha,
                                          power, labels, per_trial, seeds_at).verdict
    return out


def _selected_row(st1: StudyTable, arm: str, A1: pd.DataFrame, confirm: pd.DataFrame, fail: float) -> int:
    """The row of ``A1`` that stage 2 confirms: the configuration of the stage-2 trials (by their
    values of the searched columns), else stage 1's best."""
    from .selection import config_keys

    if len(confirm):
        key = config_keys(confirm.head(1), st1.dims[arm]).iloc[0]
        if key in A1.index:
            return int(A1.index.get_loc(key))
    table = configurations(st1, arm, 0.95, fail)
    if table.empty:
        return -1
    return int(A1.index.get_loc(table["_key"].iloc[0])) if table["_key"].iloc[0] in A1.index else -1


def stages_table(st: StudyTable, design: Design) -> pd.DataFrame:
    """One row per stage (look) and arm: seeds, trials and cost (the table's cost unit)."""
    final = st.final.assign(_stage=stage_column(st.final))
    rows = []
    for (stage, arm), g in final.groupby(["_stage", "arm"], sort=True):
        rows.append({"stage": int(stage), "arm": arm, "seeds": int(g.seed.nunique()), "trials": len(g),
                     "cost_h": float(g.cost_h.sum())})
    return pd.DataFrame(rows, columns=["stage", "arm", "seeds", "trials", "cost_h"])


# ---------------------------------------------------------------- what the runner asks
def plan_next(st: StudyTable, settings: dict, design: Design, reference: str, ref_values: pd.Series,
              stage_done: int, study_seeds: list) -> dict | None:
    """The next stage or look after ``stage_done``: ``{"stage": k, "arms": {arm: {"keys": [configuration
    keys] or None (the arm's own procedure), "seeds": [...]}}, "why": text}``; None when the design is
    done (every arm decided, or no stage or look left)."""
    if design.kind == "two_stage":
        return _plan_confirmation(st, settings, design, reference, study_seeds, stage_done)
    if design.kind == "sequential":
        return _plan_look(st, settings, design, reference, ref_values, stage_done, study_seeds)
    return None


def _plan_confirmation(st: StudyTable, settings: dict, design: Design, reference: str, study_seeds: list,
                       stage_done: int) -> dict | None:
    """Stage 2 for every arm not yet confirmed (after ``dmltune extend`` added arms: a later stage for
    the new ones; an arm already confirmed is never confirmed again, which would be a second look)."""
    from .advice import confirm_seeds, difference_variance, planned_effect
    from .verdict import NOT_MATCHED, bounds

    alpha, delta, power, fail = 1 - settings["confidence"], settings["delta"], settings["power"], settings["failure_value"]
    stage1 = list(design.first_seeds(study_seeds))
    fresh = [s for s in seed_sequence(study_seeds, len(stage1) + 2 * design.max_confirm_seeds + len(study_seeds))
             if s not in set(stage1)]
    confirmed = set(st.final.arm[stage_column(st.final) >= 2])
    have = set(st.arm_rows(reference).seed)            # the reference's seeds in every stage so far
    ref_values = _by_seed(st, st.arm_rows(reference), fail)
    ref_values = ref_values.reindex([s for s in ref_values.index if s in set(stage1)])
    plan, why, n_ref = {}, [], 0
    st = with_rows(st, st.final[stage_column(st.final) == 1]) if stage_done > 1 else st
    for arm in st.arms:
        if arm == reference or arm in confirmed:
            continue
        values = seed_matrix(st, arm, fail)
        seeds = values.columns.union(ref_values.index)
        A = values.reindex(columns=seeds).to_numpy(dtype=float)
        b = ref_values.reindex(seeds).to_numpy(dtype=float)
        bd = bounds(A, b, alpha, alpha / 2)
        if len(A) and np.all(bd.upper + delta < 0):
            why.append(f"{arm}: {NOT_MATCHED} at stage 1")
            continue
        best = int(np.argmax(np.where(np.isfinite(bd.mean), bd.mean, -np.inf))) if len(A) else 0
        selecting = confirms_selection(st.search_mode(arm), bool(st.dims[arm]))
        if design.confirm_seeds is not None:
            n2 = design.confirm_seeds
        else:
            C = int(np.isfinite(bd.se).sum()) if selecting else 1
            effect, goal = planned_effect(float(bd.mean[best]), float(bd.se[best]), delta, max(C, 1), 1 - alpha)
            var_d = difference_variance(A, b, bd, best)
            n2 = confirm_seeds(effect, var_d, alpha, power) if goal == "match" else math.inf
            n2 = design.max_confirm_seeds if not math.isfinite(n2) else int(min(max(n2, 2), design.max_confirm_seeds))
        key = None
        if selecting:
            table = configurations(st, arm, settings["confidence"], fail)
            key = table["_key"].iloc[0] if len(table) else values.index[best]
        plan[arm] = {"keys": None if key is None else [key], "seeds": fresh[:n2]}
        n_ref = max(n_ref, n2)
        label = "its own procedure" if key is None else f"configuration {table['configuration'].iloc[0]}"
        why.append(f"{arm}: {label} on {n2} fresh seed(s)")
    if not plan:
        return None
    missing = [s for s in fresh[:n_ref] if s not in have]
    if missing:
        plan[reference] = {"keys": None, "seeds": missing}
    return {"stage": stage_done + 1, "arms": plan, "why": "; ".join(why)}


def _plan_look(st: StudyTable, settings: dict, design: Design, reference: str, ref_values: pd.Series,
               look_done: int, study_seeds: list) -> dict | None:
    if look_done >= len(design.looks):
        return None
    alpha, delta, power, fail = 1 - settings["confidence"], settings["delta"], settings["power"], settings["failure_value"]
    ref_rows = st.arm_rows(reference)
    ref_stage = pd.Series(stage_column(ref_rows).to_numpy(), index=ref_rows.seed.to_numpy()).groupby(level=0).max()
    new_seeds = seed_sequence(study_seeds, design.looks[look_done])[design.looks[look_done - 1]:]
    plan, why = {}, []
    for arm in st.arms:
        if arm == reference:
            continue
        values = seed_matrix(st, arm, fail)
        seeds = values.columns.union(ref_values.index)
        A = values.reindex(columns=seeds)
        b = ref_values.reindex(seeds).to_numpy(dtype=float)
        L = _stage_matrix(st, arm, A)
        bL = ref_stage.reindex(seeds).fillna(0).to_numpy(dtype=int) * np.isfinite(b)
        state = sequential_verdict(arm, A.to_numpy(dtype=float), L, b, bL, len(design.looks), delta, alpha, power,
                                   [str(k) for k in A.index])
        if state.verdict.verdict != INCONCLUSIVE:
            why.append(f"{arm}: {state.verdict.verdict} at look {state.decided_at}")
            continue
        active = [k for k, on in zip(A.index, state.active) if on]
        selecting = st.search_mode(arm) in (None, "grid") and bool(st.dims[arm])  # searches: more replicates
        plan[arm] = {"keys": active if selecting else None, "seeds": list(new_seeds)}
        why.append(f"{arm}: {len(active)} configuration(s) in play get seeds {list(new_seeds)}")
    if not plan:
        return None
    plan[reference] = {"keys": None, "seeds": list(new_seeds)}
    return {"stage": look_done + 1, "arms": plan, "why": "; ".join(why)}


__all__ = ["design_verdicts", "next_stage", "plan_next", "selection_table", "stages_table", "with_rows"]


def next_stage(st: StudyTable, stage_done: int, overrides: dict | None = None) -> dict | None:
    """The plan of the stage or look after ``stage_done`` for the study in ``st`` (its recorded design,
    analysis settings and seeds): what the runner asks when a stage ends (see :func:`plan_next`)."""
    from ..study.design_settings import design_of
    from .compare import resolve_settings

    settings = resolve_settings(st, overrides)
    design = design_of(st.source)
    reference = settings["reference"]
    ref_values = _by_seed(st, st.arm_rows(reference), settings["failure_value"])
    return plan_next(st, settings, design, reference, ref_values, stage_done, list(st.source.get("seeds") or [0]))
