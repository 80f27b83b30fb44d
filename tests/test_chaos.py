"""Repeated random faults on a real two-node study lose nothing (issue #27): the short chaos run of
benchmarks/chaos_study.py, and the console lines its first runs found multi-line."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_a_failed_copy_of_tunes_record_is_one_line_on_the_console(capsys, monkeypatch):
    import os

    from dmltune.study.ray_connection import prepare_environment

    monkeypatch.setattr(os, "environ", dict(os.environ))  # what the driver sets stays out of this process
    tune = logging.getLogger("ray.tune")
    monkeypatch.setattr(tune, "level", tune.level)
    logger = logging.getLogger("ray.train._internal.syncer")
    monkeypatch.setattr(logger, "filters", [])
    prepare_environment("127.0.0.1:1")
    handler = logging.StreamHandler(sys.stderr)
    logger.addHandler(handler)
    try:
        try:
            raise OSError(28, "Error writing bytes to file. Detail: [errno 28] No space left on device")
        except OSError:
            import traceback

            logger.warning(f"Last sync command failed with the following error:\n{traceback.format_exc()}")
        logger.warning("another warning\nof two lines")
    finally:
        logger.removeHandler(handler)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("dmltune: Tune could not copy its experiment record into the study folder (")
    assert "No space left on device" in lines[0] and "Traceback" not in "".join(lines)
    assert lines[1:] == ["another warning", "of two lines"]  # other messages pass as they are


@pytest.mark.slow
def test_a_short_chaos_run_loses_nothing_and_prints_no_traceback(tmp_path):
    out = tmp_path / "chaos.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "chaos_study.py"), "--faults", "3", "--seed",
                          "0", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert out.is_file(), run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["faults_injected"] >= 3 and result["reference_trials"] == 5, run.stdout[-3000:]
    assert result["differences"] == 0 and result["tracebacks"] == 0, run.stdout[-4000:]
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
