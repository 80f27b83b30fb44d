"""The results table is replaced in one step, and a full disk while it is written is the one-line stop
that keeps the previous table whole (issue #27, defect 1)."""

from __future__ import annotations

import errno
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from dmltune.interruption import StudyFailed
from dmltune import atomic
from dmltune.study import consolidate


def test_a_full_disk_while_the_table_is_written_keeps_the_old_table_and_says_one_line(tmp_path, monkeypatch):
    study = SimpleNamespace(directory=tmp_path)
    old = pd.DataFrame({"arm": ["a"], "trial_id": ["t1"], "epoch": [1]})
    consolidate.write_table(study, old)
    assert pd.read_parquet(tmp_path / "trials.parquet").equals(old)
    real = Path.write_bytes

    def full_disk(path, data):
        real(path, b"half")                            # what a full disk leaves behind
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    new = pd.DataFrame({"arm": ["a", "b"], "trial_id": ["t1", "t2"], "epoch": [1, 1]})
    with pytest.raises(StudyFailed) as err:
        consolidate.write_table(study, new)
    message = str(err.value)
    assert message.startswith("no space left on ") and "trials.parquet" in message and "\n" not in message
    assert "dmltune resume" in message
    assert pd.read_parquet(tmp_path / "trials.parquet").equals(old)          # the good table is whole
    assert pd.read_csv(tmp_path / "trials.csv").equals(old)
    assert not list(tmp_path.glob(".*.partial"))
    monkeypatch.setattr(Path, "write_bytes", real)
    consolidate.write_table(study, new)
    assert len(pd.read_parquet(tmp_path / "trials.parquet")) == 2


def test_another_write_error_is_not_called_a_full_disk(tmp_path, monkeypatch):
    def denied(path, data):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(atomic, "write_atomic", denied)
    with pytest.raises(PermissionError):
        consolidate.write_table(SimpleNamespace(directory=tmp_path), pd.DataFrame({"a": [1]}))


def test_an_unreadable_table_names_the_resume_of_its_folder(tmp_path):
    from dmltune.analysis import read_study_table
    from dmltune.registry import ConfigError

    (tmp_path / "trials.parquet").write_bytes(b"PAR1 cut")
    with pytest.raises(ConfigError, match=rf"`dmltune resume {tmp_path}`"):
        read_study_table(tmp_path)


def test_a_trial_that_reported_its_last_epoch_before_ctrl_c_is_not_called_unfinished():
    from dmltune.study.consolidate import finished_before_interrupt

    config = {"train": {"epochs": 3}}
    done = pd.DataFrame({"epoch": [1, 2, 3], "status": ["ok", "ok", "ok"]})
    assert finished_before_interrupt(done, config)
    assert not finished_before_interrupt(done.iloc[:2], config)                       # epoch 2 of 3
    assert not finished_before_interrupt(done.assign(status=["ok", "ok", "diverged"]), config)
    assert not finished_before_interrupt(done, {})


def test_a_retried_trial_says_so_on_its_line():
    import io

    from dmltune.study.progress import Progress

    out = io.StringIO()
    progress = Progress(2, 6, "val/map@r", stream=out)
    trial = SimpleNamespace(last_result={"epoch": 3, "status": "ok", "val/map@r": 0.5}, num_failures=1)
    progress.finished("grid seed 0", trial, "ok", 3)
    progress.finished("grid seed 1", SimpleNamespace(last_result=trial.last_result, num_failures=0), "ok", 3)
    progress.close()
    first, second = out.getvalue().splitlines()
    assert first.startswith("[1/2] grid seed 0 ok: val/map@r 0.5000 (3 epochs, after 1 retry)")
    assert "retr" not in second


ACTOR_DIED = """Failure # 1 (occurred at 2026-12-06_10-00-00)
ray::ImplicitFunc.train() (pid=123, ip=127.0.0.1, actor_id=abc)
{reason}
"""
DIED = "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task."


@pytest.mark.parametrize("reason", [  # Ray 2.60's words, as its GCS and ray.exceptions write them
    f"{DIED}\n\tclass_name: ImplicitFunc\n\tpid: 123\n"
    "The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR",
    "The actor died because its node has died. Node Id: 0123abcd",
    f"{DIED}\n\tclass_name: ImplicitFunc\n\tip: 127.0.0.1",  # no reason line: the exception's own words
    "The actor 08ca4725e5812e142fcf987101000000 is unavailable: The actor is temporarily unavailable: RpcError: "
    "RPC error: Socket closed rpc_code: 14. The task may or may not have been executed on the actor.",  # CI saw it
])
def test_every_wording_of_a_lost_worker_or_node_reads_the_same(tmp_path, reason):
    error = tmp_path / "error.txt"
    error.write_text(ACTOR_DIED.format(reason=reason))
    lost = consolidate._error_summary(SimpleNamespace(error_file=str(error), status="ERROR"))
    assert lost.startswith("the trial did not finish: its node died or its worker was lost, and no retry "
                           "was left (study 'retries')"), lost
    retried = consolidate._error_summary(SimpleNamespace(error_file=str(error), status="TERMINATED"))
    assert retried.startswith("an attempt did not finish: its node died"), retried
    unfinished = consolidate._error_summary(SimpleNamespace(error_file=None, status="PENDING"))
    assert unfinished.startswith("the trial did not finish: its node died"), unfinished


def test_an_ordinary_error_keeps_its_own_last_line(tmp_path):
    error = tmp_path / "error.txt"
    error.write_text("Traceback (most recent call last):\n  File x\nValueError: the loss is NaN at epoch 3\n")
    assert consolidate._error_summary(SimpleNamespace(error_file=str(error), status="ERROR")) == \
        "ValueError: the loss is NaN at epoch 3"


def test_the_error_is_read_from_the_trials_folder_when_the_staged_copy_is_not_there(tmp_path):
    """Tune writes error.txt in its driver's staging folder and copies it to the trial's folder; a
    record read back may name a staging folder that is gone: the stored copy gives the reason."""
    (tmp_path / "error.txt").write_text("Failure # 1\nValueError: the checkpoint cannot be read\n")
    trial = SimpleNamespace(error_file=str(tmp_path / "gone" / "error.txt"), path=str(tmp_path), status="ERROR")
    assert consolidate._error_summary(trial) == "ValueError: the checkpoint cannot be read"
    bare = SimpleNamespace(error_file=None, path=str(tmp_path / "none"), status="ERROR")
    assert consolidate._error_summary(bare) == "error"


def test_a_trial_tune_ended_before_its_last_epoch_without_an_error_is_not_a_result():
    config = {"train": {"epochs": 6}}
    short = pd.DataFrame({"epoch": [1, 2, 3], "status": ["ok"] * 3})
    reason = consolidate.cut_short(short, config)
    assert reason.startswith("Tune ended the trial after epoch 3 of 6 with no error"), reason
    assert consolidate.cut_short(pd.DataFrame({"epoch": range(1, 7), "status": ["ok"] * 6}), config) == ""
    assert consolidate.cut_short(pd.DataFrame({"epoch": [1, 2], "status": ["ok", "diverged"]}), config) == ""
    assert consolidate.cut_short(pd.DataFrame([{}]), config) == ""
