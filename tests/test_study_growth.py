"""Finished trials are never touched: not by a resume after the driver died before Tune recorded
them as finished, and not by `dmltune extend`, which grows a study (seeds, grid values, arms) and runs
only the new trials. The growth's grid blocks cover the grown grid exactly, without overlap."""

from __future__ import annotations

import copy
import itertools
import json
import random

import pandas as pd
import pytest
import yaml

from dmltune.registry import ConfigError
from dmltune.study.extension import new_blocks, plan_growth
from dmltune.study.schema import parse_study

from test_lifecycle import STUDY, dmltune, final_rows


def _cells(grid: dict) -> set:
    keys = sorted(grid)
    return set(itertools.product(*(grid[k] for k in keys)))


@pytest.mark.parametrize("seed", range(30))
def test_grid_blocks_cover_the_grown_grid_exactly_once(seed):
    rng = random.Random(seed)
    old, new = {}, {}
    for key in ["a", "b", "seed"][: rng.randint(1, 3)]:
        values = rng.sample(range(8), rng.randint(1, 3))
        old[key] = values
        new[key] = values + rng.sample([v for v in range(8, 14)], rng.randint(0, 2))
    blocks = new_blocks(old, new)
    cells = [_cells(b) for b in blocks]
    for x, y in itertools.combinations(cells, 2):
        assert not x & y  # disjoint
    assert set().union(*cells) == _cells(new) - _cells(old)  # exactly the new combinations
    assert sum(map(len, cells)) == len(_cells(new)) - len(_cells(old))
    assert not blocks or all(set(b) == set(new) for b in blocks)


def _study(**changes):
    raw = copy.deepcopy(STUDY)
    raw.update(copy.deepcopy(changes))
    return parse_study(raw, check_data=False)


GRID_ARM = STUDY["arms"][0]


def _arm(gamma_pos=(0.0, 0.1), **extra):
    return {**copy.deepcopy(GRID_ARM), "miner": {"name": "asms", "gamma_pos": {"grid": list(gamma_pos)}}, **extra}


def test_growth_counts_new_seeds_grid_values_and_arms():
    old = _study()
    new_arm = {"name": "fixed", "miner": {"name": "asms"}, "loss": {"name": "soft_contrastive"}}
    grown = _study(seeds=[0, 1], arms=[_arm((0.0, 0.1, 0.2)), new_arm], description="more")
    growth = plan_growth(old, grown)
    assert growth.trials == 3 * 2 - 2 + 2 and growth.seeds == [1] and growth.arms == ["fixed"]
    assert [b["folder"] for b in growth.blocks["grid"]] == ["grid+ext1", "grid+ext2"]
    assert growth.blocks["grid"][0]["values"] == {"miner.gamma_pos": [0.2], "seed": [0, 1]}
    assert growth.blocks["grid"][1]["values"] == {"miner.gamma_pos": [0.0, 0.1], "seed": [1]}
    assert plan_growth(old, _study()).trials == 0  # nothing new
    shared = _study(train={**STUDY["train"], "lr": {"grid": [0.001, 0.01]}})  # a shared grid grows
    wider = _study(train={**STUDY["train"], "lr": {"grid": [0.001, 0.01, 0.1]}})
    assert plan_growth(shared, wider).blocks["grid"][0]["values"]["train.lr"] == [0.1]


RANDOM_ARM = {"name": "rand", "miner": {"name": "asms", "gamma_pos": {"uniform": [0.0, 0.2]}},
              "loss": {"name": "soft_contrastive"}, "search": {"mode": "random", "num_samples": 2}}


@pytest.mark.parametrize("old, new, message", [
    ({}, {"seeds": [1]}, "drops seed(s) [0]"),
    ({}, {"arms": [{**_arm(), "name": "other"}]}, "drops arm(s) grid"),
    ({}, {"train": {**STUDY["train"], "lr": 0.01}}, "train.lr: 0.001 → 0.01"),
    ({}, {"arms": [_arm((0.1,))]}, "drops grid value(s) [0.0]"),
    ({}, {"retries": 2}, "retries: 0 → 2"),
    ({"arms": [_arm(search={"scheduler": {"asha": {"max_t": 1}}})]},
     {"arms": [_arm((0.0, 0.1, 0.2), search={"scheduler": {"asha": {"max_t": 1}}})]}, "uses ASHA"),
    ({"arms": [RANDOM_ARM]}, {"arms": [{**RANDOM_ARM, "search": {"mode": "random", "num_samples": 4}}]},
     "its search changed (num_samples: 2 → 4)"),
    ({"arms": [RANDOM_ARM]}, {"arms": [{**RANDOM_ARM, "miner": {"name": "asms", "gamma_pos": {"uniform": [0, 1]}}}]},
     "cannot change its domains"),
])
def test_anything_but_growth_is_refused_in_one_line_that_says_what(old, new, message):
    with pytest.raises(ConfigError) as err:
        plan_growth(_study(**old), _study(**new))
    text = str(err.value)
    assert message in text and "extend only adds seeds, grid values and arms" in text and "\n" not in text


def test_new_seeds_of_a_random_arm_are_new_experiments():
    growth = plan_growth(_study(arms=[RANDOM_ARM]), _study(arms=[RANDOM_ARM], seeds=[0, 1, 2]))
    assert growth.trials == 4 and growth.seeds == [1, 2] and not growth.blocks


def _trial_dirs(folder):
    return {p.name: p for p in folder.glob("grid*/tune_trainable_*") if p.is_dir()}


def _set_status(experiment, status: str) -> None:
    """Every trial of the newest experiment state set to ``status``: as if the driver died after the
    trials' last results were stored but before Tune's next snapshot recorded them as finished."""
    newest = sorted(experiment.glob("experiment_state-*.json"))[-1]
    state = json.loads(newest.read_text())
    for entry in state["trial_data"]:
        trial = json.loads(entry[0])
        trial["status"] = status
        entry[0] = json.dumps(trial)
    newest.write_text(json.dumps(state))


def _searcher_running(experiment) -> set:
    from ray import cloudpickle

    with open(sorted(experiment.glob("basic-variant-state-*.json"))[-1], "rb") as f:
        return cloudpickle.load(f)["_live_trials"]


def _set_searcher_running(experiment, trial_ids: set) -> None:
    """The searcher's own record of running trials, as the driver left it when it died."""
    from ray import cloudpickle

    path = sorted(experiment.glob("basic-variant-state-*.json"))[-1]
    with open(path, "rb") as f:
        state = cloudpickle.load(f)
    state["_live_trials"] = set(trial_ids)
    with open(path, "wb") as f:
        cloudpickle.dump(state, f)


def _drop_last_epoch(trial_dir) -> None:
    for name in ("result.json", "progress.csv"):
        lines = (trial_dir / name).read_text().splitlines(keepends=True)
        (trial_dir / name).write_text("".join(lines[:-1]))


@pytest.mark.slow
def test_finished_trials_are_not_touched_by_resume_or_extend(tmp_path):
    raw = {**STUDY, "train": {**STUDY["train"], "epochs": 2}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    folder = tmp_path / "results" / "life"
    first = dmltune(tmp_path, "run", str(path))
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]

    # the driver died before Tune recorded either trial as finished; one had stored its last epoch
    finished, cut = sorted(_trial_dirs(folder).values())
    _set_status(folder / "grid", "RUNNING")
    _set_searcher_running(folder / "grid", {"_".join(d.name.split("_")[2:4]) for d in (finished, cut)})
    _drop_last_epoch(cut)
    kept = (finished / "result.json").read_bytes(), (finished / "result.json").stat().st_mtime_ns
    resumed = dmltune(tmp_path, "resume", str(folder))
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert ((finished / "result.json").read_bytes(), (finished / "result.json").stat().st_mtime_ns) == kept
    assert "[2/2]" in resumed.stdout and "[1/2]" not in resumed.stdout  # only the cut-off trial ran
    assert '"epoch": 2' in (cut / "result.json").read_text()  # it resumed from its checkpoint
    assert _searcher_running(folder / "grid") == set()  # the skipped trial holds no concurrency slot
    rows = final_rows(folder)
    assert list(rows.status) == ["ok", "ok"] and (rows.epoch == 2).all()

    # grown: one more seed and one more grid value; the two finished trials are reused as they are
    before = {name: (d / "result.json").stat().st_mtime_ns for name, d in _trial_dirs(folder).items()}
    table_before = pd.read_parquet(folder / "trials.parquet")
    grown = {**raw, "seeds": [0, 1], "arms": [_arm((0.0, 0.1, 0.2))]}
    path.write_text(yaml.safe_dump(grown))
    refused = dmltune(tmp_path, "run", str(path))  # `run` never mixes plans, and names extend
    assert refused.returncode == 2 and "dmltune extend" in refused.stderr
    extended = dmltune(tmp_path, "extend", str(path))
    assert extended.returncode == 0, extended.stdout[-2000:] + extended.stderr[-2000:]
    assert "extend: 4 new trial(s)" in extended.stdout and "[3/6]" in extended.stdout
    assert "[1/6]" not in extended.stdout and "[2/6]" not in extended.stdout
    after = {name: (d / "result.json").stat().st_mtime_ns for name, d in _trial_dirs(folder).items()}
    assert all(after[name] == mtime for name, mtime in before.items()) and len(after) == 6
    rows = final_rows(folder)
    cells = sorted(zip(rows["config/miner.gamma_pos"], rows.seed))
    assert cells == sorted(itertools.product([0.0, 0.1, 0.2], [0, 1]))  # each once
    assert (rows.status == "ok").all() and set(rows.experiment) == {"grid"}  # one grid search
    old_rows = pd.read_parquet(folder / "trials.parquet").merge(table_before[["trial_id", "epoch"]])
    pd.testing.assert_frame_equal(old_rows[table_before.columns].reset_index(drop=True),
                                  table_before.reset_index(drop=True), check_dtype=False)
    assert yaml.safe_load((folder / "study.yaml").read_text())["seeds"] == [0, 1]
    assert len(list(folder.glob("study.before-extend-*.yaml"))) == 1

    again = dmltune(tmp_path, "run", str(path))  # the grown study is the recorded one now
    assert again.returncode == 0 and "already done (6 trials)" in again.stdout
    nothing = dmltune(tmp_path, "extend", str(path), "--dry-run")
    assert nothing.returncode == 0 and "adds nothing" in nothing.stdout
    changed = dmltune(tmp_path, "extend", str(path), "--set", "train.lr=0.01")
    assert changed.returncode == 2 and changed.stderr.count("\n") == 1 and "train.lr" in changed.stderr


def test_an_extend_stopped_between_its_two_records_is_refused_then_healed_by_the_same_extend(tmp_path):
    from dmltune.study.experiments import (GRID_BLOCKS, experiment_folders, full_grid, grid_cells,
                                           read_grid_blocks)
    from dmltune.study.extension import grow_record, recorded_study

    old = _study(storage=str(tmp_path))
    old.directory.mkdir(parents=True)
    (old.directory / "study.yaml").write_text(yaml.safe_dump(old.source))
    grown = _study(storage=str(tmp_path), seeds=[0, 1], arms=[_arm((0.0, 0.1, 0.2))])
    # the stop: the grown grid's blocks are recorded, the grown study.yaml is not
    growth = plan_growth(recorded_study(old.directory), grown)
    base = {"folder": "grid", "values": full_grid(old, old.arms[0])}
    (old.directory / GRID_BLOCKS).write_text(yaml.safe_dump({"grid": [base, *growth.blocks["grid"]]}))
    with pytest.raises(ConfigError, match="was stopped while it recorded the grown study"):
        experiment_folders(recorded_study(old.directory), old.arms[0])  # resume refuses: no silent mix
    again = grow_record(grown)  # the same extend again
    assert again.trials == 4
    blocks = read_grid_blocks(old.directory)["grid"]
    assert [b["folder"] for b in blocks] == ["grid", "grid+ext1", "grid+ext2"]  # each cell once
    cells = [grid_cells(b["values"]) for b in blocks]
    assert sum(map(len, cells)) == 6 and set().union(*cells) == grid_cells(full_grid(grown, grown.arms[0]))
    assert len(experiment_folders(recorded_study(old.directory), grown.arms[0])) == 3


def test_numbers_compare_by_value_and_a_grid_cannot_repeat_one():
    growth = plan_growth(_study(arms=[_arm((0, 1))]), _study(arms=[_arm((0.0, 1.0, 2.0))]))
    assert growth.trials == 1 and growth.blocks["grid"][0]["values"]["miner.gamma_pos"] == [2.0]
    with pytest.raises(ConfigError, match="repeats 1.0"):
        _study(arms=[_arm((0, 1, 1.0))])
    with pytest.raises(ConfigError, match="the selection metric changes"):
        plan_growth(_study(), _study(eval={**STUDY["eval"], "metric": "recall@1"}))


def test_an_extend_stopped_between_its_two_records_is_also_healed_by_extending_the_unchanged_study(tmp_path):
    """The user gives up the growth: `extend` with the recorded study file drops the unrecorded blocks."""
    from dmltune.study.experiments import GRID_BLOCKS, experiment_folders, full_grid, read_grid_blocks
    from dmltune.study.extension import grow_record, recorded_study

    old = _study(storage=str(tmp_path))
    old.directory.mkdir(parents=True)
    (old.directory / "study.yaml").write_text(yaml.safe_dump(old.source))
    grown = _study(storage=str(tmp_path), seeds=[0, 1], arms=[_arm((0.0, 0.1, 0.2))])
    growth = plan_growth(recorded_study(old.directory), grown)
    base = {"folder": "grid", "values": full_grid(old, old.arms[0])}
    (old.directory / GRID_BLOCKS).write_text(yaml.safe_dump({"grid": [base, *growth.blocks["grid"]]}))
    assert grow_record(old).trials == 0  # the unchanged study: nothing to add
    assert read_grid_blocks(old.directory)["grid"] == [base]
    assert experiment_folders(recorded_study(old.directory), old.arms[0]) == [old.directory / "grid"]
