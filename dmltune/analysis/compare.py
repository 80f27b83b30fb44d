"""The study's answer: per-arm selections, a verdict for every arm against the reference, the
tuning cost of the arms that match, the reverse gap, and the sensitivity of every searched arm."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..registry import ConfigError
from .differences import gap
from .selection import Selection, config_labels, configurations, seed_matrix, select
from .settings import ANALYSIS
from .trials import FINISHED, StudyTable
from .tuning_cost import cells, match_costs, percentile_interval, seed_draws, trials_for_probability
from .verdict import MATCHED, Verdict, arm_verdict


@dataclass
class Analysis:
    table: StudyTable
    settings: dict
    reference: str
    target: float                                   # reference validation mean − delta
    selections: dict[str, Selection]
    summary: pd.DataFrame                           # one row per arm
    verdicts: dict[str, Verdict]                    # every non-reference arm against the reference
    match: pd.DataFrame                             # tuning cost: one row per non-reference arm
    calibration: dict                               # the reference against its own target
    sensitivity: pd.DataFrame                       # one row per searched arm
    reverse_gap: dict = field(default_factory=dict)
    design: object = None                           # the study's design (study.design_settings.Design)
    stages: pd.DataFrame | None = None              # per stage (look) and arm: seeds, trials, cost
    full_table: StudyTable | None = None            # every stage's rows (``table``: what selection reads)
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def searched_arms(self) -> list[str]:
        return [a for a in self.table.arms if self.table.dims[a]]

    @property
    def probability_column(self) -> str:
        return probability_column(self.settings)

    @property
    def expected_best(self) -> pd.DataFrame:
        """Headline curve for every arm: the expected seed-mean value of the configuration a search of n
        trials selects, estimated on held-out seeds (cross-fitted), against trials and cost, with
        seed-bootstrap intervals; NaN with a ``note`` where not estimable (:mod:`.expected_best_curve`)."""
        if "expected_best" not in self._cache:
            from .expected_best_curve import study_curves

            self._cache["expected_best"] = study_curves(self.table, self.settings)
        return self._cache["expected_best"]

    @property
    def best_single_trial(self) -> pd.DataFrame:
        """Secondary table for every arm: E[max_n], the expected best *single-seed* trial of n (includes
        seed luck; not a tuning measure), with seed-bootstrap intervals."""
        if "best_single_trial" not in self._cache:
            from .expected_best_curve import study_curves

            self._cache["best_single_trial"] = study_curves(self.table, self.settings, secondary=True)
        return self._cache["best_single_trial"]

    @property
    def importance(self) -> pd.DataFrame:
        """fANOVA importance of each searched parameter (arms searching at least two)."""
        if "importance" not in self._cache:
            from .importance import importance

            s = self.settings
            frames = [importance(self.table, arm, s["failure_value"], s["confidence"], s["seed"])
                      for arm in self.searched_arms]
            frames = [f for f in frames if not f.empty]
            self._cache["importance"] = (pd.concat(frames, ignore_index=True) if frames else
                                         pd.DataFrame(columns=["arm", "parameter", "importance", "seed_mean",
                                                               "seed_half", "seeds"]))
        return self._cache["importance"]


def probability_column(settings: dict) -> str:
    """``trials_needed_p90`` for probability 0.9."""
    return f"trials_needed_p{round(100 * settings['probability'])}"


def planned_arms(source: dict) -> list[tuple[str, bool]] | None:
    """(name, searched) of every arm the study file plans, in order; None without a usable record."""
    from ..study.domains import find_domains
    from ..study.schema import SHARED

    arms = source.get("arms") if isinstance(source, dict) else None
    if not isinstance(arms, list) or not all(isinstance(a, dict) and "name" in a for a in arms):
        return None
    shared = {k: source[k] for k in SHARED if k in source}
    try:
        return [(str(a["name"]), any(True for _ in find_domains({**shared, **a}))) for a in arms]
    except ConfigError:
        return None


def default_reference(st: StudyTable) -> str:
    """The last arm the study plans that runs a single configuration (needs no tuning), else its last
    arm; it is taken from the study's record, never from whichever arms happen to have rows, so a
    missing reference is an error that names it. Without a record: the same rule over the table."""
    planned = planned_arms(st.source)
    if planned is None:
        single = [a for a in st.arms if not st.dims[a]]
        return (single or st.arms)[-1]
    single = [name for name, searched in planned if not searched and not st.dims.get(name)]
    reference = (single or [name for name, _ in planned])[-1]
    if reference not in st.arms:
        raise ConfigError(f"analysis: the reference arm {reference!r} (the study's last single-configuration arm) has "
                          f"no trials in the results table; finish it with `dmltune resume`, or choose another with "
                          f"--reference ({', '.join(st.arms)})")
    return reference


def resolve_settings(st: StudyTable, overrides: dict | None = None) -> dict:
    raw = {**(st.source.get("analysis") or {}), **{k: v for k, v in (overrides or {}).items() if v is not None}}
    settings = ANALYSIS.validate(raw, where="analysis")
    if settings["reference"] is None:
        settings["reference"] = default_reference(st)
    elif settings["reference"] not in st.arms:
        raise ConfigError(f"analysis: reference arm {settings['reference']!r} has no trials; choose one of {', '.join(st.arms)}")
    return settings


def arm_summary(st: StudyTable, selections: dict[str, Selection], verdicts: dict[str, Verdict],
                reference: str, settings: dict) -> pd.DataFrame:
    rows = []
    for arm in st.arms:
        group, sel = st.arm_rows(arm), selections[arm]
        status = group.status.fillna("incomplete")
        verdict = "reference" if arm == reference else verdicts[arm].verdict
        rows.append({
            "arm": arm, "searched": ", ".join(c.split("/", 1)[1] for c in st.dims[arm]) or "–",
            "configurations": len(configurations(st, arm, settings["confidence"], settings["failure_value"]))
                              if st.dims[arm] else 1,
            "trials": len(group), "ok": int((status == "ok").sum()), "stopped": int((status == "stopped").sum()),
            "diverged": int((status == "diverged").sum()),
            "errors": int((status == "error").sum()), "unfinished": int((~status.isin(FINISHED)).sum()),
            "gpu_h": group.get("gpu_s", pd.Series(dtype=float)).fillna(0).sum() / 3600,
            "wall_h": group.get("wall_s", pd.Series(dtype=float)).fillna(0).sum() / 3600,
            "selected": sel.configuration, "selected_failed": sel.failed,
            "val": sel.val.mean, "val_half": sel.val.half, "val_n": sel.val.n,
            "val_crossfit": sel.val_crossfit.mean, "val_crossfit_half": sel.val_crossfit.half,
            "test": sel.test.mean, "test_half": sel.test.half, "seeds": sel.test.n,
            "few_seeds": bool(0 < max(sel.val.n, sel.test.n) < 3), "verdict": verdict,
            **_ensemble_columns(st, sel, settings["confidence"]),
        })
    return pd.DataFrame(rows)


def sensitivity(st: StudyTable, arm: str, verdict: Verdict | None, selection: Selection, settings: dict) -> dict:
    """Spread of the validation mean over an arm's configurations, how many of them are shown to
    match or to fall short of the reference, and the arm's tunability."""
    from .importance import tunability

    conf = settings["confidence"]
    means = configurations(st, arm, conf, settings["failure_value"]).val_mean.dropna()
    out = {"arm": arm, "configurations": len(means)}
    if not means.empty:
        out.update(worst=means.min(), median=means.median(), best=means.max(), range=means.max() - means.min(),
                   std=means.std(ddof=0))
    if verdict is not None and len(verdict.lower):
        out.update(shown_matching=float((verdict.lower >= -settings["delta"]).mean()),
                   shown_short=float((verdict.upper < -settings["delta"]).mean()))
    out.update(tunability(st, arm, selection, settings["failure_value"], conf))
    return out


def _ensemble_columns(st: StudyTable, sel: Selection, confidence: float) -> dict:
    """k-fold studies: the selected configuration's fold-model ensemble on test (mean ± half, seeds)."""
    if not st.kfold:
        return {}
    from .fold_ensemble import ensemble_estimate

    e = ensemble_estimate(sel, st.folder, st.test_metric, confidence)
    return {"test_ensemble": e.mean, "test_ensemble_half": e.half, "test_ensemble_n": e.n}


def cost_row(st: StudyTable, arm: str, verdict: Verdict, ref_values: pd.Series, settings: dict,
             probability_column: str) -> dict:
    """Trials and cost to match, with seed-bootstrap intervals; NaN unless the verdict is matched."""
    seeds = sorted(set(st.arm_rows(arm).seed) | set(ref_values.index), key=str)
    c = cells(st, arm, seeds, settings["failure_value"])
    ref = ref_values.reindex(seeds).to_numpy(dtype=float)
    finished_costs = c.cost.sum()
    trials_total = int(c.finished.sum())
    row = {"arm": arm, "verdict": verdict.verdict, "method": verdict.method,
           "seed_correlation": verdict.seed_correlation, "configurations": verdict.configurations,
           "trials": trials_total, "seeds": verdict.seeds, "best_configuration": verdict.best_configuration,
           "gap": verdict.gap, "gap_lower": verdict.gap_lower, "gap_upper": verdict.gap_upper,
           "matching_trials": math.nan, "expected_trials_to_match": math.nan, "expected_trials_low": math.nan,
           "expected_trials_high": math.nan, "expected_cost_to_match": math.nan, "expected_cost_low": math.nan,
           "expected_cost_high": math.nan, probability_column: math.nan, "cost_needed": math.nan,
           "seeds_needed": verdict.seeds_needed, "budget_h": float(st.arm_rows(arm).cost_h.sum()),
           "reason": verdict.reason, "design": verdict.design, **advice_columns(verdict)}
    if verdict.verdict != MATCHED or not len(seeds):
        return row
    if st.search_mode(arm) == "pbt":
        return _population_cost(st, arm, row, settings, probability_column)
    trials, cost, hits, finished = match_costs(c, ref, settings["delta"], np.ones((1, len(seeds))))
    boot_t, boot_c, _, _ = match_costs(c, ref, settings["delta"],
                                       seed_draws(len(seeds), settings["bootstrap"], settings["seed"]))
    needed = trials_for_probability(int(finished[0]), int(hits[0]), settings["probability"])
    per_trial = finished_costs / trials_total if trials_total else math.nan
    row.update(matching_trials=int(hits[0]), expected_trials_to_match=float(trials[0]),
               expected_cost_to_match=float(cost[0]), **{probability_column: needed},
               cost_needed=needed * per_trial)
    if len(seeds) >= 2:
        (row["expected_trials_low"], row["expected_trials_high"]) = percentile_interval(boot_t, settings["confidence"])
        (row["expected_cost_low"], row["expected_cost_high"]) = percentile_interval(boot_c, settings["confidence"])
    return row


def advice_columns(verdict: Verdict) -> dict:
    """An inconclusive verdict's cheapest deciding design (:mod:`.advice`): design, seeds, trials, cost."""
    adv = verdict.advice
    if verdict.verdict != "inconclusive" or adv is None or not getattr(adv, "design", ""):
        return {"decide_design": "", "decide_seeds": math.nan, "decide_trials": math.nan, "decide_cost": math.nan}
    seeds = adv.confirm_seeds if adv.design == "two_stage" else adv.seeds
    return {"decide_design": adv.design, "decide_seeds": seeds, "decide_trials": adv.trials, "decide_cost": adv.cost}


def _population_cost(st: StudyTable, arm: str, row: dict, settings: dict, probability_column: str) -> dict:
    """A PBT arm's cost to match is one whole population: its members train together and its result is
    their best, so no member can be stopped early or run alone. Mean over seeds, with a bootstrap
    interval over seeds."""
    rows = st.arm_rows(arm)
    per_seed = rows.groupby("seed").agg(trials=("trial_id", "size"), cost=("cost_h", "sum"))
    row.update(matching_trials=int(rows.pipe(st.usable).sum()), expected_trials_to_match=float(per_seed.trials.mean()),
               expected_cost_to_match=float(per_seed.cost.mean()),
               **{probability_column: float(per_seed.trials.mean())}, cost_needed=float(per_seed.cost.mean()))
    if len(per_seed) >= 2:
        draws = seed_draws(len(per_seed), settings["bootstrap"], settings["seed"])
        means = lambda v: (draws @ v.to_numpy(dtype=float)) / draws.sum(axis=1)  # noqa: E731
        row["expected_trials_low"], row["expected_trials_high"] = percentile_interval(means(per_seed.trials),
                                                                                     settings["confidence"])
        row["expected_cost_low"], row["expected_cost_high"] = percentile_interval(means(per_seed.cost),
                                                                                 settings["confidence"])
    return row


def calibration_row(st: StudyTable, ref: str, ref_values: pd.Series, settings: dict, probability_column: str) -> dict:
    """The reference against its own target, as if it were another arm run on independent seeds
    (Welch; pairing it with itself would remove all noise): the verdict an arm *identical* to the
    reference would get with this many seeds, and the seeds that would confirm it."""
    matrix = ref_values.to_frame().T
    verdict = arm_verdict(ref, matrix, ref_values, settings["delta"], settings["confidence"], settings["power"],
                          labels=["(reference)"], pairing=False)
    row = cost_row(st, ref, verdict, ref_values, settings, probability_column)
    if st.dims[ref]:  # a searched reference: its trials are a search, not runs of the compared configuration
        for key in row:
            if key.startswith(("expected_", "matching_", "trials_needed", "cost_needed")):
                row[key] = math.nan
        row["reason"] += "; the reference is a search, so its cost to match itself is not given"
    return row


def analyse(st: StudyTable, overrides: dict | None = None) -> Analysis:
    from ..study.design_settings import design_of
    from .design_table import design_verdicts, selection_table, stages_table

    settings = resolve_settings(st, overrides)
    conf, ref, fail = settings["confidence"], settings["reference"], settings["failure_value"]
    design = design_of(st.source)
    full, st = st, selection_table(st, design)   # two_stage: selection reads stage 1 of confirming arms
    selections = {arm: select(st, arm, conf, fail) for arm in st.arms}
    ref_sel = selections[ref]
    # a reference without a single usable trial sets no target (its failure values would set a false one)
    usable_ref = not ref_sel.trials.empty
    ref_values = ref_sel.values if usable_ref else pd.Series(dtype=float)
    if usable_ref and st.dims[ref] and ref_sel.mode == "grid" and len(ref_sel.held_out) >= 2:
        # a searched reference: its selection's own seeds carry the winner's curse and would raise
        # the target; compare with its cross-fitted (held-out) values instead
        ref_values = ref_sel.held_out
    target = float(ref_values.mean()) - settings["delta"] if usable_ref and len(ref_values) else math.nan
    column = probability_column(settings)
    verdicts, match = {}, []
    staged = design_verdicts(full, settings, design, ref, ref_values) if design.staged and len(ref_values) else {}
    for arm in st.arms:
        if arm == ref:
            continue
        if arm in staged:
            verdicts[arm] = staged[arm]
        else:
            matrix = seed_matrix(st, arm, fail)
            names = config_labels(st, arm)
            labels = [names.get(k, str(k)) for k in matrix.index]
            verdicts[arm] = arm_verdict(arm, matrix, ref_values, settings["delta"], conf, settings["power"], labels,
                                        cost_per_trial=cost_per_trial(st, arm))
            verdicts[arm].design = design.kind
        row = cost_row(st, arm, verdicts[arm], ref_values, settings, column)
        if full is not st:  # tuning cost counts every trial of the arm, in every stage
            row["trials"] = int(full.arm_rows(arm).pipe(lambda r: r[full.scored(r, fail).notna()]).shape[0])
            row["budget_h"] = float(full.arm_rows(arm).cost_h.sum())
        match.append(row)
    calibration = calibration_row(st, ref, ref_values, settings, column) if len(ref_values) else {}
    searched = [a for a in st.arms if st.dims[a] and a != ref]
    sens = pd.DataFrame([sensitivity(st, a, verdicts.get(a), selections[a], settings) for a in searched])
    summary = arm_summary(st, selections, verdicts, ref, settings)
    if full is not st:  # every stage's trials and time count in the arm's totals
        for i, arm in enumerate(summary.arm):
            rows = full.arm_rows(arm)
            status = rows.status.fillna("incomplete")
            summary.loc[i, ["trials", "ok", "stopped", "diverged", "errors"]] = [
                len(rows), int((status == "ok").sum()), int((status == "stopped").sum()), int((status == "diverged").sum()),
                int((status == "error").sum())]
            summary.loc[i, "gpu_h"] = rows.get("gpu_s", pd.Series(dtype=float)).fillna(0).sum() / 3600
            summary.loc[i, "wall_h"] = rows.get("wall_s", pd.Series(dtype=float)).fillna(0).sum() / 3600
    result = Analysis(st, settings, ref, target, selections, summary,
                      verdicts, pd.DataFrame(match, columns=None if match else ["arm", "verdict"]), calibration, sens,
                      reverse_gap(st, selections, ref, searched, conf))
    result.design = design
    result.stages = stages_table(full, design)
    result.full_table = full
    return result


def cost_per_trial(st: StudyTable, arm: str) -> float:
    """Mean cost of one of the arm's trials (the table's cost unit), NaN without trials."""
    rows = st.arm_rows(arm)
    return float(rows.cost_h.mean()) if len(rows) else math.nan


def reverse_gap(st: StudyTable, selections: dict[str, Selection], ref: str, searched: list[str],
                confidence: float) -> dict:
    """Best fixed (searched) configuration minus the reference, on validation and on test, paired
    over shared seeds where that pays (:func:`~.differences.gap`).

    The best fixed configuration is the searched arms' selection with the highest validation mean;
    a positive gap means tuning the fixed thresholds beat the adaptive arm. The validation gap carries
    the selection's winner's curse; the test gap does not (test never takes part in a choice)."""
    candidates = [selections[a] for a in searched if np.isfinite(selections[a].val.mean)]
    if not candidates or not np.isfinite(selections[ref].val.mean):
        return {}
    best = max(candidates, key=lambda s: s.val.mean)
    ref_sel = selections[ref]

    def by_seed(sel: Selection, column: str) -> pd.Series:
        if column not in sel.trials or sel.trials.empty:
            return pd.Series(dtype=float)
        return sel.trials.groupby("seed")[column].mean().astype(float)

    return {"best_arm": best.arm, "best_configuration": best.configuration,
            "val": gap(best.values, ref_sel.values, confidence),
            "test": gap(by_seed(best, st.test_metric), by_seed(ref_sel, st.test_metric), confidence)}


__all__ = ["Analysis", "analyse", "default_reference", "resolve_settings"]
