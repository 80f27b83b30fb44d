"""Command line: train from a YAML file, --set overrides, one-line errors with exit code 2."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dmltune.cli import main
from dmltune.config_files import apply_overrides, read_yaml
from dmltune.registry import ConfigError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "train_digits.yaml"


def test_overrides_parse_yaml_values_and_create_sections():
    cfg = apply_overrides({"train": {"epochs": 1}}, ["train.epochs=5", "loss.lam=0.5", "eval.ks=[1, 2]",
                                                     "model.pretrained=true", "dataset.root=/data/x"])
    assert cfg == {"train": {"epochs": 5}, "loss": {"lam": 0.5}, "eval": {"ks": [1, 2]},
                   "model": {"pretrained": True}, "dataset": {"root": "/data/x"}}
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["train.epochs"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"train": 3}, ["train.epochs=1"])


def test_yaml_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML \(line"):
        read_yaml(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        read_yaml(bad)
    bad.write_text("x: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        read_yaml(bad)  # safe_load refuses to build Python objects


def test_train_command_runs_and_resumes(tmp_path, capsys):
    args = ["train", str(EXAMPLE), "--set", "train.epochs=2", "--checkpoint-dir", str(tmp_path)]
    assert main(args) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    assert main(args[:-2] + ["--set", "train.epochs=3", "--checkpoint-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("epoch   3")


def test_train_command_bad_input_exits_2_with_one_line(tmp_path):
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg["miner"]["gamma_pos"] = 5.0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "dmltune", "train", str(path)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "miner 'at_asms'" in proc.stderr and "gamma_pos" in proc.stderr and proc.stdout == ""


def test_demo_prints_every_arm(capsys):
    from dmltune.demo import ARMS, run_demo

    results = run_demo(epochs=1, seeds=1)
    out = capsys.readouterr().out
    assert len(results) == len(ARMS)
    for label, _, _ in ARMS:
        assert label in out
    assert all(0 <= r["test/recall@1"][0] <= 1 for r in results)
