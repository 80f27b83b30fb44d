"""Dynamic sampling uses one τ_p, τ_n: a dynamic loss takes the dsml miner's (METHODS.md §3)."""

import itertools
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from dmltune.config import resolve_config
from dmltune.pairs.coupling import couple_dynamic_thresholds, decoupled_notes
from dmltune.study import parse_study
from dmltune.study.domains import replace_at

BASE = {
    "dataset": {"name": "digits", "val_fraction": 0.4},
    "model": {"backbone": "small_cnn", "dim": 8, "freeze_bn": False},
    "train": {"epochs": 1, "batch_size": 24, "k": 8, "lr": 1e-3, "batches_per_epoch": 2},
    "eval": {"metric": "map@r", "nmi": False, "similarity_bins": 0},
}


def resolved_loss(miner, loss):
    return resolve_config({**BASE, "miner": miner, "loss": loss})["loss"]


@pytest.mark.parametrize("loss", ["binomial", "ms", "lifted", "triplet"])
def test_a_dynamic_loss_takes_the_dsml_miners_tau(loss):
    got = resolved_loss({"name": "dsml", "tau_p": 0.7, "tau_n": 0.25}, {"name": loss, "dynamic": True})
    assert (got["tau_p"], got["tau_n"]) == (0.7, 0.25)
    got = resolved_loss({"name": "dsml", "tau_p": 0.8}, {"name": loss, "dynamic": True})
    assert (got["tau_p"], got["tau_n"]) == (0.8, 0.1)  # τ_n: the miner's default


def test_coupling_only_where_it_belongs():
    # a static loss, or another miner: the loss keeps its own (default) τ
    assert resolved_loss({"name": "dsml", "tau_p": 0.7}, {"name": "binomial"})["tau_p"] == 0.9
    assert resolved_loss({"name": "asms"}, {"name": "binomial", "dynamic": True, "tau_p": 0.6})["tau_p"] == 0.6
    assert resolved_loss({"name": "ms"}, {"name": "binomial", "dynamic": True})["tau_p"] == 0.9
    # a loss without dynamic terms is not given τ (its own error message still names 'dynamic')
    cfg = {"miner": {"name": "dsml", "tau_p": 0.7}, "loss": {"name": "soft_contrastive"}}
    assert couple_dynamic_thresholds(cfg)["loss"] == {"name": "soft_contrastive"}
    # the caller's dicts are not modified
    cfg = {"miner": {"name": "dsml", "tau_p": 0.7}, "loss": {"name": "ms", "dynamic": True}}
    assert couple_dynamic_thresholds(cfg)["loss"]["tau_p"] == 0.7 and "tau_p" not in cfg["loss"]


def test_an_explicit_loss_tau_is_kept_and_noted():
    miner, loss = {"name": "dsml", "tau_p": 0.9, "tau_n": 0.1}, {"name": "binomial", "dynamic": True, "tau_p": 0.8}
    got = resolved_loss(miner, loss)
    assert (got["tau_p"], got["tau_n"]) == (0.8, 0.1)
    notes = decoupled_notes({"miner": miner, "loss": loss}, "arm 'x'")
    assert len(notes) == 1 and "arm 'x'" in notes[0] and "loss.tau_p" in notes[0] and "decoupled" in notes[0]
    # the same value is not a decoupling
    assert decoupled_notes({"miner": miner, "loss": {**loss, "tau_p": 0.9}}, "x") == []


STUDY = {
    "name": "tau", "seeds": [0], "resources": {"cpu": 1}, "concurrency": 1, **BASE,
    "arms": [{"name": "bd_star_grid",
              "miner": {"name": "dsml", "tau_p": {"grid": [0.6, 0.9]}, "tau_n": 0.2},
              "loss": {"name": "binomial", "dynamic": True}}],
}


def test_every_grid_point_gives_the_loss_the_miners_tau(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = parse_study(STUDY)
    assert study.notes == []
    (arm,) = study.arms
    paths = [path for path, _ in arm.domains]
    points = list(itertools.product(*(domain.values for _, domain in arm.domains)))
    assert len(points) == 2
    for values in points:
        config = arm.config
        for path, value in zip(paths, values):
            config = replace_at(config, path, value)
        resolved = resolve_config({**config, "seed": 0})
        assert (resolved["loss"]["tau_p"], resolved["loss"]["tau_n"]) == (resolved["miner"]["tau_p"], resolved["miner"]["tau_n"])


def test_a_decoupled_study_arm_is_noted_by_validate(tmp_path):
    raw = {**STUDY, "arms": [{**STUDY["arms"][0], "loss": {"name": "binomial", "dynamic": True, "tau_n": 0.3}}]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    run = subprocess.run([sys.executable, "-m", "dmltune", "validate", str(path)], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "arm 'bd_star_grid': note: loss.tau_n" in run.stdout and "decoupled" in run.stdout
    assert "loss.tau_p" not in run.stdout


@pytest.mark.slow
def test_a_study_grid_trains_every_trial_with_the_miners_tau(tmp_path, shared_ray):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    run = subprocess.run([sys.executable, "-m", "dmltune", "run", str(path)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300, env=shared_ray.env())
    assert run.returncode == 0, run.stderr[-2000:]
    table = pd.read_parquet(tmp_path / "results" / "tau" / "trials.parquet")
    assert table.trial_id.nunique() == 2
    for key in ("tau_p", "tau_n"):  # what each trial trained with, and what the table records
        assert (table[f"loss_{key}"] == table[f"config/miner.{key}"]).all()
        assert (table[f"config/loss.{key}"] == table[f"config/miner.{key}"]).all()
    assert sorted(set(zip(table["config/miner.tau_p"], table["loss_tau_n"]))) == [(0.6, 0.2), (0.9, 0.2)]
