"""Honest tuning-cost statistics (issue #13): verdicts calibrated by simulation against a known
truth, the divergence penalty, the cross-fitted (winner's-curse-free) estimate, power, pairing,
tunability and importance, and the honesty of every output (n < 3 flags, axis limits, units)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from dmltune.analysis import analyse, arm_verdict, configurations, cross_fitted, seeds_needed, select, study_table
from dmltune.analysis.selection import seed_matrix
from dmltune.analysis.formatting import cost
from synthetic_study import grid_arm, simulated_table, single_arm, trial_rows, write_study_dir

DELTA = 0.01
SOURCE = {"eval": {"metric": "map@r"}, "arms": [{"name": "grid"}, {"name": "ref"}],
          "analysis": {"reference": "ref", "delta": DELTA}}
STUDIES = 200


def verdict_rates(config_means, seeds, *, seed_sd=0.0, studies=STUDIES, seed=0) -> pd.Series:
    """Share of simulated studies with each verdict for the arm 'grid' against 'ref' (true mean 0.5)."""
    rng = np.random.default_rng(seed)
    verdicts = []
    for _ in range(studies):
        table = simulated_table(rng, config_means, 0.5, DELTA, seeds, seed_sd=seed_sd)
        verdicts.append(analyse(study_table(table, SOURCE)).verdicts["grid"].verdict)
    return pd.Series(verdicts).value_counts(normalize=True).reindex(
        ["matched", "not_matched", "inconclusive"], fill_value=0.0)


# "No configuration truly matching is rarely called matched" and "an arm identical to the reference is
# rarely called not_matched" are tests/test_designs.py's boundary and equal-best tests, for every design
# (the boundary truth, θ = 0, is stricter than the 2δ-below one these files used to simulate).


@pytest.mark.slow
def test_one_configuration_truly_above_is_found():
    # one configuration 4δ above the reference, the other eleven far below; 5 seeds, seed sd = δ
    rates = verdict_rates([0.5 + 4 * DELTA] + [0.5 - 10 * DELTA] * 11, seeds=5, seed=1)
    assert rates["matched"] >= 0.80


@pytest.mark.slow
def test_shared_seed_effects_are_paired_away_without_false_matches():
    # a seed effect twice the noise, shared by both arms: the blocked model removes it, keeps the
    # false-match rate down and finds a true match that Welch's interval would drown in the seed effect
    below = verdict_rates([0.5 - 2 * DELTA] * 12, seeds=3, seed_sd=2 * DELTA, studies=100, seed=3)
    assert below["matched"] <= 0.10
    rng = np.random.default_rng(4)
    a = analyse(study_table(simulated_table(rng, [0.5 + 2 * DELTA] * 4, 0.5, DELTA / 4, 4, seed_sd=4 * DELTA), SOURCE))
    assert a.verdicts["grid"].method == "blocked" and a.verdicts["grid"].verdict == "matched"
    welch = arm_verdict("grid", seed_matrix(a.table, "grid"), a.selections["ref"].values, DELTA, 0.95, pairing=False)
    assert welch.method == "welch" and welch.verdict != "matched"   # the seed effect drowns Welch's interval


def test_verdicts_at_the_boundary_keep_their_error_rates():
    # the best configuration exactly at the target (true gap −δ): neither verdict may be claimed often
    rng = np.random.default_rng(5)
    out = []
    for _ in range(400):
        values = pd.DataFrame([[0.49 + rng.normal(0, DELTA) for _ in range(3)]] +
                              [[0.40 + rng.normal(0, DELTA) for _ in range(3)] for _ in range(5)])
        ref = pd.Series(0.5 + rng.normal(0, DELTA, 3))
        out.append(arm_verdict("a", values, ref, DELTA, 0.95).verdict)
    rates = pd.Series(out).value_counts(normalize=True)
    # nominal 5% each; 400 studies leave a Monte-Carlo standard error of about 1.1%
    assert rates.get("matched", 0) <= 0.08 and rates.get("not_matched", 0) <= 0.08


def test_seeds_needed_delivers_the_promised_power():
    # an inconclusive arm (one configuration 1.5δ above the target) says how many seeds would decide;
    # simulating studies with that many seeds decides "matched" about that often
    rng = np.random.default_rng(6)
    values = pd.DataFrame([0.5 + 0.5 * DELTA + rng.normal(0, DELTA, 3)])
    ref = pd.Series(0.5 + rng.normal(0, DELTA, 3))
    v = arm_verdict("a", values, ref, DELTA, 0.95, power=0.8, pairing=False)
    assert v.verdict == "inconclusive" and v.seeds_needed >= 3
    n = seeds_needed(1.5 * DELTA, 2 * DELTA ** 2, 0.05, 0.8, paired=False, var_a=DELTA ** 2, var_b=DELTA ** 2)
    wins = 0
    for _ in range(400):
        sim = pd.DataFrame([0.5 + 0.5 * DELTA + rng.normal(0, DELTA, int(n))])
        wins += arm_verdict("a", sim, pd.Series(0.5 + rng.normal(0, DELTA, int(n))), DELTA, 0.95,
                            pairing=False).verdict == "matched"
    assert 0.72 <= wins / 400 <= 0.92
    n_less = seeds_needed(1.5 * DELTA, 2 * DELTA ** 2, 0.05, 0.8, paired=False, var_a=DELTA ** 2, var_b=DELTA ** 2) - 1
    assert n_less >= 2   # and one seed fewer would not be enough (binary search finds the smallest)
    assert math.isinf(seeds_needed(0.0, 1.0, 0.05, 0.8, paired=True))
    assert math.isnan(seeds_needed(0.01, math.nan, 0.05, 0.8, paired=True))


def test_cross_fitted_estimate_is_unbiased_where_the_naive_one_is_not():
    rng = np.random.default_rng(7)
    truth_means = np.linspace(0.45, 0.47, 12)
    naive_err, cf_err = [], []
    for _ in range(300):
        values = truth_means[:, None] + rng.normal(0, DELTA, (12, 3))
        best = int(np.argmax(values.mean(axis=1)))
        naive_err.append(values[best].mean() - truth_means[best])
        cf_err.append(cross_fitted(pd.DataFrame(values)).mean - truth_means[best])
    naive_err, cf_err = np.array(naive_err), np.array(cf_err)
    se = cf_err.std(ddof=1) / math.sqrt(len(cf_err))
    assert abs(cf_err.mean()) <= se                       # unbiased within one standard error
    assert naive_err.mean() > 5 * naive_err.std(ddof=1) / math.sqrt(len(naive_err))   # winner's curse


def test_selection_reports_the_cross_fitted_value_beside_the_naive_one():
    values = {(0.1, 0.0): 0.50, (0.2, 0.0): 0.48, (0.3, 0.0): 0.46}
    noise = {(0.2, 0.0, 0): 0.05, (0.1, 0.0, 1): -0.01}
    st = study_table(pd.DataFrame(grid_arm("g", values, noise=noise)))
    sel = select(st, "g")
    # seed 0 held out: select on seeds 1, 2 → 0.1 (0.495 vs 0.48), read 0.50 on seed 0;
    # seed 1 held out: select on 0, 2 → 0.2 (0.505), read 0.48; seed 2: 0.2 (0.505 vs 0.495), read 0.48
    assert sel.val_crossfit.mean == pytest.approx((0.50 + 0.48 + 0.48) / 3)
    assert sel.val.mean > sel.val_crossfit.mean


def test_a_configuration_that_diverged_on_two_of_three_seeds_is_not_selected():
    values = {(0.1, 0.0): 0.60, (0.2, 0.0): 0.50}
    status = {(0.1, 0.0, 0): "diverged", (0.1, 0.0, 1): "diverged"}
    st = study_table(pd.DataFrame(grid_arm("g", values, status=status) + single_arm("ref", [0.5, 0.5, 0.5])))
    a = analyse(st, {"reference": "ref", "delta": DELTA})
    assert a.selections["g"].configuration == "gamma_pos=0.2"
    table = a.table.cache[("configurations", "g", 0.95, 0.0)]
    penalised = table.set_index("configuration").loc["gamma_pos=0.1"]
    assert penalised.val_mean == pytest.approx(0.60 / 3) and penalised.failed == 2   # diverged counts as 0
    # the penalty is the analysis setting failure_value; at most 0, so a failure never outranks a result
    b = analyse(study_table(st.per_epoch, {}), {"reference": "ref", "delta": DELTA, "failure_value": -1.0})
    assert b.table.cache[("configurations", "g", 0.95, -1.0)].set_index("configuration").loc[
        "gamma_pos=0.1"].val_mean == pytest.approx((0.60 - 2) / 3)
    from dmltune.registry import ConfigError

    with pytest.raises(ConfigError, match="failure_value"):
        analyse(st, {"reference": "ref", "failure_value": 0.5})


def test_replicate_arms_and_missing_variance_are_inconclusive_with_a_reason():
    rows = single_arm("ref", [0.50, 0.51, 0.49])
    for seed in range(3):
        for i in range(2):
            rows += trial_rows("tpe", f"seed_{seed}", f"t{seed}_{i}", seed, 0.55, 0.45, config={"miner.gamma_pos": seed * 2 + i})
    a = analyse(study_table(pd.DataFrame(rows)), {"reference": "ref"})
    v = a.verdicts["tpe"]
    assert v.verdict == "inconclusive" and "two seeds" in v.reason and math.isfinite(v.seeds_needed)


def test_tuning_cost_table_has_one_row_per_arm_and_numbers_only_for_matches(tmp_path):
    rng = np.random.default_rng(8)
    table = simulated_table(rng, [0.5 + 5 * DELTA, 0.4, 0.4, 0.4], 0.5, DELTA / 2, 4)
    a = analyse(study_table(table, SOURCE))
    row = a.match.set_index("arm").loc["grid"]
    assert row.verdict == "matched" and row.matching_trials == 4
    assert row.expected_trials_to_match == pytest.approx(17 / 5)                   # (N + 1) / (m + 1)
    assert row.expected_cost_to_match == pytest.approx(17 / 5 * 600 / 3600)         # equal costs
    assert row.expected_trials_low <= row.expected_trials_to_match <= row.expected_trials_high
    assert row.trials_needed_p90 == 7 and math.isnan(row.seeds_needed)   # 1 − C(12, 7)/C(16, 7) = 0.93 ≥ 0.9 > 0.885 at 6
    assert a.calibration["arm"] == "ref"
    folder = write_study_dir(tmp_path / "s", table, analysis={"reference": "ref", "delta": DELTA})
    run = subprocess.run([sys.executable, "-m", "dmltune", "report", str(folder), "--no-figures"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert not (folder / "figures").exists() and (folder / "report.md").is_file()
    csv = pd.read_csv(folder / "tables" / "tuning_cost.csv")
    for column in ("arm", "verdict", "configurations", "trials", "expected_trials_to_match", "expected_cost_to_match",
                   "trials_needed_p90", "seeds_needed"):
        assert column in csv
    assert list(csv.arm) == ["grid"]
    eb = pd.read_csv(folder / "tables" / "expected_best.csv")
    assert list(eb.columns[:6]) == ["arm", "trials", "cost_h", "expected_best", "low", "high"]
    assert eb.groupby("arm").trials.max().to_dict() == {"grid": 4, "ref": 4}   # configurations; ref: flat
    grid = eb[eb.arm == "grid"].expected_best
    assert grid.iloc[-1] == pytest.approx(0.5 + 5 * DELTA, abs=DELTA)          # rises to the better one's mean
    assert (grid.diff().dropna() > 0).all()
    old = pd.read_csv(folder / "tables" / "best_single_trial.csv")             # secondary: single-seed trials
    assert old.groupby("arm").trials.max().to_dict() == {"grid": 16, "ref": 4}
    assert (old.groupby("arm").best_single_trial.diff().dropna() >= -1e-12).all()   # more trials never hurt
    assert "grid" in run.stdout and "matched" in run.stdout


def test_expected_best_interval_includes_seed_noise():
    # the headline (held-out) curve and the secondary best-single-seed-trial curve both carry seed noise
    rng = np.random.default_rng(9)
    quiet = analyse(study_table(simulated_table(rng, [0.5] * 6, 0.5, 1e-6, 3), SOURCE))
    noisy = analyse(study_table(simulated_table(rng, [0.5] * 6, 0.5, 0.05, 3), SOURCE))
    width = lambda eb: float((eb.high - eb.low)[eb.arm == "grid"].mean())
    for column in ("expected_best", "best_single_trial"):
        assert width(getattr(noisy, column)) > 100 * width(getattr(quiet, column))
        grid = getattr(noisy, column)[lambda eb: eb.arm == "grid"]
        assert ((grid.low <= grid[column] + 1e-12) & (grid[column] <= grid.high + 1e-12)).all()


def test_tunability_and_importance():
    # asms defaults: gamma_pos 0.1, gamma_neg 0.01; the value depends on gamma_pos only
    values = {(gp, gn): 0.40 + gp for gp in (0.05, 0.1, 0.2) for gn in (0.0, 0.01)}
    noise = {(gp, gn, s): 0.002 * ((s * 7 + int(gp * 100) + int(gn * 100)) % 3 - 1)
             for gp in (0.05, 0.1, 0.2) for gn in (0.0, 0.01) for s in range(3)}
    st = study_table(pd.DataFrame(grid_arm("g", values, noise=noise) + single_arm("ref", [0.6, 0.6, 0.6])))
    a = analyse(st, {"reference": "ref"})
    sens = a.sensitivity.set_index("arm").loc["g"]
    assert sens.default == "gamma_pos=0.1, gamma_neg=0.01"
    assert sens.tunability == pytest.approx(0.1, abs=0.005) and math.isfinite(sens.tunability_half)
    imp = a.importance.set_index("parameter")
    assert imp.loc["gamma_pos", "importance"] > 0.8 > imp.loc["gamma_neg", "importance"]
    off_grid = study_table(pd.DataFrame(grid_arm("g", {(0.3, 0.0): 0.5, (0.4, 0.0): 0.4}) + single_arm("ref", [0.5] * 3)))
    assert analyse(off_grid, {"reference": "ref"}).sensitivity.iloc[0].default == "not in the grid"


def test_few_seeds_are_flagged_everywhere_and_axes_stay_in_range(tmp_path):
    # two seeds: t with one degree of freedom gives intervals far wider than the metric's range
    rows = grid_arm("asms_grid", {(0.1, 0.0): 0.45, (0.2, 0.0): 0.40}, seeds=(0, 1),
                    noise={(0.1, 0.0, 0): 0.08, (0.2, 0.0, 1): -0.07})
    rows += single_arm("ddtas", [0.40, 0.53])
    folder = write_study_dir(tmp_path / "two", pd.DataFrame(rows), analysis={"reference": "ddtas"})
    run = subprocess.run([sys.executable, "-m", "dmltune", "report", str(folder)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    report = (folder / "report.md").read_text()
    assert "fewer than 3 seeds" in report and "fewer than 3 seeds" in run.stdout and "†" in report
    from dmltune.analysis import plots
    from dmltune.analysis import read_study_table

    a = analyse(read_study_table(folder))
    assert a.summary.set_index("arm").loc["ddtas", "val_half"] > 0.5      # the interval itself is huge
    low, high = plots.best_so_far_figure(a).axes[0].get_ylim()
    assert 0.0 <= low < high <= 1.0
    low, high = plots.test_metric_figure(a).axes[0].get_xlim()
    assert 0.0 <= low < high <= 1.0


def test_costs_below_an_hour_are_shown_in_minutes_or_seconds():
    assert cost(2.5) == "2.5 h" and cost(0.5) == "30 min" and cost(0.001) == "3.6 s"
    assert cost(float("nan")) == "–" and cost(float("inf")) == "∞"


def test_a_hand_written_table_with_only_the_public_columns_is_analysed():
    rows = []
    for c, v in enumerate([0.42, 0.47, 0.45]):
        for s in range(5):
            rows.append({"arm": "grid", "experiment": "grid", "trial_id": f"g{c}{s}", "seed": s, "status": "ok",
                         "epoch": 5, "val/map@r": v + 0.003 * s, "test/map@r": v - 0.05, "wall_s": 60.0, "gpu_s": 0.0,
                         "config/loss.lam": 0.5 + c / 10})
    for s in range(5):
        rows.append({"arm": "ref", "experiment": "ref", "trial_id": f"r{s}", "seed": s, "status": "ok", "epoch": 5,
                     "val/map@r": 0.46 + 0.003 * s, "test/map@r": 0.41, "wall_s": 60.0, "gpu_s": 0.0,
                     "config/loss.lam": 0.7})
    a = analyse(study_table(pd.DataFrame(rows)), {"reference": "ref"})
    assert a.table.cost_unit == "wall-hours" and set(a.verdicts) == {"grid"}
    assert a.verdicts["grid"].method == "blocked"             # identical seed offsets in both arms, 5 seeds
    assert a.verdicts["grid"].verdict == "matched"            # 0.47 beats 0.46 on every seed, no spread


def test_a_reference_without_a_usable_trial_sets_no_target_and_claims_nothing():
    rows = grid_arm("g", {(0.1, 0.0): 0.5}) + grid_arm("ref", {(0.1, 0.0): 0.5},
                                                       status={(0.1, 0.0, s): "error" for s in range(3)})
    a = analyse(study_table(pd.DataFrame(rows)), {"reference": "ref"})
    assert math.isnan(a.target)
    v = a.verdicts["g"]
    assert v.verdict == "inconclusive" and "reference has no usable trial" in v.reason


def test_two_shared_seeds_never_pair():
    # with two seeds a sample correlation is always ±1: pairing on it would fake precision
    a = pd.Series([0.50, 0.60], index=[0, 1])
    b = pd.Series([0.40, 0.50], index=[0, 1])
    from dmltune.analysis import gap

    g = gap(a, b, 0.95)
    assert g.method == "welch" and g.half > 0


@pytest.mark.slow
def test_choosing_pairing_from_the_data_keeps_the_intervals_coverage():
    # where a pairing choice remains (the reverse gap): no seed effect, 5 seeds; choosing the shorter
    # interval without a margin gave 6.3% misses at a nominal 5%; the Fisher-z rule must stay nominal
    from dmltune.analysis.differences import gap

    rng = np.random.default_rng(11)
    misses = paired_chosen = 0
    for _ in range(1000):
        a = pd.Series(0.5 - DELTA + rng.normal(0, DELTA, 5))
        b = pd.Series(0.5 + rng.normal(0, DELTA, 5))
        g = gap(a, b, 0.95)
        misses += abs(g.mean + DELTA) > g.half
        paired_chosen += g.method == "paired"
    assert misses / 1000 <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / 1000)
    assert paired_chosen < 100                                 # ρ = 0: pairing is rarely shown to pay


def test_repeated_rows_of_a_seed_count_once_and_nan_settings_do_not_break_the_analysis():
    values = {(0.1, 0.0): 0.50, (0.2, 0.0): 0.45}
    rows = grid_arm("g", values, noise={(0.1, 0.0, 1): 0.02}) + single_arm("ddtas", [0.5, 0.52, 0.48])
    dup = [dict(r, trial_id="copy") for r in rows if r["trial_id"] == "g_00000"] * 1
    a = analyse(study_table(pd.DataFrame(rows + dup + [dict(r, trial_id="copy2") for r in dup])), {"reference": "ddtas"})
    sel = a.selections["g"]
    assert sel.test.n == 3 and sel.val.n == 3                 # seed 0 ran three times: still one seed
    table = configurations(a.table, "g")
    assert table.set_index("configuration").loc["gamma_pos=0.1"].val_n == 3
    nan_rows = grid_arm("g", {(0.1, 0.0): 0.5, (np.nan, 0.05): 0.45}) + single_arm("ddtas", [0.5, 0.5, 0.5])
    b = analyse(study_table(pd.DataFrame(nan_rows)), {"reference": "ddtas"})
    assert b.verdicts["g"].configurations == 2


def test_a_searched_reference_is_compared_through_its_cross_fitted_values(tmp_path):
    rows = grid_arm("ref", {(0.1, 0.0): 0.50, (0.2, 0.0): 0.48}, noise={(0.2, 0.0, 0): 0.05}) \
        + single_arm("arm", [0.47, 0.48, 0.49])
    a = analyse(study_table(pd.DataFrame(rows)), {"reference": "ref"})
    held = a.selections["ref"].held_out
    # seed 0 held out: 0.1 best on seeds 1, 2 → 0.50; seed 1: 0.2 best on 0, 2 (0.505) → 0.48; seed 2 → 0.48
    assert list(held.round(4)) == [0.50, 0.48, 0.48]
    assert a.target == pytest.approx(held.mean() - DELTA)
    assert a.selections["ref"].val.mean > held.mean()          # the naive value carries the curse
    folder = write_study_dir(tmp_path / "sref", pd.DataFrame(rows), analysis={"reference": "ref"})
    from dmltune.analysis.report import write_report

    path, _ = write_report(folder, figures=False)
    assert "is a searched arm" in path.read_text()
