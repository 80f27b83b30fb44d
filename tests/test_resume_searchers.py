"""A searching arm resumed after its driver was killed between a trial's end and Tune's next record
of it still runs every planned trial (dmltune.study.finished_trials)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

STUDY = """
name: r
seeds: [0]
resources: {cpu: 1}
concurrency: 1
retries: 0
dataset: {name: digits, val_fraction: 0.4}
model: {backbone: small_cnn, dim: 8, freeze_bn: false}
train: {epochs: 3, batch_size: 12, k: 4, lr: 0.001, batches_per_epoch: 2, workers: 0, checkpoint_every: 0}
eval: {metric: map@r, nmi: false, similarity_bins: 0}
TRACKING
arms:
  - name: tpe
    miner: {name: asms, gamma_pos: {uniform: [0.01, 0.3]}}
    loss: {name: soft_contrastive}
    search: {mode: optuna, num_samples: 3}
"""


def _recorded(folder: Path) -> list[dict]:
    """The trials of the newest readable experiment state in ``folder`` (empty when none)."""
    for state in sorted(folder.glob("experiment_state-*.json"), reverse=True):
        try:
            return [json.loads(entry[0]) for entry in json.loads(state.read_text())["trial_data"]]
        except (OSError, ValueError, KeyError):
            continue
    return []


def _in_the_gap(experiment: Path) -> bool:
    """Whether Tune's newest record of ``experiment`` lists its one trial RUNNING with its last
    checkpoint (with ``checkpoint_every: 0`` the only one a trial makes) recorded."""
    from dmltune.study.checkpoint_repair import recorded_checkpoints

    return [t["status"] for t in _recorded(experiment)] == ["RUNNING"] and bool(recorded_checkpoints(experiment))


def _watch(stdout, ended: threading.Event) -> None:
    for line in stdout:  # (read to the end: a full pipe would stop the driver)
        if line.startswith("[1/3]"):
            ended.set()


def _killed_in_the_gap(tmp_path: Path, tracking: str, env: dict) -> Path:
    """The study folder of a study whose driver was SIGKILLed after it printed that the first trial
    ended (its completion then told to the search: the limiter's slot freed and, with
    ``tracking.optuna``, the trial COMPLETE in Optuna's storage) while Tune's newest record in the
    folder still listed that trial RUNNING at its last checkpoint. Tune records the experiment after
    each checkpoint (otherwise every hour here) and copies the record into the folder in the
    background, so that record stays there until the second trial's last checkpoint; should a run
    never show it (the trial's end handled before its checkpoint was recorded), up to three are tried."""
    for attempt in range(3):
        cwd = tmp_path / f"attempt{attempt}"
        cwd.mkdir()
        (cwd / "s.yaml").write_text(STUDY.replace("TRACKING", tracking))
        folder = cwd / "results" / "r"
        driver = subprocess.Popen([sys.executable, "-m", "dmltune", "run", "s.yaml"], cwd=cwd,
                                  env={**env, "TUNE_GLOBAL_CHECKPOINT_S": "3600"}, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        ended = threading.Event()
        threading.Thread(target=_watch, args=(driver.stdout, ended), daemon=True).start()
        try:
            deadline = time.time() + 240
            while time.time() < deadline and driver.poll() is None:
                if ended.is_set():
                    break
                time.sleep(0.02)
            while time.time() < deadline and driver.poll() is None and not _in_the_gap(folder / "tpe" / "seed_0"):
                time.sleep(0.02)
        finally:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        if ended.is_set() and _in_the_gap(folder / "tpe" / "seed_0"):
            return folder
    pytest.fail("none of three killed runs left Tune's record with the ended first trial RUNNING")


def _optuna_states(folder: Path) -> list[str]:
    import optuna

    study = optuna.load_study(study_name="r/tpe/seed_0", storage=f"sqlite:///{folder}/optuna.db")
    return sorted(t.state.name for t in study.get_trials(deepcopy=False))


@pytest.mark.slow
@pytest.mark.parametrize("tracking", ["tracking: {optuna: {}}"], ids=["optuna_storage"])  # (the in-memory search
# passed before the fix too, and its settling is the unit test below: not worth a second real study)
def test_an_optuna_arm_killed_as_a_trial_ends_resumes_to_every_planned_trial(tmp_path, shared_ray, tracking):
    """The killed driver leaves Tune's record with the first trial RUNNING at its last checkpoint (its
    last epoch stored) and the concurrency limiter holding it, while the search itself (and, with
    ``tracking.optuna``, Optuna's storage) already had it finished. `resume` runs all 3 planned trials,
    each once and to its last epoch, and Optuna holds each as one COMPLETE trial."""
    folder = _killed_in_the_gap(tmp_path, tracking, shared_ray.env())
    experiment = folder / "tpe" / "seed_0"
    if tracking:  # the ended trial is COMPLETE in Optuna's storage, running in the saved search
        assert _optuna_states(folder).count("COMPLETE") == 1

    resumed = subprocess.run([sys.executable, "-m", "dmltune", "resume", str(folder)], cwd=folder.parents[1],
                             capture_output=True, text=True, timeout=300, env=shared_ray.env())
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    table = pd.read_parquet(folder / "trials.parquet")
    per_trial = table.groupby("trial_id").epoch.apply(sorted)
    assert len(per_trial) == 3, resumed.stdout[-2000:]
    assert all(epochs == [1, 2, 3] for epochs in per_trial), per_trial.to_dict()  # each epoch once
    assert (table.status == "ok").all()
    final = _recorded(experiment)
    assert len(final) == 3 and {t["status"] for t in final} == {"TERMINATED"}
    if tracking:  # each trial once COMPLETE (one the killed driver had just asked for: FAIL)
        assert [s for s in _optuna_states(folder) if s != "FAIL"] == ["COMPLETE"] * 3


def _optuna_search(url: str | None = None):
    """An Optuna searcher inside Tune's concurrency limiter, as the runner builds an optuna arm's
    (in memory, or kept in the storage at ``url``), over ``x``; the metric is ``m``."""
    import optuna
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from dmltune.study.optuna_storage import StoredOptunaSearch

    sampler = optuna.samplers.TPESampler(seed=0)
    search = StoredOptunaSearch(metric="m", mode="max", sampler=sampler, storage_url=url, study_name="s/tpe/seed_0") \
        if url else OptunaSearch(metric="m", mode="max", sampler=sampler)
    search.set_search_properties("m", "max", {"x": tune.uniform(0, 1)})
    return ConcurrencyLimiter(search, max_concurrent=1)


def test_a_restored_stored_search_takes_a_trial_its_storage_finished_as_completed(tmp_path):
    """Saved while t0 ran; t0 then completed (COMPLETE in the storage) and the driver was killed. The
    restored search gets t0's replayed reports and its completion again (Tune resumes t0 from its
    last checkpoint): neither reaches Optuna, which refuses any update of a finished trial with an
    error that ended the experiment; Optuna keeps t0's first result, and the limiter frees its slot."""
    import optuna
    from ray.tune.search import SearchGenerator

    url = f"sqlite:///{tmp_path}/optuna.db"
    first = SearchGenerator(_optuna_search(url))
    first.searcher.suggest("t0")
    first.save_to_dir(str(tmp_path), session_str="s")
    first.on_trial_complete("t0", result={"m": 0.5})
    del first

    restored = SearchGenerator(_optuna_search(url))
    restored.restore_from_dir(str(tmp_path))
    for step in (1, 2):  # the replayed reports
        restored.on_trial_result("t0", {"m": 0.4, "training_iteration": step})
    restored.on_trial_complete("t0", result={"m": 0.4})
    assert restored.searcher.live_trials == set()
    assert restored.searcher.suggest("t1") is not None  # the next trial is drawn
    trials = optuna.load_study(study_name="s/tpe/seed_0", storage=url).get_trials()
    assert [(t.state.name, t.value) for t in trials] == [("COMPLETE", 0.5), ("RUNNING", None)]


def _running_trial_folder(folder: Path, search, epochs_stored: int, epochs: int = 2) -> None:
    """``folder`` as a driver killed in the gap leaves it: ``search`` (asked for t0) saved, Tune's
    record listing t0 RUNNING, and t0's stored results up to ``epochs_stored``."""
    from ray.tune.search import SearchGenerator

    algorithm = SearchGenerator(search)
    algorithm.searcher.suggest("t0")
    algorithm.save_to_dir(str(folder), session_str="2026-01-01_00-00-00")
    trial = {"trial_id": "t0", "status": "RUNNING", "relative_logdir": "t0", "config": {"train": {"epochs": epochs}}}
    (folder / "experiment_state-2026-01-01_00-00-00.json").write_text(
        json.dumps({"trial_data": [[json.dumps(trial), "{}"]], "runner_data": {}}))
    (folder / "t0").mkdir()
    (folder / "t0" / "result.json").write_text(
        "".join(json.dumps({"epoch": e, "m": 0.1 * e, "config": {"x": 0.3}}) + "\n" for e in range(1, epochs_stored + 1)))


@pytest.mark.parametrize("stored", [False, True], ids=["in_memory", "optuna_storage"])
def test_settling_a_finished_optuna_trial_completes_it_in_its_search(tmp_path, stored):
    """Before a restore, a trial Tune lists RUNNING whose stored results hold its last epoch is
    recorded TERMINATED, and completed in the saved search first: the limiter's slot is free, Optuna
    holds the trial COMPLETE with its last validation value, and Tune's record says TERMINATED."""
    import optuna
    from ray.tune.search import SearchGenerator

    from dmltune.study.finished_trials import settle_finished_trials

    url = f"sqlite:///{tmp_path}/optuna.db" if stored else None
    _running_trial_folder(tmp_path, _optuna_search(url), epochs_stored=2)
    assert settle_finished_trials(tmp_path, lambda: _optuna_search(url)) == ["t0"]

    restored = SearchGenerator(_optuna_search(url))  # as Tune restores it
    restored.restore_from_dir(str(tmp_path))
    assert restored.searcher.live_trials == set() and restored.searcher.suggest("t1") is not None
    study = restored.searcher.searcher._ot_study
    assert [(t.state.name, t.value) for t in study.get_trials()] == [("COMPLETE", pytest.approx(0.2)), ("RUNNING", None)]
    if stored:
        assert optuna.load_study(study_name="s/tpe/seed_0", storage=url).get_trials()[0].value == pytest.approx(0.2)
    assert [t["status"] for t in _recorded(tmp_path)] == ["TERMINATED"]
    assert settle_finished_trials(tmp_path, lambda: _optuna_search(url)) == []  # nothing left to settle


def test_an_unfinished_trial_is_left_to_tune_and_its_search_untouched(tmp_path):
    from dmltune.study.finished_trials import settle_finished_trials

    _running_trial_folder(tmp_path, _optuna_search(), epochs_stored=1)
    saved = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert settle_finished_trials(tmp_path, lambda: pytest.fail("no search is needed")) == []
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == saved


def _moved_and_resumed(first: Path, tmp_path: Path, env: dict) -> pd.Series:
    """Move ``first``'s study folder to ``tmp_path/results``, resume it there (exit 0 asserted), and
    return each trial's sorted epochs from the results table."""
    (first / "results").rename(tmp_path / "results")
    folder = tmp_path / "results" / "r"
    resumed = subprocess.run([sys.executable, "-m", "dmltune", "resume", str(folder)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    return pd.read_parquet(folder / "trials.parquet").groupby("trial_id").epoch.apply(sorted)


@pytest.mark.slow
def test_a_killed_study_resumed_from_a_moved_folder_finishes_its_interrupted_trial(tmp_path, shared_ray):
    """Tune's record keeps the stopper of the session that wrote it, which watches that session's lock
    file. Resumed from a moved folder (that file gone), it ended the experiment at its first step:
    the interrupted trial stopped short of its last epoch and recorded as finished. Killed while the
    last planned trial runs (every trial drawn: a new trial in a moved folder is another matter, see
    the report), the resume must finish that trial from its checkpoint."""
    from dmltune.study.checkpoint_repair import recorded_checkpoints

    for attempt in range(3):  # a run on a busy machine may pass the moment: up to three are tried
        first = tmp_path / f"first{attempt}"
        first.mkdir()
        (first / "s.yaml").write_text(STUDY.replace("TRACKING", "").replace("epochs: 3,", "epochs: 24,")
                                      .replace("checkpoint_every: 0", "checkpoint_every: 1"))
        experiment = first / "results" / "r" / "tpe" / "seed_0"
        driver = subprocess.Popen([sys.executable, "-m", "dmltune", "run", "s.yaml"], cwd=first,
                                  env={**shared_ray.env(), "TUNE_GLOBAL_CHECKPOINT_S": "3600"},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.time() + 240
            while time.time() < deadline and driver.poll() is None:
                recorded = _recorded(experiment)
                running = [t["trial_id"] for t in recorded if t["status"] == "RUNNING"]
                if len(recorded) == 3 and running and any(
                        running[0] in p.parent.name and p.name < "checkpoint_000012"
                        for p in recorded_checkpoints(experiment)):
                    break
                time.sleep(0.02)
        finally:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        if [t["status"] for t in _recorded(experiment)].count("RUNNING") == 1:  # the kill caught the last trial
            break
    else:
        pytest.fail("none of three killed runs caught the last planned trial running")
    per_trial = _moved_and_resumed(first, tmp_path, shared_ray.env())
    assert len(per_trial) == 3 and all(epochs == list(range(1, 25)) for epochs in per_trial), per_trial.to_dict()


@pytest.mark.slow
def test_a_search_resumed_from_a_moved_folder_writes_its_new_trials_there(tmp_path, shared_ray):
    """Killed after its first trial, the study folder moved: the trials the resumed search draws next
    run in the moved folder (Tune saved the old folder's path with the search), and the resume runs
    every planned trial."""
    from synthetic_study import run_killed_after_first_trial

    first = tmp_path / "first"
    run_killed_after_first_trial(first, STUDY.replace("TRACKING", ""), shared_ray.env())
    per_trial = _moved_and_resumed(first, tmp_path, shared_ray.env())
    assert len(per_trial) == 3 and all(epochs == [1, 2, 3] for epochs in per_trial), per_trial.to_dict()
    assert not (first / "results").exists()  # nothing written into the old place


def test_a_restore_keeps_this_sessions_stopper(tmp_path):
    """The stopper Tune recorded (``runner_data._stopper``) is taken out of the newest record; the rest
    of the record is kept as it was."""
    from dmltune.study.runner import drop_recorded_stopper

    older = {"trial_data": [], "runner_data": {"_stopper": {"_type": "CLOUDPICKLE_FALLBACK", "value": "00"}}}
    newest = {"trial_data": [["{}", "{}"]], "runner_data": {"_stopper": {"_type": "CLOUDPICKLE_FALLBACK", "value": "00"},
                                                         "_iteration": 7}, "stats": {"start_time": 1.0}}
    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(older))
    (tmp_path / "experiment_state-2026-01-02_00-00-00.json").write_text(json.dumps(newest))
    drop_recorded_stopper(tmp_path)
    kept = json.loads((tmp_path / "experiment_state-2026-01-02_00-00-00.json").read_text())
    assert kept == {**newest, "runner_data": {"_iteration": 7}}
    drop_recorded_stopper(tmp_path / "nothing-here")  # no record: nothing to do
