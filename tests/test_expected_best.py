"""The expected-best curve: the expected seed-mean value of the configuration a search of n trials
selects, estimated on held-out seeds (cross-fitted), and the old best-single-seed-trial curve kept as a
labelled secondary table."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from dmltune.analysis import analyse, study_table
from dmltune.analysis.expected_best_curve import best_single_trial, expected_best, held_out_curves
from synthetic_study import grid_arm, simulated_table, single_arm, trial_rows, write_study_dir

SOURCE = {"eval": {"metric": "map@r"}, "arms": [{"name": "grid"}, {"name": "ref"}],
          "analysis": {"reference": "ref", "delta": 0.01}}


def curve(st, arm, replicates=200):
    return expected_best(st, arm, 0.0, replicates)


def oracle(values: np.ndarray, counts) -> np.ndarray:
    """The cross-fitted curve written out plainly: every drawn copy of a seed s selects, the search
    draws every subset of n configurations, keeps the best on s (tied bests averaged) and reads its
    mean over the other drawn seeds (copies of s left out); averaged over subsets and copies."""
    C, S = values.shape
    curves = []
    for s in range(S):
        for _copy in range(counts[s]):
            held, chosen = {}, {}
            for c in range(C):
                if not math.isfinite(values[c, s]):
                    continue
                total = weight = 0.0
                for t in range(S):
                    if t != s and math.isfinite(values[c, t]):
                        total += counts[t] * values[c, t]
                        weight += counts[t]
                if weight > 0:
                    held[c], chosen[c] = total / weight, values[c, s]
            if not held:
                continue
            row = []
            for n in range(1, C + 1):
                outcomes = []
                for subset in itertools.combinations(sorted(held), min(n, len(held))):
                    best = max(chosen[c] for c in subset)
                    tied = [c for c in subset if chosen[c] == best]
                    outcomes.append(sum(held[c] for c in tied) / len(tied))
                row.append(sum(outcomes) / len(outcomes))
            curves.append(row)
    return np.mean(curves, axis=0) if curves else np.full(C, np.nan)


def test_the_vectorised_estimator_matches_the_oracle_with_ties_gaps_and_bootstrap_counts():
    rng = np.random.default_rng(5)
    values = rng.random((5, 4)).round(1)          # one decimal: ties on a seed are common
    values[1, 2] = values[3, 0] = np.nan          # unfinished cells
    values[4, 1:] = np.nan                        # a configuration with no held-out seed
    assert any(len(set(values[:, s][np.isfinite(values[:, s])])) < np.isfinite(values[:, s]).sum() for s in range(4))
    weightings = [[1, 1, 1, 1], [2, 0, 1, 1], [0, 3, 1, 0], [1, 0, 0, 3], [4, 0, 0, 0]]
    got = held_out_curves(values, np.array(weightings))
    for b, counts in enumerate(weightings):
        np.testing.assert_allclose(got[b], oracle(values, counts), rtol=0, atol=1e-12, equal_nan=True)
    assert np.isnan(got[-1]).all()                # one seed drawn: nothing left to measure on


def test_the_study_curve_is_the_oracle_on_the_arm_seed_matrix_with_failures_penalised():
    rng = np.random.default_rng(6)
    values = rng.random((4, 3)).round(2)
    rows = []
    for c in range(4):
        for s in range(3):
            diverged = (c, s) == (2, 1)
            rows += trial_rows("grid", "grid", f"g{c}_{s}", s, None if diverged else values[c, s], 0.3,
                               status="diverged" if diverged else "ok", epochs=1, config={"miner.gamma_pos": c})
    values[2, 1] = 0.0                            # a diverged seed counts at the failure value
    st = study_table(pd.DataFrame(rows + single_arm("ref", [0.5, 0.5, 0.5])), SOURCE)
    eb = curve(st, "grid")
    np.testing.assert_allclose(eb.expected_best, oracle(values, [1, 1, 1]), atol=1e-12)
    assert list(eb.trials) == [1, 2, 3, 4] and eb.cost_h.to_numpy() == pytest.approx(np.arange(1, 5) * 1.0)


def test_a_single_configuration_is_flat_at_its_seed_mean_where_the_old_curve_rose():
    # the issue: a single configuration's "expected best after 3 trials" was its luckiest seed
    vals = [0.60, 0.75, 0.62, 0.66, 0.58]
    st = study_table(pd.DataFrame(single_arm("one", vals) + single_arm("ref", [0.5] * 5)))
    a = analyse(st, {"reference": "ref"})
    eb = a.expected_best[a.expected_best.arm == "one"]
    assert list(eb.trials) == [1, 2, 3, 4, 5]                                  # any search selects it: flat
    assert eb.expected_best.to_numpy() == pytest.approx([np.mean(vals)] * 5, abs=1e-12)
    assert (eb.low <= eb.expected_best).all() and (eb.expected_best <= eb.high).all()
    old = a.best_single_trial[a.best_single_trial.arm == "one"]
    assert list(old.columns[:4]) == ["arm", "trials", "cost_h", "best_single_trial"]
    assert old.best_single_trial.iloc[2] > np.mean(vals) + 0.05                 # the lucky seed, kept as secondary


def test_identical_configurations_with_big_seed_noise_do_not_rise_but_the_single_trial_curve_does():
    rng = np.random.default_rng(7)
    rises, old_rises = [], []
    for _ in range(40):
        st = study_table(simulated_table(rng, [0.5] * 12, 0.5, 0.05, 4), SOURCE)
        eb = curve(st, "grid", replicates=20).expected_best.to_numpy()
        assert len(eb) == 12 and np.abs(eb - 0.5).max() < 0.08
        rises.append(eb[-1] - eb[0])
        old = best_single_trial(st, "grid", 0.0, 20).best_single_trial.to_numpy()
        old_rises.append(old[11] - old[0])                                      # the same budget of 12 trials
    assert abs(np.mean(rises)) < 0.01                                           # sd of the mean ≈ 0.0025
    assert np.mean(old_rises) > 0.06


def test_one_truly_better_configuration_is_found_at_its_true_mean():
    rng = np.random.default_rng(8)
    st = study_table(simulated_table(rng, [0.6] + [0.5] * 7, 0.5, 0.005, 4), SOURCE)
    eb = curve(st, "grid")
    n = eb.trials.to_numpy()
    # the search holds the better configuration with chance n/8 and then selects it
    assert eb.expected_best.to_numpy() == pytest.approx(0.5 + 0.1 * n / 8, abs=0.006)
    assert eb.expected_best.iloc[-1] == pytest.approx(0.6, abs=0.006)
    assert (np.diff(eb.expected_best) > 0).all()


def test_intervals_contain_the_estimate_and_widen_with_seed_noise():
    rng = np.random.default_rng(9)
    quiet = curve(study_table(simulated_table(rng, [0.5, 0.52, 0.55, 0.5, 0.45, 0.5], 0.5, 1e-6, 5), SOURCE), "grid")
    noisy = curve(study_table(simulated_table(rng, [0.5, 0.52, 0.55, 0.5, 0.45, 0.5], 0.5, 0.05, 5), SOURCE), "grid")
    for eb in (quiet, noisy):
        assert ((eb.low <= eb.expected_best + 1e-12) & (eb.expected_best <= eb.high + 1e-12)).all()
        assert (eb.note == "").all() and (eb.seeds == 5).all()
    assert (noisy.high - noisy.low).mean() > 100 * (quiet.high - quiet.low).mean()
    assert (noisy.high - noisy.low).min() > 0


def test_one_seed_gives_no_curve_and_two_seeds_no_interval():
    grid = {(0.1, 0.0): 0.45, (0.2, 0.0): 0.40, (0.3, 0.0): 0.50}
    one = study_table(pd.DataFrame(grid_arm("grid", grid, seeds=(0,)) + single_arm("ref", [0.5])))
    eb = curve(one, "grid")
    assert len(eb) == 3 and eb[["expected_best", "low", "high"]].isna().all().all()
    assert eb.note.str.contains("fewer than 2 seeds").all()
    assert best_single_trial(one, "grid", 0.0).best_single_trial.notna().all()  # the old curve had a value here
    assert curve(one, "ref").expected_best.isna().all()
    two = curve(study_table(pd.DataFrame(grid_arm("grid", grid, seeds=(0, 1)) + single_arm("ref", [0.5] * 2))), "grid")
    assert two.expected_best.notna().all() and two[["low", "high"]].isna().all().all()
    assert two.note.str.contains("2 seeds").all()


@pytest.mark.parametrize("mode, words", [("optuna", "one independent search per seed"),
                                         ("pbt", "Population Based Training")])
def test_arms_that_run_one_search_per_seed_get_no_curve_and_say_why(mode, words):
    rows = single_arm("ref", [0.50, 0.51, 0.49])
    for seed in range(3):
        for i in range(4):
            rows += trial_rows("tpe", f"seed_{seed}", f"t{seed}_{i}", seed, 0.5 + 0.01 * i, 0.4,
                               config={"miner.gamma_pos": seed * 4 + i})
    source = {"arms": [{"name": "tpe", "search": {"mode": mode}}, {"name": "ref"}]}
    eb = curve(study_table(pd.DataFrame(rows), source), "tpe")
    assert list(eb.trials) == [1, 2, 3, 4]                                      # one search's trials
    assert eb.expected_best.isna().all() and eb.note.str.contains(words).all()


def test_report_plot_and_tables_use_the_new_curve_and_label_the_old_one(tmp_path):
    from dmltune.analysis import plots
    from dmltune.analysis.report import write_report

    rng = np.random.default_rng(10)
    folder = write_study_dir(tmp_path / "s", simulated_table(rng, [0.6] + [0.5] * 3, 0.5, 0.02, 4),
                             analysis={"reference": "ref", "delta": 0.01})
    _, a = write_report(folder, figures=False)
    report = (folder / "report.md").read_text()
    assert ("Expected seed-mean value of the configuration a search of n trials selects, estimated on held-out "
            "seeds, with 95% bootstrap interval over seeds") in report
    assert "best single-seed trial (includes seed luck; not a tuning measure)" in report
    head = report[report.index("## Expected best"):report.index("### Secondary")]
    assert "best single-seed" not in head and f"{a.expected_best.expected_best.iloc[-1]:.4f}" in head
    eb = pd.read_csv(folder / "tables" / "expected_best.csv")
    assert list(eb.columns) == ["arm", "trials", "cost_h", "expected_best", "low", "high", "seeds", "note"]
    assert eb.groupby("arm").trials.max().to_dict() == {"grid": 4, "ref": 4}   # ref: one configuration, 4 trials
    ref = eb[eb.arm == "ref"]
    assert ref.expected_best.to_numpy() == pytest.approx([a.selections["ref"].val.mean] * 4, abs=1e-12)
    old = pd.read_csv(folder / "tables" / "best_single_trial.csv")
    assert old.groupby("arm").trials.max().to_dict() == {"grid": 16, "ref": 4}
    assert (old.groupby("arm").best_single_trial.diff().dropna() >= -1e-12).all()
    fig = plots.best_so_far_figure(a)
    (line,) = [l for l in fig.axes[0].lines if l.get_label().startswith("grid: search")]
    grid = a.expected_best[a.expected_best.arm == "grid"]
    np.testing.assert_allclose(np.asarray(line.get_ydata()), grid.expected_best)
