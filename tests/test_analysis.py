"""The analysis on results tables with known answers (tests/synthetic_study.py)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dmltune.analysis import analyse, best_so_far, configurations, cost_to_match, estimate, select, study_table
from dmltune.analysis.selection import difference
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


def test_welch_difference_matches_scipy():
    a, b = [0.52, 0.55, 0.50], [0.49, 0.47, 0.51, 0.50]
    d = difference(a, b)
    res = stats.ttest_ind(a, b, equal_var=False)
    lo, hi = res.confidence_interval(0.95)
    assert d.mean == pytest.approx(np.mean(a) - np.mean(b))
    assert d.mean - d.half == pytest.approx(lo) and d.mean + d.half == pytest.approx(hi)


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
    assert match.matching == 3 and match.budget_h == pytest.approx(6.0)  # only the usable 0.45 trials match


def test_cost_to_match_is_the_expected_first_hit_over_random_orderings():
    # 12 trials of one hour each; exactly 3 reach the target: E[first hit] = (n + 1) / (m + 1) = 13 / 4
    values = {(g, 0.0): (0.6 if g == 0.3 else 0.4) for g in (0.1, 0.2, 0.3, 0.4)}
    st = table_of(grid_arm("g", values))
    cost = cost_to_match(st, "g", target=0.55, replicates=20000, seed=1)
    assert cost.reached and cost.matching == 3 and cost.trials == 12
    assert cost.trials_mean == pytest.approx(13 / 4, rel=0.03)
    assert cost.cost_mean == pytest.approx(cost.trials_mean)          # one GPU-hour per trial
    assert cost.trials_low == 1 and cost.trials_high <= 12 - 3 + 1     # the latest first hit is at position 10
    every = cost_to_match(st, "g", target=0.0, replicates=100)
    assert every.trials_mean == 1 and every.trials_high == 1 and every.cost_mean == pytest.approx(1.0)
    exact = cost_to_match(st, "g", target=0.6, replicates=100)  # reaching the target exactly is a match
    assert exact.reached and exact.matching == 3
    never = cost_to_match(st, "g", target=0.61)
    assert not never.reached and math.isnan(never.trials_mean) and never.budget_h == pytest.approx(12.0)


def test_cost_to_match_weighs_trials_by_their_cost():
    cheap = trial_rows("g", "g", "a", 0, 0.6, 0.5, gpu_s=3600.0, config={"x": 1})
    dear = trial_rows("g", "g", "b", 0, 0.3, 0.2, gpu_s=3 * 3600.0, config={"x": 2})
    cost = cost_to_match(table_of(cheap + dear), "g", target=0.5, replicates=20000)
    # half the orderings pay 1 h, the other half 3 + 1 h: expected 2.5 h, 1.5 trials
    assert cost.cost_mean == pytest.approx(2.5, rel=0.03) and cost.trials_mean == pytest.approx(1.5, rel=0.03)


def test_best_so_far_curve_ends_at_the_best_usable_value_and_starts_empty():
    values = {(0.1, 0.0): 0.4, (0.2, 0.0): 0.6}
    rows = grid_arm("g", values, status={(0.2, 0.0, 0): "diverged"})
    st = table_of(rows)
    grid = np.array([0.0, 0.5, 6.0])
    curve = best_so_far(st, "g", grid, replicates=200)
    assert math.isnan(curve["median"][0]) and math.isnan(curve["median"][1])  # nothing finished yet
    assert curve["median"][2] == pytest.approx(0.6) and curve["low"][2] == pytest.approx(0.6)


def test_reference_default_reverse_gap_and_sensitivity():
    a = analyse(study_table(example_table(), SOURCE), {"delta": 0.01})
    assert a.reference == "ddtas" and a.target == pytest.approx(0.50)
    gap = a.reverse_gap
    assert gap["best_arm"] == "asms_grid" and gap["val"].mean == pytest.approx(0.01)
    assert gap["test"].mean == pytest.approx(0.42 - 0.41)
    sens = a.sensitivity.set_index("arm").loc["asms_grid"]
    assert sens.configurations == 6 and sens.range == pytest.approx(0.22) and sens.best == pytest.approx(0.52)
    assert sens.matching == pytest.approx(1 / 6)
    assert list(a.match.arm) == ["asms_grid", "ms_simp"]
    assert not a.match.set_index("arm").loc["ms_simp", "reached"]


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
    assert "| asms_grid | 3 of 18 | 4." in report  # expected trials to match ≈ 19/4
    assert "gamma_pos=0.1, gamma_neg=0" in report
    assert pd.read_csv(folder / "tables" / "configurations_asms_grid.csv").shape[0] == 6
    missing = subprocess.run([sys.executable, "-m", "dmltune", "report", str(tmp_path / "none")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "run or resume the study first" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
