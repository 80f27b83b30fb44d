"""The analysis on results tables with known answers (tests/synthetic_study.py)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dmltune.analysis import (analyse, configurations, estimate, expected_max, first_match, select, study_table,
                              trials_for_probability)
from dmltune.analysis.differences import paired, welch
from dmltune.registry import ConfigError
from synthetic_study import example_table, grid_arm, single_arm, trial_rows, write_study_dir

SOURCE = {"eval": {"metric": "map@r"}, "arms": [{"name": "asms_grid"}, {"name": "ms_simp"}, {"name": "ddtas"}]}


def table_of(rows, source=None):
    return study_table(pd.DataFrame(rows), source or {"eval": {"metric": "map@r"}})


def test_final_value_is_the_last_report_and_cost_unit_follows_gpu_use():
    st = study_table(example_table(), SOURCE)
    assert st.arms == ["asms_grid", "ms_simp", "ddtas"]
    assert len(st.final) == 24 and (st.final.epoch == 3).all()
    assert st.dims == {"asms_grid": ["config/miner.gamma_pos", "config/miner.gamma_neg"], "ms_simp": [], "ddtas": []}
    assert st.cost_unit == "GPU-hours" and st.final.cost_h.sum() == pytest.approx(24.0)
    cpu = example_table().assign(gpu_s=0.0)
    assert study_table(cpu, SOURCE).cost_unit == "wall-hours"


def test_estimate_is_a_student_t_interval_and_handles_one_or_no_value():
    values = [0.5, 0.52, 0.47, 0.55]
    e = estimate(values, 0.95)
    half = stats.t.ppf(0.975, 3) * np.std(values, ddof=1) / 2
    assert e.mean == pytest.approx(np.mean(values)) and e.half == pytest.approx(half) and e.n == 4
    one = estimate([0.4])
    assert one.mean == 0.4 and math.isnan(one.half) and one.n == 1 and "n = 1" in one.text()
    assert estimate([]).n == 0 and estimate([]).text() == "–"
    assert estimate([0.4, np.nan, 0.6]).n == 2  # missing values are not values


def test_welch_and_paired_differences_match_scipy():
    a, b = [0.52, 0.55, 0.50, np.nan], [0.49, 0.47, 0.51, 0.50]
    d = welch(np.array([a]), np.array(b))
    res = stats.ttest_ind([0.52, 0.55, 0.50], b, equal_var=False)
    lo, hi = res.confidence_interval(0.95)
    assert d.mean[0] == pytest.approx(np.mean(a[:3]) - np.mean(b))
    assert d.mean[0] - d.half(0.95)[0] == pytest.approx(lo) and d.mean[0] + d.half(0.95)[0] == pytest.approx(hi)
    assert d.lower(0.95)[0] == pytest.approx(res.confidence_interval(0.90).low)   # one-sided 95% = two-sided 90%
    p = paired(np.array([a]), np.array(b))                                       # over the 3 shared seeds
    rel = stats.ttest_rel([0.52, 0.55, 0.50], b[:3])
    assert p.n[0] == 3 and p.mean[0] == pytest.approx(np.mean(np.subtract(a[:3], b[:3])))
    assert p.mean[0] + p.half(0.95)[0] == pytest.approx(rel.confidence_interval(0.95).high)


def test_grid_selection_on_validation_means_and_test_over_the_selected_seeds():
    st = study_table(example_table(), SOURCE)
    sel = select(st, "asms_grid")
    assert sel.mode == "grid" and sel.configuration == "gamma_pos=0.1, gamma_neg=0"
    assert sel.val.mean == pytest.approx(0.52) and sel.test.mean == pytest.approx(0.42) and sel.test.n == 3
    table = configurations(st, "asms_grid")
    assert list(table.val_mean.round(4)) == [0.52, 0.47, 0.45, 0.40, 0.35, 0.30]


def test_selection_never_looks_at_test():
    rows = grid_arm("g", {(0.1, 0.0): 0.50, (0.2, 0.0): 0.49}, seeds=(0, 1))
    frame = pd.DataFrame(rows)
    frame.loc[frame["config/miner.gamma_pos"] == 0.2, "test/map@r"] = 0.99  # best on test, not on validation
    sel = select(study_table(frame), "g")
    assert sel.configuration.startswith("gamma_pos=0.1") and sel.test.mean == pytest.approx(0.40)


def test_ties_go_to_more_usable_seeds_then_to_sorted_order():
    values = {(0.1, 0.0): 0.5, (0.2, 0.0): 0.5, (0.3, 0.0): 0.5}
    st = table_of(grid_arm("g", values, status={(0.1, 0.0, 2): "error"}))
    assert select(st, "g").configuration == "gamma_pos=0.2"  # 3 usable seeds beat 2
    st = table_of(grid_arm("g", values))
    assert select(st, "g").configuration == "gamma_pos=0.1"  # full tie: first in order


def test_missing_seeds_shrink_n_and_widen_the_interval():
    rows = grid_arm("g", {(0.1, 0.0): 0.5}, seeds=(0, 1, 2), noise={(0.1, 0.0, 1): 0.02, (0.1, 0.0, 2): -0.01})
    rows = [r for r in rows if not (r["seed"] == 2)]  # seed 2 never ran
    sel = select(table_of(rows), "g")
    assert sel.val.n == 2 and sel.val.mean == pytest.approx(0.51)
    assert sel.val.half == pytest.approx(stats.t.ppf(0.975, 1) * np.std([0.5, 0.52], ddof=1) / math.sqrt(2))


def test_errored_and_diverged_trials_are_never_selected_but_are_paid_for():
    values = {(0.1, 0.0): 0.45, (0.2, 0.0): 0.60}
    status = {(0.2, 0.0, 0): "diverged", (0.2, 0.0, 1): "error", (0.2, 0.0, 2): "error"}
    rows = grid_arm("g", values, status=status)
    frame = pd.DataFrame(rows)
    # an errored trial may have reported a high value before failing: it still must not count
    frame.loc[(frame["config/miner.gamma_pos"] == 0.2) & (frame.seed == 1), "val/map@r"] = 0.9
    rows = frame.to_dict("records") + single_arm("ref", [0.44, 0.44, 0.44])
    st = table_of(rows)
    a = analyse(st, {"reference": "ref", "delta": 0.0})
    assert a.selections["g"].configuration == "gamma_pos=0.1"  # gamma_neg was not searched
    summary = a.summary.set_index("arm")
    assert summary.loc["g", "diverged"] == 1 and summary.loc["g", "errors"] == 2 and summary.loc["g", "trials"] == 6
    assert summary.loc["g", "gpu_h"] == pytest.approx(6.0)            # every trial's hour counted
    match = a.match.set_index("arm").loc["g"]
    assert match.verdict == "matched"                                    # 0.45 ≥ 0.44 with no noise at all
    assert match.matching_trials == 3 and match.budget_h == pytest.approx(6.0)  # only the usable 0.45 trials match
    assert match.expected_trials_to_match == pytest.approx(7 / 4)        # (n + 1) / (m + 1), failures paid for


def test_first_match_closed_form_equals_the_average_over_every_order():
    import itertools

    hits = np.array([False, True, False, False, True])
    cost = np.array([1.0, 2.0, 0.5, 3.0, 1.5])
    trials, spent = [], []
    for order in itertools.permutations(range(5)):
        first = next(i for i, j in enumerate(order) if hits[j])
        trials.append(first + 1)
        spent.append(cost[list(order[:first + 1])].sum())
    t, c = first_match(hits, cost)
    assert t == pytest.approx(np.mean(trials)) and t == pytest.approx(6 / 3)   # (n + 1) / (m + 1)
    assert c == pytest.approx(np.mean(spent))
    assert all(math.isnan(v) for v in first_match(np.zeros(4, bool), np.ones(4)))


def test_trials_for_probability_is_the_hypergeometric_quantile():
    N, m = 12, 3
    for p in (0.5, 0.9, 0.99):
        n = trials_for_probability(N, m, p)
        reach = lambda k: 1 - stats.hypergeom(N, m, k).pmf(0)
        assert reach(n) >= p and (n == 1 or reach(n - 1) < p)
    assert trials_for_probability(12, 12, 0.9) == 1 and math.isnan(trials_for_probability(12, 0, 0.9))


def test_expected_max_equals_the_average_over_all_subsets():
    import itertools

    rng = np.random.default_rng(3)
    for N in (1, 2, 5, 7):
        v = rng.random(N).round(2)           # rounding makes ties likely
        got = expected_max(v)
        for n in range(1, N + 1):
            brute = np.mean([max(c) for c in itertools.combinations(v, n)])
            assert got[n - 1] == pytest.approx(brute, abs=1e-12)
    assert expected_max([0.3, np.nan, 0.5])[-1] == pytest.approx(0.5)


def test_reference_default_reverse_gap_and_sensitivity():
    a = analyse(study_table(example_table(), SOURCE), {"delta": 0.01})
    assert a.reference == "ddtas" and a.target == pytest.approx(0.50)
    gap = a.reverse_gap
    assert gap["best_arm"] == "asms_grid" and gap["val"].mean == pytest.approx(0.01)
    assert gap["test"].mean == pytest.approx(0.42 - 0.41)
    sens = a.sensitivity.set_index("arm").loc["asms_grid"]
    assert sens.configurations == 6 and sens.range == pytest.approx(0.22) and sens.best == pytest.approx(0.52)
    # one cell's mean is above the target, but the reference's own seed noise leaves it unproven
    assert sens.shown_matching == 0 and sens.shown_short == pytest.approx(5 / 6)
    assert list(a.match.arm) == ["asms_grid", "ms_simp"]
    verdicts = a.match.set_index("arm").verdict
    assert verdicts["asms_grid"] == "inconclusive" and verdicts["ms_simp"] == "not_matched"


def test_reference_and_delta_come_from_the_study_file_or_the_caller():
    source = {**SOURCE, "analysis": {"reference": "ms_simp", "delta": 0.0}}
    a = analyse(study_table(example_table(), source))
    assert a.reference == "ms_simp" and a.target == pytest.approx(0.42)
    a = analyse(study_table(example_table(), source), {"reference": "ddtas", "delta": 0.02})
    assert a.reference == "ddtas" and a.target == pytest.approx(0.49)
    with pytest.raises(ConfigError, match="reference arm 'nope' has no trials"):
        analyse(study_table(example_table(), SOURCE), {"reference": "nope"})


def test_replicate_arms_select_within_each_seeds_search():
    rows = []
    for seed, vals in enumerate([(0.3, 0.5), (0.6, 0.2), (0.4, 0.45)]):
        for i, v in enumerate(vals):
            rows += trial_rows("tpe", f"seed_{seed}", f"t{seed}_{i}", seed, v, v - 0.1,
                               config={"miner.gamma_pos": 0.01 * (seed * 2 + i + 1)})
    sel = select(table_of(rows), "tpe")
    assert sel.mode == "replicates" and sel.val.n == 3
    assert sel.val.mean == pytest.approx(np.mean([0.5, 0.6, 0.45]))
    assert sel.test.mean == pytest.approx(np.mean([0.4, 0.5, 0.35]))


def test_unknown_metric_names_the_available_ones():
    with pytest.raises(ConfigError, match=r"no column 'val/recall@3'.*map@r"):
        study_table(example_table(), SOURCE, metric="recall@3")


def test_report_writes_markdown_tables_and_every_figure(tmp_path):
    folder = write_study_dir(tmp_path / "study", analysis={"reference": "ddtas", "delta": 0.01})
    run = subprocess.run([sys.executable, "-m", "dmltune", "report", str(folder)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "asms_grid" in run.stdout and "to match ddtas" in run.stdout
    report = (folder / "report.md").read_text()
    for name in ("best_so_far", "heatmaps", "trajectories", "mined_pairs", "test_metric", "similarity_histograms"):
        assert f"figures/{name}.png" in report
        assert (folder / "figures" / f"{name}.png").stat().st_size > 1000
        assert (folder / "figures" / f"{name}.svg").read_text().lstrip().startswith("<?xml")
    assert "| asms_grid | inconclusive |" in report and "| ms_simp | **not matched** |" in report
    assert "inconclusive" in run.stdout and "not_matched" in run.stdout
    assert "gamma_pos=0.1, gamma_neg=0" in report
    assert pd.read_csv(folder / "tables" / "configurations_asms_grid.csv").shape[0] == 6
    missing = subprocess.run([sys.executable, "-m", "dmltune", "report", str(tmp_path / "none")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "run or resume the study first" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- report.md's wording (issue #25)


def _report_text(tmp_path, table=None, design=None) -> str:
    import yaml

    from dmltune.analysis.report import write_report

    folder = write_study_dir(tmp_path / "s", table, analysis={"reference": "ddtas", "delta": 0.01})
    if design:
        source = yaml.safe_load((folder / "study.yaml").read_text())
        (folder / "study.yaml").write_text(yaml.safe_dump({**source, "design": design}))
    path, _ = write_report(folder, figures=False)
    return path.read_text()


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else len(text)]


def _tables(text: str) -> list[list[dict]]:
    """report.md's tables as rows of {header: cell}."""
    tables, lines = [], text.splitlines() + [""]
    block = []
    for line in lines:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip()[1:-1].split(" | ")])
        elif block:
            tables.append([dict(zip(block[0], row)) for row in block[2:]])
            block = []
    return tables


def test_report_says_which_interval_is_which(tmp_path):
    text = _report_text(tmp_path)
    verdicts = _section(text, "Verdicts")
    assert "gap to the reference [one-sided bounds]" in _tables(verdicts)[0][0]
    assert "one-sided confidence bounds" in verdicts and "not a two-sided interval" in verdicts
    assert "pays for picking the best" in verdicts          # the lower bound is simultaneous over configurations
    assert "Reverse gap* (± h, below): a two-sided 95% interval" in verdicts
    assert "*(mean ± CI)*: a two-sided 95% interval for one arm's own mean" in verdicts
    assert "Both are two-sided 95% intervals" in _section(text, "Reverse gap")


def test_cost_headers_name_the_unit_of_their_values(tmp_path):
    cpu = example_table().assign(gpu_s=0.0)
    cpu["wall_s"] = cpu.wall_s / 1800                        # each trial's final wall_s: 2 s
    text = _report_text(tmp_path, cpu)
    assert "wall-hours" not in text and "GPU-hours" not in text
    assert "GPU time" not in text and "no trial used a GPU" in text   # a CPU study has no "GPU time 0 s"
    tables = _tables(text)
    timed = [h for t in tables for h in t[0] if "time" in h]
    assert timed and all("(s)" in h for h in timed), timed
    arms = next(t for t in tables if "wall time (s)" in t[0])
    assert {r["arm"].strip("*"): float(r["wall time (s)"]) for r in arms} == {"asms_grid": 36, "ms_simp": 6, "ddtas": 6}
    cost = next(t for t in tables if "budget: wall time (s)" in t[0])
    assert float(next(r for r in cost if r["arm"] == "ms_simp")["budget: wall time (s)"]) == 6
    best = next(t for t in tables if "expected wall time (s)" in t[0])
    assert [float(r["expected wall time (s)"]) for r in best if r["arm"] == "ms_simp"] == [2, 4, 6]
    gpu = _tables(_report_text(tmp_path / "gpu"))             # 3600 GPU-seconds per trial: hours
    arms = next(t for t in gpu if "GPU time (h)" in t[0])
    assert float(next(r for r in arms if r["arm"] == "asms_grid")["GPU time (h)"]) == 18


def test_report_says_why_validation_and_test_values_differ(tmp_path):
    arms = _section(_report_text(tmp_path), "Arms")
    assert "Validation and test values are not comparable with each other" in arms
    assert "other classes and set sizes" in arms


@pytest.mark.parametrize("design", [None, {"sequential": {"looks": [3, 5, 8]}}])
def test_an_inconclusive_arm_says_its_reason_and_its_advice_once(tmp_path, design):
    verdicts = _section(_report_text(tmp_path, design=design), "Verdicts")
    row = next(line for line in verdicts.splitlines() if line.startswith("| asms_grid | inconclusive"))
    cells = _tables(verdicts)[0][0]
    assert row.count("cheapest to decide") == 1 and "cheapest to decide" in cells["what would decide"]
    reason = "undecided after look 1 of 3" if design else "within the seed noise"
    assert row.count(reason) == 1 and reason in cells["why"]


def test_an_early_stopped_trial_is_counted_as_stopped_and_used_like_ok(tmp_path):
    """ASHA's early stop has its own status (issue #25): the Arms table counts it apart from `ok`, and the
    analysis uses its value as it uses a finished trial's."""
    from dmltune.analysis import read_study_table
    from dmltune.analysis.report import write_report

    table = example_table()
    stopped = (table.arm == "asms_grid") & (table.seed == 0) & (table["config/miner.gamma_pos"] == 0.2)
    table.loc[stopped, "status"] = "stopped"
    folder = write_study_dir(tmp_path / "study", table, analysis={"reference": "ddtas"})
    write_report(folder, figures=False)
    md = (folder / "report.md").read_text()
    assert "trials (ok / stopped early / diverged / error / unfinished)" in md
    assert any(line.startswith("| asms_grid ") and "| 18 (16 / 2 / 0 / 0 / 0) |" in line for line in md.splitlines())
    a = analyse(read_study_table(folder), {"reference": "ddtas"})
    assert a.summary.set_index("arm").loc["asms_grid", "stopped"] == 2
    assert a.summary.set_index("arm").loc["asms_grid", "unfinished"] == 0
