"""A standalone checkpoint records the configuration it was made with; resuming it under a different
one (another miner, loss, seed, ...) is refused with one line naming what differs, while settings that
do not change the training (more epochs, evaluation, workers) may change."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from trial_helpers import tiny_config

from dmltune.registry import ConfigError
from dmltune.training import train
from dmltune.training.state import CHECKPOINT_FILE, config_changes, describe_changes, plain_config

ROOT = Path(__file__).resolve().parents[1]


def _quiet(root):
    import io

    from dmltune.training.reporting import ConsoleReporter

    return ConsoleReporter(root, stream=io.StringIO())


def test_changed_miner_refuses_resume_and_more_epochs_resume(tmp_path):
    cfg = tiny_config(train__epochs=1, train__batches_per_epoch=2)
    assert train(cfg, reporter=_quiet(tmp_path))["epoch"] == 1
    state = torch.load(tmp_path / "latest" / CHECKPOINT_FILE, weights_only=True)
    assert state["config"]["miner"] == {"name": "asms", "gamma_pos": 0.1, "gamma_neg": 0.01}
    assert state["config"]["eval"]["ks"] == [1, 2, 4, 8]

    changed = tiny_config(train__epochs=1, train__batches_per_epoch=2, miner={"name": "ms"})
    with pytest.raises(ConfigError, match=r"miner\.name: asms → ms") as err:
        train(changed, reporter=_quiet(tmp_path))
    message = str(err.value)
    assert "\n" not in message and "--checkpoint-dir" in message and str(tmp_path) in message
    assert "gamma_pos" not in message  # another component: only its name is listed

    with pytest.raises(ConfigError, match=r"train\.lr: 0\.001 → 0\.01"):
        train(tiny_config(train__epochs=1, train__batches_per_epoch=2, train__lr=0.01), reporter=_quiet(tmp_path))

    longer = tiny_config(train__epochs=2, train__batches_per_epoch=2, train__workers=0, eval__every=2)
    reporter = _quiet(tmp_path)
    assert train(longer, reporter=reporter)["epoch"] == 2
    assert [m["epoch"] for m in reporter.history] == [2]  # resumed, not restarted


def test_old_checkpoint_without_config_still_resumes(tmp_path):
    cfg = tiny_config(train__epochs=1, train__batches_per_epoch=2)
    train(cfg, reporter=_quiet(tmp_path))
    path = tmp_path / "latest" / CHECKPOINT_FILE
    state = torch.load(path, weights_only=True)
    del state["config"]
    torch.save(state, path)
    reporter = _quiet(tmp_path)
    train(tiny_config(train__epochs=2, train__batches_per_epoch=2, miner={"name": "ms"}), reporter=reporter)
    assert [m["epoch"] for m in reporter.history] == [2]


def test_parameter_added_since_the_checkpoint_compares_at_its_default(tmp_path):
    cfg = tiny_config(train__epochs=1, train__batches_per_epoch=2)
    train(cfg, reporter=_quiet(tmp_path))
    path = tmp_path / "latest" / CHECKPOINT_FILE
    state = torch.load(path, weights_only=True)
    del state["config"]["miner"]["gamma_neg"]  # as if written before the parameter existed
    del state["config"]["eval"]["similarity_bins"]
    torch.save(state, path)
    reporter = _quiet(tmp_path)
    train(tiny_config(train__epochs=2, train__batches_per_epoch=2), reporter=reporter)
    assert [m["epoch"] for m in reporter.history] == [2]


def test_config_changes_lists_dotted_keys_and_skips_allowed_ones():
    import numpy as np

    old = plain_config({"seed": 0, "train": {"epochs": 1, "lr": 0.1, "lr_steps": (2, 3), "workers": 2},
                        "eval": {"every": 1}, "dataset": {"name": "digits", "root": "/a"}})
    assert old["train"]["lr_steps"] == [2, 3]
    new = plain_config({"seed": np.int64(1), "train": {"epochs": 5, "lr": 0.2, "lr_steps": [2, 3], "workers": 0},
                        "eval": {"every": 3}, "dataset": {"name": "digits", "root": "/b"}})
    assert config_changes(old, new) == [("seed", 0, 1), ("train.lr", 0.1, 0.2)]
    assert describe_changes([(f"k{i}", i, i + 1) for i in range(5)]) == "k0: 0 → 1, k1: 1 → 2, k2: 2 → 3 (and 2 more)"


def test_train_command_refuses_changed_config_with_one_line(tmp_path):
    cfg = tiny_config(train__epochs=1, train__batches_per_epoch=2)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ckpt = tmp_path / "ckpt"
    train(cfg, reporter=_quiet(ckpt))
    proc = subprocess.run([sys.executable, "-m", "dmltune", "train", str(path), "--checkpoint-dir", str(ckpt),
                           "--set", "miner.name=ms"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("dmltune: error: ")
    assert "miner.name: asms → ms" in proc.stderr and str(ckpt) in proc.stderr
