"""``report.md``: a study's verdicts, tables and figures in one Markdown file inside the study folder.

Also written: ``figures/<name>.png|svg`` (unless ``figures=False``) and ``tables/*.csv``: the per-arm
summary, the tuning cost (one row per non-reference arm, with its verdict), the reference's
calibration row, the expected best value against budget (the held-out headline curve, and the best
single-seed trial as a secondary table), sensitivity, importance, and every searched arm's full grid of
configurations; ``report.html`` (:mod:`.report_html`): the same sections as one self-contained page.

The report is built once as a list of :class:`Section` (Markdown text, :class:`Rows` tables and
:class:`Figure` blocks); :func:`markdown` writes it as report.md and :mod:`.report_html` as HTML.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from .compare import Analysis, analyse
from .completeness import missing_cells_note, unfinished_note
from .formatting import (FEW_SEEDS_FOOTNOTE, bracket, cost, count, few_seeds_mark, gap_text, in_unit, interval_text,
                         markdown_table, number, seeds_needed_text, time_name, time_unit)
from .selection import configurations
from .trials import read_study_table
from ..atomic import write_atomic


@dataclass
class Rows:
    """A table of the report: one dict per row, the first row's keys are the header."""

    rows: list[dict]


@dataclass
class Figure:
    name: str
    path: Path           # the file save_figures wrote
    link: str            # its path relative to the study folder (report.md links it)
    note: str

    @property
    def title(self) -> str:
        return self.name.replace("_", " ").capitalize()


@dataclass
class Section:
    """One heading and what follows it: Markdown text (str), :class:`Rows` and :class:`Figure` blocks."""

    key: str             # what it is ("verdicts", "figures", …): report.html orders by it
    title: str           # "" for none (the opening)
    level: int = 2
    blocks: list = field(default_factory=list)


def block_markdown(block) -> str:
    if isinstance(block, Rows):
        return markdown_table(block.rows)
    if isinstance(block, Figure):
        return f"### {block.title}\n\n![{block.name}]({block.link})\n\n{block.note}\n"
    return block


def markdown(sections: list[Section]) -> str:
    """report.md: every section in order (no line for an empty block, e.g. a finished study's note)."""
    parts = []
    for section in sections:
        if section.title:
            parts.append(("\n" if parts else "") + f"{'#' * section.level} {section.title}\n")
        parts += [block_markdown(b) for b in section.blocks]
    return "\n".join(part for part in parts if part)


VERDICT_TEXT = {"matched": "**matched**", "not_matched": "**not matched**", "inconclusive": "inconclusive"}


CHEAPEST = "; cheapest to decide:"   # where an inconclusive verdict's reason goes on to its advice (.advice)
PLANNED = re.compile(r"\d+% power, planned for a gap of .*$")


def split_reason(reason: str) -> tuple[str, str]:
    """An inconclusive verdict's reason without the advice that follows it (shown in its own column),
    and the advice's planning assumptions (power, planned gap) to show there."""
    at = reason.find(CHEAPEST)
    if at < 0:
        return reason, ""
    planned = PLANNED.search(reason[at:])
    return reason[:at], planned.group(0) if planned else ""


def verdict_rows(a: Analysis) -> list[dict]:
    """One row per arm; an inconclusive arm's advice is said once, in *what would decide*, and its
    reason once, in *why*."""
    rows = []
    for r in a.match.to_dict("records"):
        why, what = r["reason"], "–"
        if r["verdict"] == "inconclusive":
            why, planned = split_reason(str(r["reason"]))
            what = advice_text(r, a.table.cost_unit, with_reason=False) + (f"; {planned}" if planned else "")
        rows.append({"arm": r["arm"], "verdict": VERDICT_TEXT.get(r["verdict"], r["verdict"]),
                     "best configuration": r["best_configuration"],
                     "gap to the reference [one-sided bounds]": gap_text(r), "method": r["method"],
                     "seeds per configuration": count(r["seeds"], 0), "what would decide": what, "why": why})
    return rows


def intervals_note(a: Analysis) -> str:
    """Which interval is which: the verdict's one-sided bounds, the reverse gap's and the arms' two-sided
    intervals (the same difference can look three ways)."""
    conf = int(round(100 * a.settings["confidence"]))
    return (f"**Reading the intervals.** *Gap to the reference [one-sided bounds]* (above): the best configuration's "
            f"mean minus the reference's, between two one-sided confidence bounds at the study's {conf}%, not a "
            "two-sided interval. "
            "The lower bound holds for all the arm's configurations at once (it pays for picking the best of them, "
            "so a grid's is wider) and decides `matched` when it is at least −δ; the upper bound decides `not matched` "
            "when it, and every other configuration's, is below −δ. A staged design spends the confidence over its "
            "looks or stages (see Design). *Reverse gap* (± h, below): a two-sided "
            f"{conf}% interval for the best fixed configuration minus the reference, without paying for the "
            "configurations tried: it describes, it does not decide. *Arms* table, *(mean ± CI)*: a two-sided "
            f"{conf}% interval for one arm's own mean over seeds, not a difference (shared seeds cancel in a "
            "paired gap, so a gap's interval can be narrower than the two arms' together). Details: "
            "docs/analysis.md.\n")


def calibration_text(a: Analysis) -> str:
    c = a.calibration
    if not c:
        return ""
    seeds = count(c["seeds"], 0)
    if c["verdict"] == "matched":
        return (f"Calibration: an arm identical to {a.reference}, run on independent seeds, would be shown to match "
                f"with {seeds} seeds.\n")
    need = seeds_needed_text(c)
    return (f"Calibration: an arm identical to {a.reference}, run on independent seeds, would be "
            f"**{c['verdict'].replace('_', ' ')}** with {seeds} seeds; about {need} seeds would show it matches "
            f"(with {a.settings['power']:.0%} power). A study with fewer seeds cannot confirm a match of δ = "
            f"{a.settings['delta']:g} even for an equal method.\n")


def arms_section(a: Analysis) -> Rows:
    st = a.table
    conf = int(round(100 * a.settings["confidence"]))
    gpu = st.cost_unit == "GPU-hours"   # a study where no trial used a GPU has no GPU time column
    unit = time_unit(list(a.summary.wall_h) + (list(a.summary.gpu_h) if gpu else []))
    rows = []
    for r in a.summary.itertuples():
        times = {f"wall time ({unit[0]})": in_unit(r.wall_h, unit)}
        if gpu:
            times = {f"GPU time ({unit[0]})": in_unit(r.gpu_h, unit) if r.gpu_h > 0 else "– (no GPU)", **times}
        rows.append({"arm": f"**{r.arm}**" if r.arm == a.reference else r.arm, "searched": r.searched,
                     "configs": r.configurations,
                     "trials (ok / stopped early / diverged / error / unfinished)":
                         f"{r.trials} ({r.ok} / {r.stopped} / {r.diverged} / {r.errors} / {r.unfinished})",
                     **times, "selected on validation": r.selected,
                     f"val {st.metric[4:]} (mean ± {conf}% CI)": interval_text(r.val, r.val_half, r.val_n),
                     "val, cross-fitted": number(r.val_crossfit),
                     f"test {st.test_metric[5:]} (mean ± {conf}% CI)": interval_text(r.test, r.test_half, r.seeds),
                     **({f"test {st.test_metric[5:]}, fold ensemble (mean ± {conf}% CI)": interval_text(
                         r.test_ensemble, r.test_ensemble_half, r.test_ensemble_n)} if st.kfold else {}),
                     "verdict": r.verdict.replace("_", " ")})
    return Rows(rows)


def arms_note(a: Analysis) -> str:
    st = a.table
    val, test = st.metric[4:], st.test_metric[5:]
    return ("\nDiverged and errored seeds count at the failure value in every validation mean; unfinished trials are "
            "left out; every trial's time counts in every cost"
            + ("" if st.cost_unit == "GPU-hours" else " (no trial used a GPU: times are wall-clock time)") +
            ". *Cross-fitted*: selected on all seeds but one and read on the held-out seed, for each seed in turn, "
            "free of the winner's curse that inflates the naive value.\n\n"
            f"Validation and test values are not comparable with each other: validation {val} is measured on classes "
            f"held out of the training classes, test {test} on the test classes, with other classes and set sizes, and "
            "retrieval among fewer classes or items is easier; compare arms within one column.\n")


def _cost_row(r: dict, a: Analysis, label: str, unit: tuple[str, float]) -> dict:
    p = a.probability_column
    pct = f"{a.settings['probability']:.0%}"
    time, u = time_name(a.table.cost_unit), unit[0]
    fmt = lambda h: in_unit(h, unit)  # noqa: E731
    if r["verdict"] == "matched":
        trials = count(r["expected_trials_to_match"]) + bracket(r["expected_trials_low"], r["expected_trials_high"])
        spent = fmt(r["expected_cost_to_match"]) + bracket(r["expected_cost_low"], r["expected_cost_high"], fmt)
        needed, needed_cost = count(r[p], 0), fmt(r["cost_needed"])
    else:
        trials = spent = needed = needed_cost = f"– ({r['verdict'].replace('_', ' ')})"
    mark = few_seeds_mark(r["seeds"]) if r["verdict"] == "matched" else ""
    return {"arm": label, "matching trials": "–" if math.isnan(r["matching_trials"]) else
            f"{int(r['matching_trials'])} of {r['trials']}",
            "expected trials to match [interval over seeds]": trials + mark,
            f"expected {time} to match ({u}) [interval]": spent + mark,
            f"trials to match with {pct} probability": needed, f"{time} for {pct} ({u})": needed_cost,
            f"budget: {time} ({u})": fmt(r["budget_h"])}


def match_section(a: Analysis) -> Rows | str:
    if a.match.empty or not math.isfinite(a.target):
        return "No target: the reference arm has no usable trial.\n"
    records = a.match.to_dict("records") + ([a.calibration] if a.calibration else [])
    unit = time_unit([r.get(k, math.nan) for r in records for k in ("expected_cost_to_match", "expected_cost_low",
                                                                     "expected_cost_high", "cost_needed", "budget_h")
                      if r["verdict"] == "matched" or k == "budget_h"])
    rows = [_cost_row(r, a, r["arm"], unit) for r in a.match.to_dict("records")]
    if a.calibration:
        rows.append(_cost_row(a.calibration, a, f"*{a.reference} (calibration)*", unit))
    return Rows(rows)


def _budget_picks(N: int) -> list[int]:
    return sorted({1, N} | {n for n in (2, 4, 8, 16, 32, 64, 128) if n < N})


def expected_best_section(a: Analysis) -> list:
    """The headline curve: the expected seed-mean value of the configuration a search of n trials
    selects, estimated on held-out seeds; an arm where it cannot be estimated gets one row saying why."""
    eb = a.expected_best
    if eb.empty:
        return ["(no finished trial)\n"]
    conf = int(round(100 * a.settings["confidence"]))
    unit = time_unit(eb.cost_h)
    spent = f"expected {time_name(a.table.cost_unit)} ({unit[0]})"
    value = f"expected seed-mean val {a.table.metric[4:]} of the selection [{conf}% interval over seeds]"
    rows = []
    for arm, group in eb.groupby("arm", sort=False):
        note = str(group.note.iloc[0]) if "note" in group and isinstance(group.note.iloc[0], str) else ""
        if not group.expected_best.notna().any():
            rows.append({"arm": arm, "trials": f"1–{len(group)}" if len(group) > 1 else "1",
                         spent: "–", value: "–", "note": note or "not estimable"})
            continue
        for n in _budget_picks(len(group)):
            r = group.iloc[n - 1]
            rows.append({"arm": arm, "trials": n, spent: in_unit(r.cost_h, unit),
                         value: number(r.expected_best) + bracket(r.low, r.high, number) + few_seeds_mark(r.seeds),
                         "note": note})
    if not any(r["note"] for r in rows):
        rows = [{k: v for k, v in r.items() if k != "note"} for r in rows]
    return [f"Expected seed-mean value of the configuration a search of n trials selects, estimated on held-out "
            f"seeds, with {conf}% bootstrap interval over seeds (cross-fitted: selected on one seed, measured on the "
            "others; a single configuration is flat at its seed mean). Cost: n × the arm's mean cost of a "
            "trial.\n", Rows(rows)]


def best_single_trial_section(a: Analysis) -> list:
    """Secondary: E[max_n] of the arm's single-seed trials (includes seed luck; not a tuning measure)."""
    bt = a.best_single_trial
    if bt.empty:
        return ["(no finished trial)\n"]
    unit = time_unit(bt.cost_h)
    rows = []
    for arm, group in bt.groupby("arm", sort=False):
        for n in _budget_picks(len(group)):
            r = group.iloc[n - 1]
            rows.append({"arm": arm, "single-seed trials": n,
                         f"expected {time_name(a.table.cost_unit)} ({unit[0]})": in_unit(r.cost_h, unit),
                         f"best single-seed val {a.table.metric[4:]} [interval over seeds]":
                             number(r.best_single_trial) + bracket(r.low, r.high, number) + few_seeds_mark(r.seeds)})
    return ["The expected best of n of the arm's single-seed trials drawn at random without replacement (E[max_n], "
            "Tang et al. 2020), not the headline above. Every seed of a "
            "configuration counts as a draw, so it rewards the lucky seed and rises even when all configurations "
            "are the same; shown for comparison with earlier reports only (`tables/best_single_trial.csv`).\n",
            Rows(rows)]


def gap_section(a: Analysis) -> str:
    gap = a.reverse_gap
    if not gap:
        return "No searched arm with a usable trial to compare with.\n"
    conf = int(round(100 * a.settings["confidence"]))
    val, test = gap["val"], gap["test"]
    return (f"Best fixed configuration: **{gap['best_arm']}** with {gap['best_configuration']}.\n\n"
            f"- validation: best fixed − {a.reference} = {val.text()} (carries the selection's winner's curse)\n"
            f"- test: best fixed − {a.reference} = {test.text()}\n\n"
            f"Both are two-sided {conf}% intervals over seeds, with no allowance for the configurations tried: they "
            "describe the difference, the verdicts' one-sided bounds decide it. A positive gap means the tuned fixed "
            "thresholds beat the reference; an interval that contains 0 means "
            "the study cannot tell them apart. `paired`: over the seeds both ran (shared seed effects removed); "
            "`welch`: independent samples.\n")


def sensitivity_section(a: Analysis) -> Rows | str:
    if a.sensitivity.empty:
        return "(no searched arm)\n"
    rows = []
    for r in a.sensitivity.to_dict("records"):
        tun = "–"
        if math.isfinite(r.get("tunability", math.nan)):
            tun = interval_text(r["tunability"], r["tunability_half"], r["tunability_n"])
        rows.append({"arm": r["arm"], "configurations": r["configurations"], "worst": number(r.get("worst")),
                     "median": number(r.get("median")), "best": number(r.get("best")), "range": number(r.get("range")),
                     "shown to match": number(r.get("shown_matching"), 2),
                     "shown short": number(r.get("shown_short"), 2),
                     "default": r.get("default", "–"), "tunability (best − default)": tun,
                     "tunability, cross-fitted": number(r.get("tunability_crossfit"))})
    return Rows(rows)


def importance_section(a: Analysis) -> Rows | str:
    imp = a.importance
    if imp.empty:
        return "(no arm searched two or more parameters)\n"
    rows = [{"arm": r["arm"], "parameter": r["parameter"], "fANOVA importance (all trials)": number(r["importance"], 3),
             "per-seed fits (mean ± CI)": interval_text(r["seed_mean"], r["seed_half"], r["seeds"], 3)}
            for r in imp.to_dict("records")]
    return Rows(rows)


def write_tables(a: Analysis, folder: Path) -> None:
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    tables = {"arms": a.summary, "tuning_cost": a.match,
              "calibration": pd.DataFrame([a.calibration] if a.calibration else []),
              "expected_best": a.expected_best, "best_single_trial": a.best_single_trial,
              "sensitivity": a.sensitivity, "importance": a.importance}
    for arm in a.searched_arms:
        tables[f"configurations_{arm}"] = configurations(a.table, arm, a.settings["confidence"],
                                                         a.settings["failure_value"]).drop(columns="_key")
    for name, frame in tables.items():
        write_atomic(folder / f"{name}.csv", frame.to_csv(index=False))


def protocol_note(a: Analysis) -> str:
    """k-fold studies: how a configuration was validated and what the test columns are."""
    st = a.table
    if not st.kfold:
        return ""
    k = int(st.final["folds"].max())
    return (f"**Class-disjoint {k}-fold cross-validation** (study `protocol`; the classes of each fold: "
            "`folds.yaml`). Each configuration × seed trained one model per fold, on the other folds' classes; its "
            f"validation value is the mean over its {k} folds, a failed fold fails it, and every fold's time counts "
            "in every cost (the *trials* columns count configurations × seeds). Test: the mean over the fold models, "
            "and the fold models' concatenated-embedding ensemble (each model's test embeddings L2-normalised, "
            "concatenated), as in the Metric Learning Reality Check.\n")


def pbt_note(a: Analysis) -> str:
    """PBT arms: what their selection and cost mean."""
    arms = [arm for arm in a.table.arms if a.table.search_mode(arm) == "pbt"]
    if not arms:
        return ""
    return (f"**Population Based Training** ({', '.join(arms)}): each seed trains one population; a member's thresholds "
            "change during training (their schedule: the figure *pbt schedule* and `schedule/…` columns of "
            "`trials.csv`). The selected result of a seed is its best member on validation; the cost counts every "
            "member's own epochs, so the whole population is paid for.\n")


def sections(a: Analysis, figures: dict[str, Path], folder: Path) -> list[Section]:
    """The report's sections in report.md's order."""
    st, s = a.table, a.settings
    conf = int(round(100 * s["confidence"]))
    ref = a.selections[a.reference]
    few = bool(a.summary.few_seeds.any()) or any(0 < n < 3 for n in a.match.get("seeds", []))
    opening = [
        unfinished_note(st, folder) or missing_cells_note(st),
        *([f"**The reference {a.reference} is a searched arm.** It is compared through its cross-fitted values "
           "(each seed's value of the configuration selected on the other seeds), which removes the winner's "
           "curse but controls the verdicts' error rates only approximately (docs/analysis.md). Prefer a "
           "single-configuration reference.\n"] if st.dims[a.reference] else []),
        f"Selection metric: validation {st.metric[4:]} (the last evaluation of each trial); reported: test "
        f"{st.test_metric[5:]}. Reference arm: **{a.reference}** (validation {ref.val.text()}), δ = {s['delta']:g}: "
        f"an arm *matches* when one of its configurations has a true validation mean (expected over seeds) of at "
        f"least the reference's − δ. Verdicts and intervals at {conf}% confidence. Diverged and errored seeds count "
        f"as {s['failure_value']:g}. Cost: " + ("GPU time" if st.cost_unit == "GPU-hours" else
                                                 "wall-clock time (no trial used a GPU)") +
        f", in each table's unit (h, min or s); bootstrap over seeds with {s['bootstrap']} replicates "
        f"(seed {s['seed']}).\n",
        protocol_note(a), pbt_note(a),
    ]
    out = [
        Section("opening", f"Study {st.name}", 1, opening),
        Section("verdicts", f"Verdicts against {a.reference}", 2, [
            "`matched`: shown with the study's confidence, accounting for seed noise in both arms and for the number "
            "of configurations tried; `not matched`: every configuration shown to fall short; `inconclusive`: the "
            "seeds cannot tell, and the last columns say how many would.\n",
            Rows(verdict_rows(a)) if not a.match.empty else "(no other arm)\n",
            intervals_note(a) if not a.match.empty else "", calibration_text(a)]),
        Section("design", "Design", 2, design_section(a)),
        Section("arms", "Arms", 2, [arms_section(a), arms_note(a)]),
        Section("tuning_cost", f"Tuning cost to match {a.reference}", 2, [
            "For arms shown to match: the arm's trials taken in random order (closed form), counting trials and cost "
            "up to the first usable trial of a configuration whose mean reaches the target; intervals from a "
            "bootstrap over seeds. Arms not shown to match have no cost to match.\n", match_section(a)]),
        Section("expected_best", "Expected best validation value against budget", 2, expected_best_section(a)),
        Section("best_single_trial", "Secondary: best single-seed trial (includes seed luck; not a tuning measure)",
                3, best_single_trial_section(a)),
        Section("reverse_gap", "Reverse gap", 2, [gap_section(a)]),
        Section("sensitivity", "Sensitivity to the grid", 2, [
            "Spread of the validation mean over each searched arm's configurations; the share of configurations "
            "shown to match the reference (Bonferroni, as in the verdict) and shown to fall short; tunability: the "
            "best configuration minus the arm's default configuration (its registry defaults), when the default is "
            "in the grid.\n", sensitivity_section(a)]),
        Section("importance", "Importance of each searched parameter", 3, [importance_section(a)]),
    ]
    if few:
        out.append(Section("few_seeds", "", 2, ["\n" + FEW_SEEDS_FOOTNOTE + "\n"]))
    if figures:
        from .figures import caption as figure_caption  # imports matplotlib

        out.append(Section("figures", "Figures", 2, [
            Figure(name, Path(path), Path(path).relative_to(folder).as_posix(), figure_caption(name, a))
            for name, path in figures.items()]))
    out.append(Section("closing", "", 2, [
        "\nTables as CSV: `tables/`. How every number is computed: docs/analysis.md. Recompute with "
        "`python -m dmltune report STUDY_DIR [--reference ARM] [--delta D] [--metric M] [--no-figures]`.\n"]))
    return out


def render(a: Analysis, figures: dict[str, Path], folder: Path) -> str:
    """report.md's text."""
    return markdown(sections(a, figures, folder))


def write_report(study_dir: str | Path, overrides: dict | None = None, metric: str | None = None,
                 figures: bool = True) -> tuple[Path, Analysis]:
    """Analyse a study folder and write ``report.md``, ``report.html``, ``tables/`` and (unless
    ``figures=False``) ``figures/`` into it."""
    folder = Path(study_dir)
    a = analyse(read_study_table(folder, metric), overrides)
    drawn = {}
    if figures:
        from .figures import save_figures

        drawn = save_figures(a, folder / "figures")
    write_tables(a, folder / "tables")
    parts = sections(a, drawn, folder)
    path = folder / "report.md"
    write_atomic(path, markdown(parts))
    from .report_html import html_report

    write_atomic(folder / "report.html", html_report(parts, a))
    return path, a


def advice_text(r: dict, unit: str = "", with_reason: bool = True) -> str:
    """What would decide an inconclusive arm: the cheapest design with its trials and cost (from
    :mod:`.advice`), after a staged design's own account of where it stopped (its ``reason``; left
    out with ``with_reason=False``, where the reason is shown beside it)."""
    design = r.get("decide_design") or ""
    if design == "two_stage":
        cheapest = (f"cheapest to decide: design two_stage, the selected configuration and the reference on about "
                    f"{count(r['decide_seeds'], 0)} fresh seeds ({count(r['decide_trials'], 0)} more trials, "
                    f"{cost(r['decide_cost'])}); the fixed design needs about {seeds_needed_text(r)} seeds per "
                    f"configuration")
    elif design == "fixed":
        cheapest = (f"cheapest to decide: about {seeds_needed_text(r)} seeds per configuration "
                    f"({count(r['decide_trials'], 0)} more trials, {cost(r['decide_cost'])})")
    else:
        cheapest = ""
    if r.get("design", "fixed") != "fixed":
        if not with_reason:
            return f"in a new study, {cheapest}" if cheapest else "– (see why)"
        reason = str(r.get("reason", ""))
        own = reason.split("; ", 1)[1] if reason.startswith("stage 2") and "; " in reason else reason
        return own + (f"; in a new study, {cheapest}" if cheapest else "")
    return cheapest or f"needs about {seeds_needed_text(r)} seeds per configuration to decide"


def design_section(a: Analysis) -> list:
    """The study's design, each stage's (look's) seeds, trials and cost, and why it stopped."""
    design = a.design
    if design is None:
        return []
    from ..study.stages import stopped_reason

    from ..study.stages import read_record

    text = design.describe() + ".\n"
    try:
        recorded = read_record(a.table.folder).get("stages") or [] if a.table.folder is not None else []
    except Exception:  # an unreadable record is resume's to report; the tables below still stand
        recorded = []
    word = "look" if design.kind == "sequential" else "stage"
    text += "".join(f"\n- {word} {entry.get('stage')}: {entry.get('why', '')}" for entry in recorded)
    text += "\n" if recorded else ""
    stopped = stopped_reason(a.table.folder)
    if stopped:
        text += f"\n**Stopped early:** {stopped}.\n"
    if a.stages is None or a.stages.empty or not design.staged:
        return [text]
    word = "look" if design.kind == "sequential" else "stage"
    total = a.stages.groupby("stage").agg(trials=("trials", "sum"), cost_h=("cost_h", "sum"))
    unit = time_unit(total.cost_h)
    what = f"{time_name(a.table.cost_unit)} ({unit[0]})"
    rows = [{word: int(r.stage), "arm": r.arm, "seeds": int(r.seeds), "trials": int(r.trials),
             what: in_unit(r.cost_h, unit)} for r in a.stages.itertuples()]
    rows += [{word: f"{int(k)} (all arms)", "arm": "", "seeds": "", "trials": int(v.trials),
              what: in_unit(v.cost_h, unit)} for k, v in total.iterrows()]
    return [text, Rows(rows)]


def console_summary(a: Analysis) -> str:
    """The terminal's summary: each arm's selection and values, then every arm's verdict."""
    st = a.table
    conf = int(round(100 * a.settings["confidence"]))
    time = "GPU time" if st.cost_unit == "GPU-hours" else "wall time"
    lines = [f"{'arm':<24} {'trials':>6} {time:>10}  {'val ' + st.metric[4:] + ' (mean ± CI)':<26} "
             f"{'test ' + st.test_metric[5:] + ' (mean ± CI)':<26} selected"]

    def interval(mean, half, n) -> str:
        text = number(mean) + ("" if not math.isfinite(half) else f" ± {half:.4f}")
        return text + (f" (n = {n})" + few_seeds_mark(n) if n else "")

    for r in a.summary.itertuples():
        mark = " (reference)" if r.arm == a.reference else ""
        spent = r.gpu_h if st.cost_unit == "GPU-hours" else r.wall_h
        lines.append(f"{r.arm:<24} {r.trials:>6} {cost(spent):>10}  {interval(r.val, r.val_half, r.val_n):<26} "
                     f"{interval(r.test, r.test_half, r.seeds):<26} {r.selected}{mark}")
        if st.kfold:
            lines.append(f"{'':<24} {'':>6} {'':>10}  {'':<26} "
                         f"{interval(r.test_ensemble, r.test_ensemble_half, r.test_ensemble_n):<26} "
                         f"(test: the {st.final['folds'].max():.0f} fold models' concatenated-embedding ensemble)")
    if not math.isfinite(a.target):
        lines.append(f"\nno verdicts: the reference {a.reference} has no usable trial")
        return "\n".join(lines)
    lines.append(f"\nto match {a.reference}: verdicts (does a configuration have a true validation mean ≥ "
                 f"{a.reference} − {a.settings['delta']:g}? {conf}% confidence)")
    for r in a.match.to_dict("records"):
        best = r["best_configuration"]
        line = f"  {r['arm']:<24} {r['verdict']:<13} gap {gap_text(r)} " + (best if best.startswith("(") else f"({best})")
        if r["verdict"] == "matched":
            line += (f"; expected {count(r['expected_trials_to_match'])} trials"
                     f"{bracket(r['expected_trials_low'], r['expected_trials_high'])}, "
                     f"{cost(r['expected_cost_to_match'])} {st.cost_unit} to match")
        elif r["verdict"] == "inconclusive":
            line += "; " + advice_text(r, st.cost_unit)
        lines.append(line)
    if a.calibration:
        lines.append("  " + calibration_text(a).strip().replace("**", ""))
    if bool(a.summary.few_seeds.any()):
        lines.append(FEW_SEEDS_FOOTNOTE)
    return "\n".join(lines)


__all__ = ["Figure", "Rows", "Section", "console_summary", "markdown", "markdown_table", "render", "sections",
           "write_report"]
