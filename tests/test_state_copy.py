"""The last good copy of Tune's record of an experiment (dmltune.study.state_copy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ray import cloudpickle

from dmltune.study.state_copy import GOOD_COPY, good_copy, record_damage, recover_record, save_good_copy

STATE = "experiment_state-2026-01-01_00-00-00.json"
SEARCHER = "basic-variant-state-2026-01-01_00-00-00.json"


def write_record(folder: Path, trials: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / STATE).write_text(json.dumps({"trial_data": [["{}", "{}"]] * trials, "runner_data": {}}))
    (folder / SEARCHER).write_bytes(cloudpickle.dumps({"_live_trials": set(range(trials))}))


def copied_trials(folder: Path) -> int:
    return len(json.loads((good_copy(folder) / STATE).read_text())["trial_data"])


def test_a_whole_record_is_copied_and_replaces_the_old_copy(tmp_path):
    staging, folder = tmp_path / "staging", tmp_path / "experiment"
    folder.mkdir()
    write_record(staging, 1)
    assert save_good_copy(staging, folder) and copied_trials(folder) == 1
    write_record(staging, 2)
    assert save_good_copy(staging, folder) and copied_trials(folder) == 2
    assert sorted(p.name for p in (folder / GOOD_COPY).iterdir()) == sorted([STATE, SEARCHER])
    assert [p.name for p in folder.iterdir()] == [GOOD_COPY]  # no partial or old copy left behind


@pytest.mark.parametrize("cut", [STATE, SEARCHER])
def test_a_cut_off_record_never_replaces_the_good_copy(tmp_path, cut):
    staging, folder = tmp_path / "staging", tmp_path / "experiment"
    folder.mkdir()
    write_record(staging, 1)
    save_good_copy(staging, folder)
    write_record(staging, 2)
    (staging / cut).write_bytes((staging / cut).read_bytes()[:-5])
    assert not save_good_copy(staging, folder) and copied_trials(folder) == 1


def test_a_copy_that_fails_half_way_leaves_the_previous_copy(tmp_path, monkeypatch):
    staging, folder = tmp_path / "staging", tmp_path / "experiment"
    folder.mkdir()
    write_record(staging, 1)
    save_good_copy(staging, folder)
    write_record(staging, 2)
    real = Path.write_bytes
    calls = []

    def full_disk(self, data):
        calls.append(self)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    assert not save_good_copy(staging, folder)
    assert copied_trials(folder) == 1 and [p.name for p in folder.iterdir()] == [GOOD_COPY]


def test_no_copy_without_an_experiment_state(tmp_path):
    (tmp_path / "staging").mkdir()
    assert not save_good_copy(tmp_path / "staging", tmp_path)
    assert good_copy(tmp_path) is None


def test_a_whole_record_is_left_alone(tmp_path):
    write_record(tmp_path / "exp", 2)
    assert record_damage(tmp_path / "exp") is None and recover_record(tmp_path / "exp") is None
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == sorted([STATE, SEARCHER])


def test_the_newest_record_is_the_one_checked(tmp_path):
    folder = tmp_path / "exp"
    write_record(folder, 1)
    (folder / "experiment_state-2027-01-01_00-00-00.json").write_text('{"trial_data": [')
    assert "experiment_state-2027-01-01_00-00-00.json is cut off" in record_damage(folder)


def test_a_damaged_record_is_set_aside_and_replaced_by_the_good_copy(tmp_path):
    folder = tmp_path / "exp"
    write_record(tmp_path / "staging", 1)
    write_record(folder, 2)
    save_good_copy(tmp_path / "staging", folder)
    (folder / SEARCHER).write_bytes(b"")
    line = recover_record(folder)
    assert f"{SEARCHER} is cut off or damaged" in line and "restored from its last good copy" in line
    assert record_damage(folder) is None and len(json.loads((folder / STATE).read_text())["trial_data"]) == 1
    damaged = next(folder.glob("damaged-state-*"))
    assert (damaged / SEARCHER).read_bytes() == b"" and (damaged / STATE).is_file()


def test_a_missing_experiment_state_with_no_copy_moves_the_experiment_aside(tmp_path):
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "tuner.pkl").write_bytes(b"x")
    (folder / "trial_a").mkdir()
    line = recover_record(folder)
    assert "its experiment_state file is missing" in line and "starts over" in line
    aside = next(tmp_path.glob("exp.damaged-*"))
    assert not folder.exists() and (aside / "trial_a").is_dir() and str(aside) in line


def test_a_whole_pickle_that_needs_missing_code_is_not_called_damaged(tmp_path):
    """After an upgrade a whole searcher state may refer to a class that is gone: Tune must say so
    itself; setting the record aside would silently start the experiment over."""
    folder = tmp_path / "exp"
    write_record(folder, 1)
    data = b"cnomodule_xyz\nThing\n."  # a whole pickle of a class in a module this environment lacks
    (folder / SEARCHER).write_bytes(data)
    assert record_damage(folder) is None and recover_record(folder) is None
    assert (folder / SEARCHER).read_bytes() == data  # left where it was


def test_restoring_on_a_still_full_disk_moves_nothing(tmp_path, monkeypatch):
    import shutil as shutil_module

    folder = tmp_path / "exp"
    write_record(tmp_path / "staging", 1)
    write_record(folder, 2)
    save_good_copy(tmp_path / "staging", folder)
    (folder / STATE).write_bytes(b'{"trial_data": [')

    def full(src, dst, *args, **kwargs):
        Path(dst).write_bytes(b"par")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil_module, "copyfile", full)
    with pytest.raises(OSError):
        recover_record(folder)
    assert (folder / STATE).read_bytes() == b'{"trial_data": [' and (folder / SEARCHER).is_file()
    assert not list(folder.glob("damaged-state-*")) and not list(folder.glob(".restoring-*"))
    monkeypatch.undo()
    assert "restored from its last good copy" in recover_record(folder)  # space freed: it recovers
    (folder / STATE).write_bytes(b"")
    assert "restored" in recover_record(folder)  # a second recovery in the same second gets its own folder
    assert len(list(folder.glob("damaged-state-*"))) == 2
