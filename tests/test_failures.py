"""Failures say what happened and lose nothing: storage, corrupt files, failing trials."""

import os
import re
import subprocess
import time
import sys

import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from dmltune.registry import ConfigError
from dmltune.analysis import read_study_table
from dmltune.training.state import CheckpointError, load_checkpoint, save_checkpoint

STUDY = {
    "name": "f",
    "seeds": [0],
    "resources": {"cpu": 1},
    "retries": 1,
    "model": {"backbone": "small_cnn", "dim": 8, "freeze_bn": False},
    "train": {"epochs": 1, "batch_size": 6, "k": 2, "lr": 0.001, "batches_per_epoch": 2, "workers": 0},
    "eval": {"metric": "map@r", "nmi": False},
}


def write_study(tmp_path, **changes):
    raw = {**STUDY, **changes}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_unwritable_storage_is_refused_before_any_trial(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the storage folder should go")
    path = write_study(tmp_path, storage=str(blocker / "results"), dataset={"name": "digits", "val_fraction": 0.4},
                       train={**STUDY["train"], "batch_size": 24, "k": 8},
                       arms=[{"name": "a", "loss": {"name": "ms"}}])
    proc = subprocess.run([sys.executable, "-m", "dmltune", "run", str(path)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "not writable" in proc.stderr and str(blocker) in proc.stderr and proc.stderr.count("\n") == 1
    assert "[1/" not in proc.stdout  # no trial started


def test_corrupt_checkpoint_names_the_file(tmp_path):
    save_checkpoint(tmp_path, {"epoch": 3, "model": {"w": torch.ones(2)}})
    assert load_checkpoint(tmp_path)["epoch"] == 3
    (tmp_path / "trial_state.pt").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match=str(tmp_path / "trial_state.pt")):
        load_checkpoint(tmp_path)


def test_truncated_results_table_names_the_file(tmp_path):
    (tmp_path / "trials.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(ConfigError, match="trials.parquet cannot be read"):
        read_study_table(tmp_path)
    with pytest.raises(ConfigError, match="run or resume the study first"):
        read_study_table(tmp_path / "elsewhere")


def make_folder_dataset(root):
    for c in range(12):  # 6 training classes: 2 for validation, 4 to train on (a batch needs 3)
        for j in range(3):
            folder = root / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (12, 10), (c * 20, j * 60, 90)).save(folder / f"{j}.png")


@pytest.mark.slow
def test_a_failing_trial_is_recorded_and_the_study_goes_on(tmp_path, shared_ray):
    # one dataset for both arms (arms must share their data); one image of it is over the pixel cap
    # that only the broken arm sets (an arm's own setting), so only its trial fails, at decoding time
    root = tmp_path / "data"
    make_folder_dataset(root)
    Image.new("RGB", (20, 20), (0, 60, 90)).save(root / "class_0" / "1.png")   # 400 pixels, the others 120
    transform = {"preset": "8px", "resize": 8, "crop": 8}
    path = write_study(tmp_path, dataset={"name": "folder", "root": str(root), "val_fraction": 0.34,
                                          "transform": transform},
                       arms=[{"name": "broken", "loss": {"name": "ms"}, "dataset": {"max_pixels": 200}},
                             {"name": "fine", "loss": {"name": "ms"}}])
    proc = subprocess.run([sys.executable, "-m", "dmltune", "run", str(path), "--no-data-scan"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300, env=shared_ray.env())  # (the scan would refuse the image up front)
    assert proc.returncode == 1, proc.stderr[-3000:]  # some trials errored
    assert "1 trial(s) ended in error" in proc.stderr and "cannot decode image" in proc.stderr
    table = pd.read_parquet(tmp_path / "results" / "f" / "trials.parquet")
    broken = table[table.arm == "broken"]
    fine = table[table.arm == "fine"]
    assert (broken.status == "error").all() and (broken.trial_status == "ERROR").all()
    assert broken.error.str.contains("cannot decode image").all()
    assert broken.error.str.contains("1.png").all()
    assert (fine.status == "ok").all() and fine.epoch.max() == 1
    assert "broken" in proc.stdout and "error" in proc.stdout


def wait_until_gone(group: int, limit: float = 30.0) -> None:
    """Wait until no process of process group ``group`` is left (a killed driver's Ray processes end
    asynchronously; a resume started meanwhile would share the machine with them)."""
    import time

    import psutil

    deadline = time.time() + limit
    while time.time() < deadline:
        left = []
        for proc in psutil.process_iter():
            try:
                if os.getpgid(proc.pid) == group and proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(proc)
            except (psutil.Error, ProcessLookupError, PermissionError):
                continue
        if not left:
            return
        for proc in left:
            try:
                proc.kill()
            except psutil.Error:
                pass
        time.sleep(0.2)


@pytest.mark.slow
def test_killed_driver_then_resume_loses_nothing(tmp_path):
    """One study killed mid-run, resumed as it was and, from a copy, after Ray's checkpoint race (the
    recorded checkpoint deleted, a newer one not yet recorded): each resume loses and repeats nothing."""
    import os
    import shutil
    import signal
    import time

    from dmltune.study.checkpoint_repair import recorded_checkpoints

    raw = {**STUDY, "dataset": {"name": "digits", "val_fraction": 0.4}, "concurrency": 1, "retries": 0,
           "train": {**STUDY["train"], "epochs": 6, "batch_size": 24, "k": 8, "batches_per_epoch": 8,
                     "checkpoint_every": 1},
           "arms": [{"name": "grid", "miner": {"name": "asms", "gamma_pos": {"grid": [0.0, 0.1, 0.2]}},
                     "loss": {"name": "soft_contrastive"}}]}
    killed = tmp_path / "killed"
    killed.mkdir()
    path = killed / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    folder = killed / "results" / "f"
    driver = subprocess.Popen([sys.executable, "-m", "dmltune", "run", str(path)], cwd=killed,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        for line in driver.stdout:  # wait until one trial has finished ...
            if line.startswith("[1/3]"):
                break
        deadline = time.time() + 120
        while time.time() < deadline and driver.poll() is None:
            # ... the experiment records a finished trial and a later checkpoint of an unfinished one (Tune
            # records in snapshots, seconds apart under load: a snapshot may already hold two finished)
            names = sorted(p.name for p in recorded_checkpoints(folder / "grid"))
            if "checkpoint_000005" in names and any("checkpoint_000001" <= n < "checkpoint_000005" for n in names):
                break
            time.sleep(0.2)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray processes it started
        driver.wait()
        wait_until_gone(driver.pid)
    for lost_checkpoint in (False, True):  # the same killed study, resumed in two copies
        where = tmp_path / f"lost_checkpoint_{lost_checkpoint}"
        shutil.copytree(killed, where, symlinks=True)
        resume_loses_nothing(where, where / "results" / "f", lost_checkpoint)


def resume_loses_nothing(cwd, folder, lost_checkpoint: bool) -> None:
    from dmltune.study.checkpoint_repair import recorded_checkpoints

    recorded = recorded_checkpoints(folder / "grid")
    unfinished = [p for p in recorded if p.name != "checkpoint_000005"]
    assert unfinished and max(p.name for p in unfinished) >= "checkpoint_000001"
    # the finished trial, told before the race below may give an unfinished one a checkpoint_000005 too
    finished_before = {p.parent.name for p in recorded if p.name == "checkpoint_000005"}
    # the driver copies results to the study folder in the background, so they can lag the recorded
    # checkpoint by several epochs (seen in CI): keep none of the unfinished trials' results
    for checkpoint in unfinished:
        log = checkpoint.parent / "result.json"
        log.write_text("")
    if lost_checkpoint:  # Ray's race: the recorded checkpoint deleted, a newer one not yet recorded
        import shutil

        from dmltune.study.checkpoint_repair import _readable

        for path in [p for p in unfinished if p.exists()]:  # (else the race happened by itself)
            newer = path.parent / f"checkpoint_{int(path.name.split('_')[1]) + 1:06d}"
            if newer.exists() and not _readable(newer):  # cut off by the kill: Ray deletes the recorded
                shutil.rmtree(newer)  # checkpoint only once it has received the newer one whole
            if not newer.exists():
                shutil.copytree(path, newer)
            shutil.rmtree(path)
    assert 1 <= len(finished_before) < 3
    finished_logs = [folder / "grid" / name / "result.json" for name in sorted(finished_before)]
    logs_before = [(log.stat().st_mtime_ns, log.read_text()) for log in finished_logs]
    resumed = subprocess.run([sys.executable, "-m", "dmltune", "resume", str(folder)], cwd=cwd,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    tally = [line.split("]")[0] + "]" for line in resumed.stdout.splitlines() if line.startswith("[")]
    assert tally and "[1/3]" not in tally and tally[-1] == "[3/3]", resumed.stdout  # the finished trial counts
    table = pd.read_parquet(folder / "trials.parquet")
    assert table.trial_id.nunique() == 3 and (table.status == "ok").all(), table.error.dropna().unique()
    per_trial = table.groupby("trial_id").epoch.apply(sorted)
    assert all(epochs == [1, 2, 3, 4, 5, 6] for epochs in per_trial), per_trial.to_dict()  # complete, no epoch twice
    restored = table[table.iterations_since_restore < table.training_iteration]
    assert restored.trial_id.nunique() >= 1  # the interrupted trial continued from its checkpoint
    finished_trial = table[table.trial_id.isin(
        [t for t in table.trial_id.unique() if any(t in name for name in finished_before)])]
    assert (finished_trial.iterations_since_restore == finished_trial.training_iteration).all()
    assert [(log.stat().st_mtime_ns, log.read_text()) for log in finished_logs] == logs_before  # not run again


@pytest.mark.slow
def test_a_diverging_trial_is_recorded_and_the_study_goes_on(tmp_path, shared_ray):
    from dmltune.models import build_model

    poisoned = build_model(backbone="small_cnn", dim=8, in_channels=1).backbone.state_dict()
    first = next(k for k in poisoned if k.endswith("weight"))
    poisoned[first] = torch.full_like(poisoned[first], float("nan"))  # a NaN weights file: every loss is NaN
    weights = tmp_path / "nan_weights.pth"
    torch.save(poisoned, weights)
    raw = {**STUDY, "dataset": {"name": "digits", "val_fraction": 0.4},
           "train": {**STUDY["train"], "epochs": 2, "batch_size": 24, "k": 8},
           "arms": [{"name": "nan", "loss": {"name": "ms"}, "model": {"weights": str(weights)}},
                    {"name": "fine", "loss": {"name": "ms"}}]}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "dmltune", "run", str(path)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300, env=shared_ray.env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_parquet(tmp_path / "results" / "f" / "trials.parquet")
    nan, fine = table[table.arm == "nan"], table[table.arm == "fine"]
    assert list(nan.status) == ["diverged"] and nan.reason.str.contains("NaN").all()
    assert nan.trial_status.eq("TERMINATED").all()  # ended cleanly, not crashed
    assert (fine.status == "ok").all() and fine.epoch.max() == 2
    assert "nan seed 0 diverged" in proc.stdout


@pytest.mark.slow
def test_a_crashed_trial_is_retried_from_its_checkpoint(tmp_path):
    import os
    import signal
    import time

    raw = {**STUDY, "dataset": {"name": "digits", "val_fraction": 0.4}, "retries": 1,
           "train": {**STUDY["train"], "epochs": 12, "batch_size": 24, "k": 8, "batches_per_epoch": 40,
                     "checkpoint_every": 1},
           "eval": {**STUDY["eval"], "every": 6},
           "arms": [{"name": "a", "loss": {"name": "ms"}}]}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    folder = tmp_path / "results" / "f"
    driver = subprocess.Popen([sys.executable, "-m", "dmltune", "run", str(path)], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    killed = False
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not killed:
            if [d for d in folder.glob("a/*/checkpoint_0000*") if 2 <= int(d.name[-6:]) <= 8]:
                # the trial's worker: a child of this driver's raylet (workers get their own group)
                ps = subprocess.run(["ps", "-eo", "pid,ppid,pgid,args"], capture_output=True, text=True).stdout
                rows = [row.split(None, 3) for row in ps.splitlines()[1:]]
                ours = {int(pid) for pid, _, pgid, _ in rows if int(pgid) == driver.pid}
                for pid, ppid, _, args in rows:
                    if int(ppid) in ours and args.startswith("ray::ImplicitFunc"):
                        os.kill(int(pid), signal.SIGKILL)  # the trial crashes mid-run
                        killed = True
            time.sleep(0.1)
        output, _ = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert killed, "the trial finished before it could be killed"
    assert driver.returncode == 0, output[-3000:]
    table = pd.read_parquet(folder / "trials.parquet")
    assert table.trial_id.nunique() == 1 and (table.status == "ok").all()
    assert sorted(table.epoch) == list(range(1, 13))  # every epoch once, none lost, none twice
    restored = table[(table.iterations_since_restore < table.training_iteration) & ~table.replayed]
    assert len(restored) > 0 and restored.epoch.min() >= 3  # continued from a checkpoint, not from scratch
    # the retry is counted and said; the lost attempt's reason is kept apart from `error` (#27)
    assert (table.retries == 1).all() and (table.error.fillna("") == "").all()
    assert (table.lost_attempt.str.len() > 0).all()
    assert "(12 epochs, after 1 retry)" in output


def test_checkpoint_repair_skips_an_unreadable_experiment_state(tmp_path):
    """A driver killed while writing its experiment state leaves an empty or cut-off file: the repair
    reads the newest readable state instead of failing (and leaves a folder without one to Ray)."""
    import json

    from dmltune.study.checkpoint_repair import recorded_checkpoints, repair_missing_checkpoints

    (tmp_path / "experiment_state-2026-12-02_09-00-00.json").write_text(json.dumps({"trial_data": []}))
    for text in ("", '{"trial_data": [["x", '):
        (tmp_path / "experiment_state-2026-12-02_09-30-00.json").write_text(text)
        assert recorded_checkpoints(tmp_path) == [] and repair_missing_checkpoints(tmp_path) == []


def test_checkpoint_repair_skips_a_cut_off_newer_checkpoint(tmp_path, monkeypatch):
    """A kill can leave the newest checkpoint half-written: the repair copies the oldest newer one that
    loads, and leaves a trial with none that loads to Ray (which records it failed, with the reason)."""
    import torch

    from dmltune.study import checkpoint_repair
    from dmltune.training.state import CHECKPOINT_FILE, save_checkpoint

    trial = tmp_path / "trial_a"
    recorded = trial / "checkpoint_000002"
    (trial / "checkpoint_000003").mkdir(parents=True)
    (trial / "checkpoint_000003" / CHECKPOINT_FILE).write_bytes(b"PK\x03\x04 cut")
    save_checkpoint(trial / "checkpoint_000004", {"epoch": 4})
    save_checkpoint(trial / "checkpoint_000005", {"epoch": 5})
    monkeypatch.setattr(checkpoint_repair, "recorded_checkpoints", lambda folder: [recorded])
    assert checkpoint_repair.repair_missing_checkpoints(tmp_path) == [recorded]
    assert torch.load(recorded / CHECKPOINT_FILE, weights_only=True) == {"epoch": 4}

    import shutil

    shutil.rmtree(recorded)
    for name in ("checkpoint_000004", "checkpoint_000005"):  # none readable: nothing copied
        (trial / name / CHECKPOINT_FILE).write_bytes(b"")
    assert checkpoint_repair.repair_missing_checkpoints(tmp_path) == [] and not recorded.exists()


@pytest.mark.slow
def test_ctrl_c_stops_the_whole_study_with_one_line_and_exit_130(tmp_path):
    """Tune's own SIGINT handler ended only the running arm and let the next one start (exit 0). While the
    study runs, its live table already gives a report that says how many planned trials have a result."""
    import signal

    raw = {**STUDY, "dataset": {"name": "digits", "val_fraction": 0.4}, "concurrency": 1, "retries": 0,
           "seeds": [0, 1, 2],
           "train": {**STUDY["train"], "epochs": 6, "batch_size": 24, "k": 8, "batches_per_epoch": 8},
           "arms": [{"name": "first", "loss": {"name": "ms"}}, {"name": "second", "loss": {"name": "ms"}}]}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    driver = subprocess.Popen([sys.executable, "-m", "dmltune", "run", str(path)], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for line in driver.stdout:  # one trial of the first arm has finished
            if line.startswith("[1/6]"):
                break
        folder = tmp_path / "results" / "f"
        deadline = time.time() + 60  # the live table comes as trials finish: report works while it runs
        while not (folder / "trials.parquet").exists() and time.time() < deadline:
            time.sleep(0.2)
        live = subprocess.run([sys.executable, "-m", "dmltune", "report", str(folder), "--no-figures"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert driver.poll() is None, "the study ended before the live report was read"
        driver.send_signal(signal.SIGINT)
        out, err = driver.communicate(timeout=180)
    finally:  # a failed check never leaves the driver and its Ray running behind the suite
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == 130, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("dmltune:")]
    assert len(lines) == 1 and re.fullmatch(  # whichever arm(s) the queue was running
        r"dmltune: interrupted while arm\(s\) (first|second|first, second) ran; every finished trial is kept: "
        r"continue with `dmltune resume " + re.escape(str(tmp_path / "results" / "f")) + "`", lines[0]), err[-2000:]
    assert live.returncode == 0, live.stdout[-2000:] + live.stderr[-2000:]
    assert "planned trials have a result" in (folder / "report.md").read_text() or \
        "planned trials have a result" in live.stdout
    assert "Traceback" not in err
    # the interim table agrees with the console: a trial that reported its last epoch is ok (#27);
    # Tune may not have written the finished trial's reports yet (then it has no rows to check)
    interim = pd.read_parquet(tmp_path / "results" / "f" / "trials.parquet")
    if "epoch" in interim:
        last = interim.groupby("trial_id").tail(1)
        assert ((last.epoch == 6) == (last.status == "ok")).all(), last[["trial_id", "epoch", "status"]]
