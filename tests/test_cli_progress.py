"""The command line's and a running study's own words (issue #25): `--version`; `train` on a finished
checkpoint; torch's thread count (set per trial, and which numbers depend on it); the demo's table;
the progress lines' ETA and statuses; ASHA's early-stopped trials (`stopped`) through the table, the
analysis and `resume --retry-errored`; Optuna's log kept out of the progress lines."""

from __future__ import annotations

import io
import logging
import re
import statistics
import subprocess
import sys
import types
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dmltune.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "train_digits.yaml"


# --- --version --------------------------------------------------------------------------------

def test_version_prints_the_installed_package_version_and_exits_0():
    proc = subprocess.run([sys.executable, "-m", "dmltune", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.strip() == f"dmltune {version('dmltune')}"  # the installed distribution's own record


# --- train on a finished checkpoint ------------------------------------------------------------

def test_train_on_a_finished_checkpoint_says_it_is_done_with_its_metrics_and_exits_0(tmp_path, capsys):
    args = ["train", str(EXAMPLE), "--set", "train.epochs=1", "--set", "eval.every=1", "--threads", "1",
            "--checkpoint-dir", str(tmp_path)]
    assert main(args) == 0
    first = capsys.readouterr().out.strip().splitlines()
    assert len(first) == 1 and first[0].startswith("epoch   1")
    assert main(args) == 0                                     # nothing to train: done, not a failure
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("already done: ") and str(tmp_path / "latest") in out[0] and "every epoch (train.epochs = 1)" in out[0]
    assert out[-1] == first[0]                                 # the same final line: where it ended, its metrics
    assert "test map@r" in out[-1] and "val map@r" in out[-1]


# --- threads -----------------------------------------------------------------------------------

def test_train_computes_with_the_threads_asked_for_and_reports_them(tiny_config):
    from dmltune.training import train
    from dmltune.training.reporting import ConsoleReporter

    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            reporter = ConsoleReporter(stream=io.StringIO())
            last = train(tiny_config(train__epochs=1, train__batches_per_epoch=1), reporter=reporter, threads=threads)
            assert torch.get_num_threads() == threads and last["threads"] == threads
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("cpus, threads", [(1, 1), (3, 3), (0.5, 1), (2.7, 2)])
def test_a_tune_trial_computes_with_the_cpus_it_holds(monkeypatch, cpus, threads):
    import ray.tune

    from dmltune.training import runtime

    resources = types.SimpleNamespace(required_resources={"CPU": cpus, "GPU": 0})
    context = types.SimpleNamespace(get_trial_resources=lambda: resources)
    monkeypatch.setattr(runtime, "in_tune_session", lambda: True)
    monkeypatch.setattr(ray.tune, "get_context", lambda: context)
    assert runtime.trial_threads(8) == threads  # the trial's resources, not a standalone --threads


def test_train_threads_option_rejects_a_bad_count_in_one_line(capsys):
    assert main(["train", str(EXAMPLE), "--threads", "0"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "dmltune: error: train --threads must be a whole number ≥ 1, got 0"


def _one_step(trial_threads: int, tiny_config):
    """The embeddings, similarity, mined pairs, loss and gradients of a trial's first training step,
    computed with ``trial_threads`` intra-op threads."""
    from dmltune.config import resolve_config
    from dmltune.training import Trial

    torch.set_num_threads(trial_threads)
    trial = Trial(resolve_config(tiny_config(model__dim=32)))
    trial.model.train()
    trial.sampler.set_epoch(1)
    images, idx = next(iter(trial.source.batches(trial.sampler)))
    batch = trial.forward(images, idx)
    sim = batch.all_embeddings @ batch.all_embeddings.T
    mined = trial.miner(sim, batch.all_labels)
    loss = trial.loss_fn(sim, batch.all_labels, mined, progress=0.5)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in trial.model.named_parameters() if p.grad is not None}
    return batch.embeddings.detach(), sim.detach(), mined.pos, mined.neg, loss.detach(), grads


def test_one_and_two_threads_give_the_same_step(tiny_config):
    """The forward pass, the mining and the loss are bit for bit the same with 1 and 2 threads (they
    were not while the CPU batch reached the network channels-last: torch's channels-last batch norm
    sums its statistics per thread). The gradients agree to torch's float32 tolerance but not bit for
    bit: oneDNN splits the weight gradient of a convolution with few input channels (the first
    layer's) over the threads and adds the parts in an order that depends on their count
    (docs/training.md, Threads)."""
    before = torch.get_num_threads()
    try:
        one, two = _one_step(1, tiny_config), _one_step(2, tiny_config)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one[:5], two[:5]):
        assert torch.equal(a, b)
    assert one[5].keys() == two[5].keys()
    for name in one[5]:
        torch.testing.assert_close(one[5][name], two[5][name])  # float32: rtol 1.3e-6, atol 1e-5


def test_a_channels_last_cpu_batch_reaches_the_network_with_plain_strides():
    from dmltune.training.runtime import to_model_input

    cpu = torch.device("cpu")
    for channels in (1, 3):
        nhwc = torch.randn(4, 8, 8, channels)
        batch = nhwc.permute(0, 3, 1, 2)                      # as the training crop makes it
        out = to_model_input(batch, cpu)
        assert torch.equal(out, batch)
        assert out.stride() == (channels * 64, 64, 8, 1)
    plain = torch.randn(4, 3, 8, 8)
    assert to_model_input(plain, cpu) is plain                # nothing copied when already plain


# --- demo --------------------------------------------------------------------------------------

def _fake_train(calls):
    def train(config, reporter=None, threads=None, **kw):
        calls.append(threads)
        value = 0.5 + 0.1 * config["seed"]
        return {"test/recall@1": value, "test/map@r": value / 2, "lam": 0.7}
    return train


def test_demo_with_one_seed_shows_no_spread_and_says_n_is_1(monkeypatch, capsys):
    from dmltune import demo

    calls = []
    monkeypatch.setattr(demo, "train", _fake_train(calls))
    demo.run_demo(epochs=1, seeds=1)
    out = capsys.readouterr().out
    assert "±" not in out.replace("mean ± sd", "") and "n = 1" in out
    row = next(line for line in out.splitlines() if line.startswith("MS loss"))
    assert row.split()[-4:-2] == ["0.500", "0.250"]           # the one seed's values, no "± 0.000"


def test_demo_with_two_seeds_shows_mean_and_sd(monkeypatch, capsys):
    from dmltune import demo

    monkeypatch.setattr(demo, "train", _fake_train([]))
    demo.run_demo(epochs=1, seeds=2)
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("MS loss"))
    sd = statistics.stdev([0.5, 0.6])
    assert f"0.550 ± {sd:.3f}" in row and f"0.275 ± {sd / 2:.3f}" in row


def test_demo_computes_with_one_thread_unless_asked(monkeypatch, capsys):
    """The demo's cost on a busy machine was torch's default of a thread per core (docs/training.md,
    Threads): its small network runs on one unless --threads says otherwise."""
    from dmltune import demo

    calls = []
    monkeypatch.setattr(demo, "train", _fake_train(calls))
    assert main(["demo", "--epochs", "1", "--seeds", "1"]) == 0
    assert main(["demo", "--epochs", "1", "--seeds", "1", "--threads", "2"]) == 0
    n = len(demo.ARMS)
    assert calls == [1] * n + [2] * n
    assert main(["demo", "--threads", "0"]) == 2
    assert "demo --threads must be a whole number ≥ 1" in capsys.readouterr().err


# --- progress lines ----------------------------------------------------------------------------

def _progress(**kw):
    from dmltune.study.progress import Progress

    stream = io.StringIO()
    return Progress(stream=stream, interval=0.0, **kw), stream


def test_eta_comes_from_finished_epochs_only_and_is_absent_before_the_first():
    progress, stream = _progress(total_trials=4, total_epochs=11, metric="val/map@r")
    try:
        assert progress.eta() == ""
        progress.started -= 600   # ten minutes of start-up (Ray, imports, data) before the first epoch
        progress.epoch("a seed 0", "t0", {"epoch": 1, "val/map@r": 0.5, "epoch_s": 2.0}, 4)
        assert stream.getvalue().rstrip().endswith("study 1/11 epochs, ETA 20 s")  # 2 s × 10 epochs left
        progress.epoch("a seed 1", "t1", {"epoch": 1, "val/map@r": 0.5, "epoch_s": 4.0}, 4)
        assert progress.eta() == f", ETA {9 * 3.0 / 2:.0f} s"  # mean 3 s × 9 left ÷ 2 running
        progress.epoch("a seed 0", "t0", {"epoch": 2, "val/map@r": 0.5}, 4)  # no epoch_s: not timed
        assert progress.timed_epochs == 2
    finally:
        progress.close()


def _trial(trial_id, last):
    return types.SimpleNamespace(trial_id=trial_id, last_result=last, num_failures=0)


def test_a_trial_asha_stopped_is_printed_as_stopped():
    progress, stream = _progress(total_trials=3, total_epochs=12, metric="val/map@r")
    try:
        progress.finished("asha lr=1e-07 seed 1", _trial("t1", {"epoch": 1, "status": "ok", "val/map@r": 0.69}),
                          "ok", 4, early_stopping=True)
        progress.finished("asha lr=0.001 seed 1", _trial("t0", {"epoch": 4, "status": "ok", "val/map@r": 0.86}),
                          "ok", 4, early_stopping=True)
        progress.finished("grid seed 0", _trial("t2", {"epoch": 1, "status": "ok", "val/map@r": 0.5}), "ok", 1)
    finally:
        progress.close()
    lines = stream.getvalue().splitlines()
    assert re.match(r"\[1/3\] asha lr=1e-07 seed 1 stopped: val/map@r 0\.6900 \(1 of 4 epochs: ASHA stopped it "
                    r"early\) · \d+ s$", lines[0])
    assert " ok: val/map@r 0.8600 (4 epochs) · " in lines[1]
    assert " ok: val/map@r 0.5000 (1 epoch) · " in lines[2]
    assert progress.done_epochs == 3  # the stopped trial's 3 epochs never to come count as done (none reported here)


def test_optuna_announces_no_study_while_a_study_runs(capfd):
    import optuna

    optuna.logging.set_verbosity(logging.INFO)  # its default
    progress, _ = _progress(total_trials=1, total_epochs=1, metric="val/map@r")
    try:
        optuna.create_study()
    finally:
        progress.close()
    assert "A new study created" not in capfd.readouterr().err


# --- stopped trials in the analysis ---------------------------------------------------------------

def _stopped_version(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """``table`` with two grid trials cut to 1 of their 3 epochs, all their rows ``ok`` (as tables were
    written before the ``stopped`` status) and ``stopped`` (as now)."""
    stopped = sorted(table[table.arm == "asms_grid"].trial_id.unique())[1:3]
    cut = table[~(table.trial_id.isin(stopped) & (table.epoch > 1))].copy()
    now = cut.copy()
    now.loc[now.trial_id.isin(stopped), "status"] = "stopped"
    return cut, now, stopped


def test_the_analysis_treats_a_stopped_trial_as_it_treated_the_same_trial_stored_as_ok(tmp_path):
    from synthetic_study import example_table, write_study_dir

    from dmltune.analysis import analyse, read_study_table
    from dmltune.analysis.completeness import unfinished_note

    before, now, stopped = _stopped_version(example_table())
    old, new = (analyse(read_study_table(write_study_dir(tmp_path / name, table)))
                for name, table in (("old", before), ("new", now)))
    assert set(new.table.final.loc[new.table.final.trial_id.isin(stopped), "status"]) == {"stopped"}
    # the same numbers, but the arms' trial counts tell the early-stopped ones apart from `ok`
    counted = new.summary.ok + new.summary.stopped
    assert (counted == old.summary.ok).all() and new.summary.stopped.sum() == len(stopped)
    pd.testing.assert_frame_equal(old.summary.drop(columns=["ok", "stopped"]), new.summary.drop(columns=["ok", "stopped"]))
    for arm in old.verdicts:
        assert old.verdicts[arm].verdict == new.verdicts[arm].verdict
        assert old.selections[arm].configuration == new.selections[arm].configuration
        assert np.isclose(old.selections[arm].val.mean, new.selections[arm].val.mean, equal_nan=True)
    assert new.summary.set_index("arm").loc["asms_grid", "unfinished"] == 0
    assert unfinished_note(new.table, tmp_path / "new") == ""


def test_kfold_folds_stopped_by_asha_make_a_stopped_usable_unit():
    from dmltune.analysis.folds import collapse_folds

    rows = [{"arm": "a", "experiment": "a", "trial_id": f"t{f}", "seed": 0, "fold": f, "config/miner.name": "asms",
             "status": status, "val/map@r": 0.4 + 0.1 * f, "wall_s": 1.0, "gpu_s": 0.0}
            for f, status in enumerate(["ok", "stopped", "ok"])]
    unit = collapse_folds(pd.DataFrame(rows), folds=3).iloc[0]
    assert unit["status"] == "stopped" and np.isclose(unit["val/map@r"], 0.5)


# --- a real ASHA study: stopped in the table, the lines and the report; resume leaves it alone ---------

ASHA_STUDY = """
name: asha
storage: results
seeds: [1]
resources: {cpu: 1}
concurrency: 1
dataset: {name: digits, val_fraction: 0.4}
model: {backbone: small_cnn, dim: 16, freeze_bn: false}
train: {epochs: 2, batch_size: 24, k: 8, lr: 0.001, batches_per_epoch: 6}
eval: {metric: map@r, every: 1, nmi: false}
analysis: {reference: ref}
arms:
  - name: asha          # lr 1e-7 barely trains: at epoch 1 it is far below lr 1e-3, which ran first
    miner: {name: asms}
    loss: {name: soft_contrastive}
    train: {lr: {grid: [0.001, 1.0e-7]}}
    search: {scheduler: {asha: {max_t: 2, grace_period: 1, reduction_factor: 2}}}
  - name: ref
    miner: {name: asms}
    loss: {name: soft_contrastive}
"""


@pytest.mark.slow
def test_an_asha_stopped_trial_is_stopped_everywhere_and_resume_does_not_run_it_again(tmp_path, shared_ray):
    from synthetic_study import run_study_text

    run, folder, table = run_study_text(tmp_path, ASHA_STUDY, "asha", env=shared_ray.env())
    asha = table[table.arm == "asha"]
    slow = asha[asha["config/train.lr"] < 1e-6]
    assert list(slow.status) == ["stopped"] and list(slow.epoch) == [1] and (slow.error.fillna("") == "").all()
    assert set(asha[asha["config/train.lr"] > 1e-6].status) == {"ok"}
    assert set(table.threads) == {1}                           # resources.cpu: 1
    assert re.search(r"asha lr=1e-07 seed 1 stopped: val/map@r [0-9.]+ \(1 of 2 epochs: ASHA stopped it early\)",
                     run.stdout)
    assert "A new study created" not in run.stdout + run.stderr
    report = (folder / "report.md").read_text()
    assert "not finished" not in report                       # a stopped trial has its result
    logs = {p: p.read_text() for p in folder.rglob("result.json")}

    again = subprocess.run([sys.executable, "-m", "dmltune", "resume", str(folder), "--retry-errored"],
                           capture_output=True, text=True, timeout=300, env=shared_ray.env(), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already done" in again.stdout and "stopped:" not in again.stdout
    after = pd.read_parquet(folder / "trials.parquet")
    assert list(after[after.trial_id.isin(slow.trial_id)].status) == ["stopped"]
    assert {p: p.read_text() for p in folder.rglob("result.json")} == logs  # nothing ran again
    pd.testing.assert_frame_equal(after, table, check_like=True)  # the same rows (the column order may differ)
