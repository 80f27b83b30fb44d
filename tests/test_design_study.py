"""Real staged studies on digits (issue #23): a two_stage study's both stages from one `dmltune run`, a
Ctrl-C once stage 2 is recorded, `resume` finishing it, and a report of both stages; a budget that
cuts stage 2; a sequential study. On the shared Ray cluster (tests/shared_ray.py): the Ctrl-C here
only interrupts between stages; the driver's own Ctrl-C handling is test_failures.py's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from synthetic_study import run_study_text

TEXT = """
name: staged
seeds: [0, 1]
resources: {cpu: 1}
dataset: {name: digits, val_fraction: 0.4}
model: {backbone: small_cnn, dim: 8, freeze_bn: false}
train: {epochs: 2, batch_size: 24, k: 8, lr: 0.001, batches_per_epoch: 3}
eval: {metric: map@r, nmi: false}
design: {two_stage: {select_seeds: 2, confirm_seeds: 3}}
arms:
  - {name: fixed, miner: {name: asms, gamma_pos: {grid: [0.05, 0.2]}}, loss: {name: soft_contrastive}}
  - {name: adaptive, miner: {name: at_asms}, loss: {name: soft_contrastive}}
"""


@pytest.mark.slow
def test_two_stage_runs_both_stages_survives_an_interrupt_between_them_and_reports_both(tmp_path, shared_ray):
    (tmp_path / "s.yaml").write_text(TEXT)
    folder = tmp_path / "results" / "staged"
    driver = subprocess.Popen([sys.executable, "-m", "dmltune", "run", "s.yaml"], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True, env=shared_ray.env())
    seen = []
    try:
        for line in driver.stdout:  # stage 1 ended and stage 2 is recorded: interrupt it
            seen.append(line)
            if line.startswith("stage 2 planned and recorded"):
                break
        driver.send_signal(signal.SIGINT)
        out, err = driver.communicate(timeout=180)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert any(line.startswith("stage 2 planned and recorded (6 trials)") for line in seen), "".join(seen)[-2000:]
    assert driver.returncode == 130 and "Traceback" not in err, err[-2000:]
    record = yaml.safe_load((folder / "stages.yaml").read_text())
    stage2 = record["stages"][0]
    assert record["design"] == "two_stage" and stage2["stage"] == 2
    assert stage2["arms"]["fixed"]["seeds"] == [2, 3, 4] and len(stage2["arms"]["fixed"]["cells"]) == 1
    assert stage2["arms"]["adaptive"] == {"cells": None, "seeds": [2, 3, 4]}

    resumed = subprocess.run([sys.executable, "-m", "dmltune", "resume", str(folder)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300, env=shared_ray.env())
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "stage 2 (recorded)" in resumed.stdout                   # the plan shows the recorded stage
    table = pd.read_parquet(folder / "trials.parquet")
    last = table.groupby("trial_id").tail(1)
    counts = last.groupby(["stage", "arm"]).size().to_dict()
    assert counts == {(1, "fixed"): 4, (1, "adaptive"): 2, (2, "fixed"): 3, (2, "adaptive"): 3}, counts
    assert (last.status == "ok").all()
    confirmed = last[(last.stage == 2) & (last.arm == "fixed")]["config/miner.gamma_pos"].unique()
    assert list(confirmed) == [stage2["arms"]["fixed"]["cells"][0]["miner.gamma_pos"]]
    assert sorted(last[last.stage == 2].seed.unique()) == [2, 3, 4]  # fresh seeds, disjoint from stage 1

    report = (folder / "report.md").read_text()
    assert "## Design" in report and "design two_stage" in report
    assert "| 1 | fixed | 2 | 4 |" in report and "| 2 | fixed | 3 | 3 |" in report
    assert "fixed" in resumed.stdout and "to match adaptive" in resumed.stdout

    again = subprocess.run([sys.executable, "-m", "dmltune", "resume", str(folder)], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300, env=shared_ray.env())
    assert again.returncode == 0 and "planned and recorded" not in again.stdout, again.stderr[-2000:]
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "trials.parquet"), table)


@pytest.mark.slow
def test_a_sequential_study_gives_later_looks_only_to_what_is_undecided_within_its_budget(tmp_path, shared_ray):
    # looks at 2, 3 and 5 seeds; a budget of 14 trials: look 1 runs 6, look 2 at most 3 (seed 2), and
    # look 3 (seeds 3, 4) is cut to the seeds that fit, or not started
    text = TEXT.replace("design: {two_stage: {select_seeds: 2, confirm_seeds: 3}}",
                        "design: {sequential: {looks: [2, 3, 5]}}\nbudget: {trials: 14}")
    run, folder, table = run_study_text(tmp_path, text, "staged", env=shared_ray.env())
    last = table.groupby("trial_id").tail(1)
    assert set(last[last.stage == 1].seed) == {0, 1} and len(last) <= 14
    record = yaml.safe_load((folder / "stages.yaml").read_text())
    assert record["stages"][0]["stage"] == 2 and "adaptive" in record["stages"][0]["arms"]
    for arm, what in record["stages"][0]["arms"].items():   # each arm in play runs seed 2, and nothing else
        assert what["seeds"] == [2]
        rows = last[(last.stage == 2) & (last.arm == arm)]
        assert set(rows.seed) == {2} and len(rows) == len(what["cells"] or [None])
    report = (folder / "report.md").read_text()
    if len(record["stages"]) == 2:                            # look 3 ran: cut to the one seed that fits
        assert "cut to" in record["stages"][1]["why"] and "budget of 14 trials" in report
    elif record.get("stopped"):                               # or not started, and the report says why
        assert "budget reached" in record["stopped"] and "Stopped early" in report
    from dmltune.analysis import analyse, read_study_table

    a = analyse(read_study_table(folder))
    assert a.design.kind == "sequential" and set(a.stages.stage) <= {1, 2, 3}
    assert "## Design" in report
