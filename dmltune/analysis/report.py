"""``report.md``: a study's tables and figures in one Markdown file inside the study folder.

Also written: ``figures/<name>.png|svg`` and ``tables/*.csv`` (per-arm summary, tuning cost to
match, sensitivity, and every searched arm's full grid of configurations).
"""

from __future__ import annotations

import math
from pathlib import Path

from .compare import Analysis, analyse
from .selection import Estimate, configurations
from .trials import read_study_table

FIGURE_NOTES = {
    "best_so_far": "Best validation value found so far against the cost paid, if the searched arm's trials had "
                   "run one after another in random order (line: median over orderings; band: the interval). "
                   "Single-configuration arms are points at the cost of one run, with the interval over seeds. "
                   "The dashed line is the reference − δ: where a curve crosses it, the search has matched.",
    "heatmaps": "Validation mean over seeds for every cell of each searched grid; the red line on the colour bar "
                "is the reference arm's value. A sharp peak means the fixed thresholds need careful tuning.",
    "trajectories": "λ and the tolerances γ̂ per epoch for each arm's selected configuration (mean over seeds); "
                    "flat lines are fixed values, moving ones are adapted during training.",
    "mined_pairs": "Positive and negative pairs the miner keeps per batch, per epoch (as in DDTAS's Fig. 4).",
    "test_metric": "Test metric at the configuration selected on validation, with its confidence interval over seeds.",
    "similarity_histograms": "Cosine similarities of positive (green) and negative (red) validation pairs at the last "
                             "evaluation of the selected trials; less overlap means easier retrieval.",
}


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _hours(value) -> str:
    """Hours with three significant digits (CPU studies spend thousandths of an hour)."""
    return "–" if value is None or not math.isfinite(value) else f"{value:.3g}"


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "(none)\n"
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(r[h]).replace("|", "\\|") for h in header) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _interval(mean, half, n=None, digits=4) -> str:
    return Estimate(mean, half, n if n is not None else (2 if math.isfinite(half) else 1)).text(digits)


def arms_section(a: Analysis) -> str:
    st = a.table
    conf = int(round(100 * a.settings["confidence"]))
    rows = []
    for r in a.summary.itertuples():
        rows.append({"arm": f"**{r.arm}**" if r.arm == a.reference else r.arm, "searched": r.searched,
                     "configs": r.configurations,
                     "trials (ok / diverged / error / unfinished)": f"{r.trials} ({r.ok} / {r.diverged} / {r.errors} / {r.unfinished})",
                     "GPU-h": _hours(r.gpu_h), "wall-h": _hours(r.wall_h), "selected on validation": r.selected,
                     f"val {st.metric[4:]}": _fmt(r.val),
                     f"test {st.test_metric[5:]} (mean ± {conf}% CI)": _interval(r.test, r.test_half, r.seeds)})
    return markdown_table(rows)


def match_section(a: Analysis) -> str:
    unit = a.table.cost_unit
    if a.match.empty or not math.isfinite(a.target):
        return "No target: the reference arm has no usable trial.\n"
    rows = []
    for r in a.match.to_dict("records"):
        if r["reached"]:
            trials = f"{r['trials_mean']:.2f} [{r['trials_low']:.0f}, {r['trials_high']:.0f}]"
            cost = f"{_hours(r['cost_mean'])} [{_hours(r['cost_low'])}, {_hours(r['cost_high'])}]"
        else:
            trials, cost = "not reached within the budget", "–"
        rows.append({"arm": r["arm"], "matching trials": f"{r['matching']} of {r['trials']}",
                     "expected trials to match [interval]": trials, f"expected {unit} to match [interval]": cost,
                     f"budget ({unit})": _hours(r["budget_h"])})
    return markdown_table(rows)


def gap_section(a: Analysis) -> str:
    gap = a.reverse_gap
    if not gap:
        return "No searched arm with a usable trial to compare with.\n"
    conf = int(round(100 * a.settings["confidence"]))
    val, test = gap["val"], gap["test"]
    return (f"Best fixed configuration: **{gap['best_arm']}** with {gap['best_configuration']}.\n\n"
            f"- validation: best fixed − {a.reference} = {_interval(val.mean, val.half, val.n)}\n"
            f"- test: best fixed − {a.reference} = {_interval(test.mean, test.half, test.n)} ({conf}% Welch interval "
            "over seeds)\n\nA positive gap means the tuned fixed thresholds beat the reference; an interval that "
            "contains 0 means the study cannot tell them apart.\n")


def sensitivity_section(a: Analysis) -> str:
    if a.sensitivity.empty:
        return "(no searched arm)\n"
    rows = []
    for r in a.sensitivity.to_dict("records"):
        rows.append({"arm": r["arm"], "configurations": r["configurations"], "worst": _fmt(r.get("worst")),
                     "median": _fmt(r.get("median")), "best": _fmt(r.get("best")), "range": _fmt(r.get("range")),
                     "std": _fmt(r.get("std")), "share matching the reference": _fmt(r.get("matching"), 2)})
    return markdown_table(rows)


def write_tables(a: Analysis, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    a.summary.to_csv(folder / "arms.csv", index=False)
    a.match.to_csv(folder / "tuning_cost.csv", index=False)
    a.sensitivity.to_csv(folder / "sensitivity.csv", index=False)
    for arm in a.searched_arms:
        configurations(a.table, arm, a.settings["confidence"]).drop(columns="_key").to_csv(
            folder / f"configurations_{arm}.csv", index=False)


def render(a: Analysis, figures: dict[str, Path], folder: Path) -> str:
    st, s = a.table, a.settings
    conf = int(round(100 * s["confidence"]))
    ref = a.selections[a.reference]
    parts = [
        f"# Study {st.name}\n",
        f"Selection metric: validation {st.metric[4:]} (the last evaluation of each trial); reported: test "
        f"{st.test_metric[5:]}. Reference arm: **{a.reference}** (validation {ref.val.text()}), δ = {s['delta']:g}, "
        f"so a trial *matches* at validation ≥ {_fmt(a.target)}. Cost: {st.cost_unit}"
        + ("" if st.cost_unit == "GPU-hours" else " (no trial used a GPU)") + f". Intervals: {conf}%, over seeds; "
        f"bootstrap over {s['bootstrap']} random orderings (seed {s['seed']}).\n",
        "## Arms\n", arms_section(a),
        "\nErrored, diverged and unfinished trials are never selected; their time is counted in every cost.\n",
        f"## Tuning cost to match {a.reference}\n",
        "Trials and cost each arm's search needs, in random order, to first reach the target "
        "(mean over orderings [interval]).\n\n", match_section(a),
        "\n## Reverse gap\n", gap_section(a),
        "\n## Sensitivity to the grid\n",
        "Spread of the validation mean over each searched arm's configurations.\n\n", sensitivity_section(a),
        "\n## Figures\n",
    ]
    for name, path in figures.items():
        rel = path.relative_to(folder).as_posix()
        parts.append(f"### {name.replace('_', ' ').capitalize()}\n\n![{name}]({rel})\n\n{FIGURE_NOTES[name]}\n")
    parts.append("\nTables as CSV: `tables/`. Recompute with `python -m dmltune report STUDY_DIR "
                 "[--reference ARM] [--delta D] [--metric M]`.\n")
    return "\n".join(parts)


def write_report(study_dir: str | Path, overrides: dict | None = None, metric: str | None = None) -> tuple[Path, Analysis]:
    """Analyse a study folder and write ``report.md``, ``figures/`` and ``tables/`` into it."""
    from ..plots import save_figures

    folder = Path(study_dir)
    a = analyse(read_study_table(folder, metric), overrides)
    figures = save_figures(a, folder / "figures")
    write_tables(a, folder / "tables")
    path = folder / "report.md"
    path.write_text(render(a, figures, folder))
    return path, a




def console_summary(a: Analysis) -> str:
    """A few lines for the terminal: each arm's selection and test value, and the cost to match."""
    st = a.table
    lines = [f"{'arm':<24} {'trials':>6} {st.cost_unit:>10}  {'val ' + st.metric[4:]:>12}  test {st.test_metric[5:]} (mean ± CI)   selected"]
    for r in a.summary.itertuples():
        mark = " (reference)" if r.arm == a.reference else ""
        cost = r.gpu_h if st.cost_unit == "GPU-hours" else r.wall_h
        lines.append(f"{r.arm:<24} {r.trials:>6} {_hours(cost):>10}  {_fmt(r.val):>12}  "
                     f"{_interval(r.test, r.test_half, r.seeds):<24} {r.selected}{mark}")
    if math.isfinite(a.target):
        lines.append(f"\nto match {a.reference} (validation ≥ {a.target:.4f}):")
        for r in a.match.to_dict("records"):
            lines.append(f"  {r['arm']:<22} " + (f"{r['trials_mean']:.2f} trials, {_hours(r['cost_mean'])} {st.cost_unit} expected"
                                                if r["reached"] else "not reached within the budget"))
    return "\n".join(lines)


__all__ = ["console_summary", "markdown_table", "render", "write_report"]
