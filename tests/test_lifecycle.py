"""The study folder's life, with real processes: one owner at a time, honest exit codes, a lost
worker recorded as an error and run again on request, reruns that never mix two plans."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from chaos_study import fill  # benchmarks/ is on the path (tests/conftest.py)
from synthetic_study import tiny_study

STUDY = tiny_study("life")


def write(tmp_path, **changes) -> str:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**STUDY, **changes}))
    return str(path)


def dmltune(tmp_path, *args, timeout=300, env=None):
    """``dmltune ARGS`` in ``tmp_path``; ``env``: e.g. a shared Ray cluster's (tests/shared_ray.py)."""
    return subprocess.run([sys.executable, "-m", "dmltune", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=timeout, env=env)


def final_rows(folder):
    return pd.read_parquet(folder / "trials.parquet").groupby("trial_id").tail(1)


def running_trial_workers(driver_pid: int) -> list:
    import psutil

    found = []
    for child in psutil.Process(driver_pid).children(recursive=True):
        try:
            if child.name().startswith("ray::ImplicitFunc") and ".train" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


@pytest.mark.slow
def test_one_owner_a_lost_worker_is_an_error_exit_1_and_retry_errored_runs_it_again(tmp_path, shared_ray):
    """A second driver is refused; a killed worker (retries: 0) leaves an error with its reason and exit 1;
    a trial that errors on resume stays errored until `resume --retry-errored` runs it from scratch."""
    epochs = 30
    path = write(tmp_path, train={**STUDY["train"], "epochs": epochs, "batches_per_epoch": 20},
                 eval={**STUDY["eval"], "every": 10},
                 arms=[{"name": "one", "miner": {"name": "asms"}, "loss": {"name": "soft_contrastive"}}])
    folder = tmp_path / "results" / "life"
    driver = subprocess.Popen([sys.executable, "-m", "dmltune", "run", path], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for line in driver.stdout:  # the trial is training
            if f"epoch 1/{epochs}" in line:
                break
        workers = []
        deadline = time.time() + 60
        while not workers and time.time() < deadline:
            workers = running_trial_workers(driver.pid)
            time.sleep(0.2)
        assert workers, "no running trial worker found"
        for worker in workers:  # paused, so the first driver is surely still running
            worker.suspend()
        second = dmltune(tmp_path, "run", path, timeout=120)  # a second driver on the same folder
        assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stdout + second.stderr
        assert f"pid {driver.pid}" in second.stderr and socket.gethostname() in second.stderr
        for worker in workers:  # the worker dies, as with a lost node; retries: 0
            worker.send_signal(signal.SIGKILL)
        out, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 1, out[-2000:] + err[-2000:]
    assert "1 trial(s) ended in error" in err and "--retry-errored" in err
    rows = final_rows(folder)
    assert list(rows.status) == ["error"] and "did not finish" in rows.error.iloc[0]  # with its reason
    states = list(folder.glob("one/*/checkpoint_*/trial_state.pt"))
    assert states
    for state in states:  # and its checkpoint is damaged: resuming it fails, as a trial error
        state.write_bytes(b"not a checkpoint")
    env = shared_ray.env()  # (the resumes need no Ray of their own: the lost worker was the first driver's)
    plain = dmltune(tmp_path, "resume", str(folder), env=env)
    assert plain.returncode == 1 and "cannot be read" in plain.stderr and "--retry-errored" in plain.stderr
    assert dmltune(tmp_path, "resume", str(folder), env=env).returncode == 1  # a plain resume leaves it errored
    retried = dmltune(tmp_path, "resume", str(folder), "--retry-errored", env=env)  # from scratch
    assert retried.returncode == 0, retried.stdout[-2000:] + retried.stderr[-2000:]
    rows = final_rows(folder)
    assert list(rows.status) == ["ok"] and (rows.epoch == epochs).all()


@pytest.mark.slow
def test_reruns_never_mix_two_plans(tmp_path, shared_ray):
    env = shared_ray.env()
    path = write(tmp_path)
    folder = tmp_path / "results" / "life"
    first = dmltune(tmp_path, "run", path, env=env)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    again = dmltune(tmp_path, "run", path, env=env)  # unchanged: nothing runs, and it says so
    assert again.returncode == 0 and "every trial of study 'life' is already done (2 trials)" in again.stdout
    assert "[1/2]" not in again.stdout
    changed = dmltune(tmp_path, "run", path, "--set", "seeds=[0, 1]", env=env)
    assert changed.returncode == 2 and changed.stderr.count("\n") == 1
    assert "seeds: [0] → [0, 1]" in changed.stderr and "--fresh" in changed.stderr and "resume" in changed.stderr
    assert yaml.safe_load((folder / "study.yaml").read_text())["seeds"] == [0]  # the record is untouched
    fresh = dmltune(tmp_path, "run", path, "--set", "seeds=[0, 1]", "--fresh", env=env)
    assert fresh.returncode == 0, fresh.stdout[-2000:] + fresh.stderr[-2000:]
    aside = [p for p in folder.parent.iterdir() if p.name.startswith("life.old-")]
    assert len(aside) == 1 and (aside[0] / "trials.parquet").is_file()  # moved aside, not deleted
    assert len(final_rows(aside[0])) == 2 and len(final_rows(folder)) == 4
    assert yaml.safe_load((folder / "study.yaml").read_text())["seeds"] == [0, 1]


def test_a_missing_reference_arm_is_an_error_that_names_it():
    from synthetic_study import example_table

    from dmltune.analysis import study_table
    from dmltune.analysis.compare import resolve_settings
    from dmltune.registry import ConfigError

    table = example_table()
    source = {"name": "s", "seeds": [0, 1, 2], "arms": [{"name": a} for a in dict.fromkeys(table.arm)]}
    assert resolve_settings(study_table(table, source))["reference"] == "ddtas"
    shrunk = study_table(table[table.arm != "ddtas"], source)  # its folder was deleted, say
    with pytest.raises(ConfigError, match="reference arm 'ddtas'.*no trials"):
        resolve_settings(shrunk)  # never silently another arm (ms_simp would be the last single one left)


def test_validate_checks_resources_against_this_machine(tmp_path, monkeypatch, capsys):
    import dmltune.study.resources as runner
    from dmltune.cli import main

    path = write(tmp_path, resources={"cpu": 1, "gpu": 0.5})
    monkeypatch.setattr(runner, "local_resources", lambda: {"CPU": 2, "GPU": 0})
    assert main(["validate", path]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "0.5 GPU per trial, but this machine has no GPU" in err and "gpu: 0" in err
    monkeypatch.setattr(runner, "local_resources", lambda: {"CPU": 2, "GPU": 1})
    assert main(["validate", path]) == 0
    assert main(["validate", path, "--set", "resources.cpu=3"]) == 2
    assert "resources.cpu = 3 per trial, but this machine has 2 CPUs" in capsys.readouterr().err


@pytest.mark.slow
def test_run_refuses_a_gpu_request_the_cluster_cannot_meet_instead_of_hanging(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = dmltune(tmp_path, "run", write(tmp_path, resources={"cpu": 1, "gpu": 1}), timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "has no GPU" in proc.stderr and not (tmp_path / "results" / "life" / "study.yaml").exists()


@pytest.mark.slow
def test_a_driver_whose_study_folder_is_deleted_stops_with_that_message(tmp_path):
    import shutil

    path = write(tmp_path, train={**STUDY["train"], "epochs": 30, "batches_per_epoch": 20},
                 eval={**STUDY["eval"], "every": 10})
    folder = tmp_path / "results" / "life"
    driver = subprocess.Popen([sys.executable, "-m", "dmltune", "run", path], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for line in driver.stdout:
            if "epoch 1/30" in line:
                break
        workers = running_trial_workers(driver.pid)
        for worker in workers:
            worker.suspend()
        shutil.rmtree(folder, ignore_errors=True)
        for worker in workers:
            worker.resume()
        out, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 1, out[-2000:] + err[-2000:]
    assert f"the study folder {folder} was deleted while the study ran; stopped" in err
    assert "Traceback" not in err


def test_a_full_or_read_only_disk_stops_the_study_with_one_line(tmp_path):
    import errno
    from types import SimpleNamespace

    from dmltune.interruption import StudyFailed
    from dmltune.study.runner import _fit

    class Tuner:
        def __init__(self, code):
            self.code = code

        def fit(self):
            try:
                raise OSError(self.code, os.strerror(self.code), str(tmp_path / "grid" / "result.json"))
            except OSError as err:
                raise RuntimeError("Tune's own wrapper") from err  # (Tune wraps it, or unpickles garbage after it)

    study, arm = SimpleNamespace(directory=tmp_path), SimpleNamespace(name="grid")
    for code, words in ((errno.ENOSPC, "no space left"), (errno.EROFS, "read-only file system")):
        with pytest.raises(StudyFailed, match=f"{words} on {tmp_path}/grid/result.json.*dmltune resume {tmp_path}"):
            _fit(Tuner(code), study, arm)
    with pytest.raises(RuntimeError):  # anything else is not hidden
        _fit(SimpleNamespace(fit=lambda: (_ for _ in ()).throw(RuntimeError("other"))), study, arm)


def test_a_report_of_an_unfinished_study_says_so_at_its_top(tmp_path):
    from types import SimpleNamespace

    from dmltune.analysis.completeness import unfinished_note

    half = SimpleNamespace(source=STUDY, final=pd.DataFrame({"trial_status": ["TERMINATED", "RUNNING"],
                                                             "status": ["ok", "incomplete"]}))
    note = unfinished_note(half, tmp_path)
    assert "not finished: 1 of its 2 planned trials" in note and f"dmltune resume {tmp_path}" in note
    done = SimpleNamespace(source=STUDY, final=pd.DataFrame({"trial_status": ["TERMINATED", "ERROR"],
                                                             "status": ["ok", "error"]}))
    assert unfinished_note(done, tmp_path) == ""
    # a trial lost with its node: Tune leaves it PENDING, the table records an error; the study is finished
    lost = SimpleNamespace(source=STUDY, final=pd.DataFrame({"trial_status": ["TERMINATED", "PENDING"],
                                                             "status": ["ok", "error"]}))
    assert unfinished_note(lost, tmp_path) == ""


def test_planned_grid_cells_without_a_trial_are_named_at_the_top_of_the_report():
    from types import SimpleNamespace

    from dmltune.analysis.completeness import missing_cells_note, missing_grid_cells

    source = {**STUDY, "seeds": [0, 1]}
    final = pd.DataFrame({"arm": ["grid"] * 4, "seed": [0, 1, 0, 1], "status": ["ok"] * 4,
                          "config/miner.gamma_pos": [0.0, 0.0, 0.1, 0.1]})
    assert missing_grid_cells(SimpleNamespace(source=source, final=final)) == []
    # one cell is missing, and an empty-configuration trial stands in its place (counts alone would match)
    lost = final.assign(**{"config/miner.gamma_pos": [0.0, 0.0, 0.1, None], "seed": [0, 1, 0, None]})
    assert missing_grid_cells(SimpleNamespace(source=source, final=lost)) == ["grid: gamma_pos=0.1 seed 1"]
    assert "**1 planned grid cell(s) have no trial** (grid: gamma_pos=0.1 seed 1)" in \
        missing_cells_note(SimpleNamespace(source=source, final=lost))
    # a column with text elsewhere keeps its numbers as text; an empty value reads back as NaN
    arm = {**STUDY["arms"][0], "miner": {"name": "asms"}, "train": {"batches_per_epoch": {"grid": [None, 2]}}}
    texts = pd.DataFrame({"arm": ["grid"] * 2, "seed": [0, 0], "status": ["ok"] * 2,
                          "config/train.batches_per_epoch": [float("nan"), "2"]})
    assert missing_grid_cells(SimpleNamespace(source={**STUDY, "arms": [arm]}, final=texts)) == []


def test_a_trial_without_a_configuration_fails_with_that_reason_and_never_trains_the_defaults():
    from dmltune.registry import ConfigError
    from dmltune.training import tune_trainable

    with pytest.raises(ConfigError, match="this trial has no configuration: Ray Tune's record of it was lost"):
        tune_trainable({})


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs (skipped where mounting is not allowed); unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64M", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.slow
def test_a_disk_that_fills_up_stops_the_study_in_one_line_and_resume_finishes_it(tmp_path, small_disk, shared_ray):
    path = write(tmp_path, storage=str(small_disk),
                 train={**STUDY["train"], "epochs": 20, "batches_per_epoch": 10, "checkpoint_every": 1})
    driver = subprocess.Popen([sys.executable, "-m", "dmltune", "run", path], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        finished = False
        for line in driver.stdout:  # the first trial has finished, the second trains: the disk fills up
            finished = finished or line.startswith("[1/2]")
            if finished and "epoch 1/20" in line:
                break
        filler = fill(small_disk)
        out, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 1, out[-2000:] + err[-2000:]
    assert err.count(f"no space left on {small_disk}") == 1 and "Traceback" not in err, err[-3000:]
    filler.unlink()  # space freed
    resumed = dmltune(tmp_path, "resume", str(small_disk / "life"), "--retry-errored", env=shared_ray.env())
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    rows = final_rows(small_disk / "life")
    assert list(rows.status) == ["ok", "ok"] and (rows.epoch == 20).all()


def _cut_record(folder):
    """Cut Tune's record of the experiment in ``folder`` as a full disk does."""
    state = sorted(folder.glob("experiment_state-*.json"))[-1]
    state.write_bytes(state.read_bytes()[:1000])
    sorted(folder.glob("basic-variant-state-*.json"))[-1].write_bytes(b"")


@pytest.mark.slow
def test_a_damaged_tune_record_is_replaced_by_its_last_good_copy_and_without_one_the_experiment_starts_over(
        tmp_path, shared_ray):
    env = shared_ray.env()
    path = write(tmp_path)
    folder = tmp_path / "results" / "life"
    first = dmltune(tmp_path, "run", path, env=env)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert (folder / "grid" / ".dmltune_state").is_dir()
    _cut_record(folder / "grid")
    again = dmltune(tmp_path, "resume", str(folder), env=env)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "restored from its last good copy" in again.stdout and "experiment_state" in again.stdout
    assert "every trial of study 'life' is already done (2 trials)" in again.stdout and "[1/2]" not in again.stdout
    damaged = list((folder / "grid").glob("damaged-state-*/experiment_state-*.json"))
    assert len(damaged) == 1 and len(damaged[0].read_bytes()) == 1000  # kept, not deleted
    assert list(final_rows(folder).status) == ["ok", "ok"]

    _cut_record(folder / "grid")
    shutil.rmtree(folder / "grid" / ".dmltune_state")
    over = dmltune(tmp_path, "resume", str(folder), env=env)
    assert over.returncode == 0, over.stdout[-2000:] + over.stderr[-2000:]
    assert "has no good copy: the experiment starts over" in over.stdout and "[2/2]" in over.stdout
    aside = [p for p in folder.iterdir() if p.name.startswith("grid.damaged-")]
    assert len(aside) == 1 and len(list(aside[0].glob("tune_trainable_*"))) == 2
    rows = final_rows(folder)
    assert list(rows.status) == ["ok", "ok"] and sorted(rows["config/miner.gamma_pos"]) == [0.0, 0.1]
