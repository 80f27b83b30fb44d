"""The study's answer: per-arm costs and selections, the tuning cost to match the reference, the
reverse gap, and the sensitivity of every searched arm to its grid."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from ..registry import ConfigError
from .selection import Estimate, Selection, configurations, difference, select
from .settings import ANALYSIS
from .trials import StudyTable
from .tuning_cost import cost_to_match


@dataclass
class Analysis:
    table: StudyTable
    settings: dict
    reference: str
    target: float                                   # reference validation mean − delta
    selections: dict[str, Selection]
    summary: pd.DataFrame                           # one row per arm
    match: pd.DataFrame                             # cost to match, one row per other arm
    sensitivity: pd.DataFrame                       # one row per searched arm
    reverse_gap: dict = field(default_factory=dict)

    @property
    def searched_arms(self) -> list[str]:
        return [a for a in self.table.arms if self.table.dims[a]]


def default_reference(st: StudyTable) -> str:
    """The last arm that runs a single configuration (needs no tuning); else the last arm."""
    single = [a for a in st.arms if not st.dims[a]]
    return (single or st.arms)[-1]


def resolve_settings(st: StudyTable, overrides: dict | None = None) -> dict:
    raw = {**(st.source.get("analysis") or {}), **{k: v for k, v in (overrides or {}).items() if v is not None}}
    settings = ANALYSIS.validate(raw, where="analysis")
    if settings["reference"] is None:
        settings["reference"] = default_reference(st)
    elif settings["reference"] not in st.arms:
        raise ConfigError(f"analysis: reference arm {settings['reference']!r} has no trials; choose one of {', '.join(st.arms)}")
    return settings


def arm_summary(st: StudyTable, selections: dict[str, Selection]) -> pd.DataFrame:
    rows = []
    for arm in st.arms:
        group, sel = st.arm_rows(arm), selections[arm]
        status = group.status.fillna("incomplete")
        rows.append({
            "arm": arm, "searched": ", ".join(c.split("/", 1)[1] for c in st.dims[arm]) or "–",
            "configurations": len(configurations(st, arm)) if st.dims[arm] else 1,
            "trials": len(group), "ok": int((status == "ok").sum()), "diverged": int((status == "diverged").sum()),
            "errors": int((status == "error").sum()), "unfinished": int((~status.isin(["ok", "diverged", "error"])).sum()),
            "gpu_h": group.get("gpu_s", pd.Series(dtype=float)).fillna(0).sum() / 3600,
            "wall_h": group.get("wall_s", pd.Series(dtype=float)).fillna(0).sum() / 3600,
            "selected": sel.configuration, "val": sel.val.mean, "val_half": sel.val.half,
            "test": sel.test.mean, "test_half": sel.test.half, "seeds": sel.test.n,
        })
    return pd.DataFrame(rows)


def sensitivity(st: StudyTable, arm: str, target: float, confidence: float) -> dict:
    """Spread of the validation mean over an arm's configurations."""
    means = configurations(st, arm, confidence).val_mean.dropna()
    if means.empty:
        return {"arm": arm, "configurations": 0}
    return {"arm": arm, "configurations": len(means), "worst": means.min(), "median": means.median(),
            "best": means.max(), "range": means.max() - means.min(), "std": means.std(ddof=0),
            "matching": float((means >= target).mean())}


def analyse(st: StudyTable, overrides: dict | None = None) -> Analysis:
    settings = resolve_settings(st, overrides)
    conf, ref = settings["confidence"], settings["reference"]
    selections = {arm: select(st, arm, conf) for arm in st.arms}
    ref_val = selections[ref].val.mean
    target = ref_val - settings["delta"] if math.isfinite(ref_val) else math.nan
    match = []
    for arm in st.arms:
        if arm == ref:
            continue
        cost = cost_to_match(st, arm, target, settings["bootstrap"], conf, settings["seed"]) \
            if math.isfinite(target) else None
        match.append(asdict(cost) if cost else {"arm": arm, "target": target, "reached": False})
    searched = [a for a in st.arms if st.dims[a] and a != ref]
    sens = pd.DataFrame([sensitivity(st, a, target, conf) for a in searched])
    return Analysis(st, settings, ref, target, selections, arm_summary(st, selections), pd.DataFrame(match),
                    sens, reverse_gap(st, selections, ref, searched, conf))


def reverse_gap(st: StudyTable, selections: dict[str, Selection], ref: str, searched: list[str],
                confidence: float) -> dict:
    """Best fixed (searched) configuration minus the reference, on validation and on test.

    The best fixed configuration is the searched arms' selection with the highest validation mean;
    a positive gap means tuning the fixed thresholds beat the adaptive arm."""
    candidates = [selections[a] for a in searched if np.isfinite(selections[a].val.mean)]
    if not candidates or not np.isfinite(selections[ref].val.mean):
        return {}
    best = max(candidates, key=lambda s: s.val.mean)
    ref_sel = selections[ref]

    def values(sel: Selection, column: str):
        return sel.trials[column] if column in sel.trials else pd.Series(dtype=float)

    return {"best_arm": best.arm, "best_configuration": best.configuration,
            "val": difference(values(best, st.metric), values(ref_sel, st.metric), confidence),
            "test": difference(values(best, st.test_metric), values(ref_sel, st.test_metric), confidence)}


__all__ = ["Analysis", "Estimate", "analyse", "default_reference", "resolve_settings"]
