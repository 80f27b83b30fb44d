"""MIRAGE inside the trainable: batches, optimisers, reports, resume, and no effect when off."""

from __future__ import annotations

import copy

import pytest
import torch

from dmltune.config import resolve_config
from dmltune.pairs.masks import label_masks
from dmltune.training import Trial, train
from dmltune.training.reporting import ConsoleReporter
from trial_helpers import tiny_config

BASE = tiny_config(seed=0, miner={"name": "at_asms"}, loss={"name": "contrastive"}, train__epochs=2,
                   train__batches_per_epoch=3)
MIRAGE = {"name": "mirage", "lr": 0.01, "virtual_ratio": 2.0, "hidden": 32}


def cfg(generation=None, **sections):
    out = copy.deepcopy(BASE)
    if generation is not None:
        out["generation"] = generation
    for key, value in sections.items():
        out[key] = {**out.get(key, {}), **value}
    return out


def reports(config, root=None):
    reporter = ConsoleReporter(root)
    train(config, reporter=reporter)
    return reporter.history


MODEL_KEYS = ("loss", "pos_after", "neg_after", "val/map@r", "test/map@r", "test/recall@1")


def test_generation_off_leaves_training_bit_for_bit_unchanged():
    plain = reports(cfg())
    none = reports(cfg({"name": "none"}))
    # MIRAGE trains G, D and prototypes on its own random stream, but adds nothing to the batch
    silent = reports(cfg({**MIRAGE, "generated_ratio": 0.0, "proxies": False}))
    for a, b, c in zip(plain, none, silent):
        for key in MODEL_KEYS:
            assert a.get(key, "absent") == b.get(key, "absent") == c.get(key, "absent"), key
    assert "generator_loss" in silent[-1] and "generator_loss" not in plain[-1]


def test_reports_generation_losses_and_buffer_share():
    last = reports(cfg(MIRAGE))[-1]
    for key in ("generator_loss", "discriminator_loss", "buffer_share"):
        assert key in last and last[key] == last[key], key  # present and not NaN
    assert 0.0 <= last["buffer_share"] <= 1.0


def _params(module):
    return [p.detach().clone() for p in module.parameters()]


def _changed(before, module):
    return [not torch.equal(a, b) for a, b in zip(before, module.parameters())]


@pytest.mark.parametrize("frozen", ["model", "generation"])
def test_each_optimiser_moves_only_its_own_parameters(frozen):
    lr = {"train": {"lr": 0.0}} if frozen == "model" else {}
    gen = {**MIRAGE, "lr": 0.0} if frozen == "generation" else MIRAGE
    trial = Trial(resolve_config(cfg(gen, **lr)))
    model, G, D = _params(trial.model), _params(trial.generation.module.G), _params(trial.generation.module.D)
    protos = trial.generation.module.prototypes.detach().clone()
    trial.run_epoch(1)
    moved = {"model": any(_changed(model, trial.model)), "G": any(_changed(G, trial.generation.module.G)),
             "D": any(_changed(D, trial.generation.module.D)),
             "prototypes": not torch.equal(protos, trial.generation.module.prototypes)}
    if frozen == "model":
        assert moved == {"model": False, "G": True, "D": True, "prototypes": True}
    else:
        assert moved == {"model": True, "G": False, "D": False, "prototypes": False}


def test_virtual_examples_are_never_positives_of_real_anchors():
    trial = Trial(resolve_config(cfg(MIRAGE)))
    seen = []
    miner = trial.miner

    def recording(sim, labels):
        seen.append(labels.clone())
        return miner(sim, labels)

    trial.miner = recording
    trial.run_epoch(1)
    gen = trial.generation.module
    for labels in seen:
        real = labels[:24]
        assert not gen.is_virtual(real).any() and gen.is_virtual(labels).any()
        assert not torch.isin(labels[gen.is_virtual(labels)], trial.train_labels).any()
        pos, _ = label_masks(labels)
        virtual = gen.is_virtual(labels)
        assert not pos[:24][:, virtual].any()                  # no real anchor has a virtual positive
        assert pos[:24][:, 24:][:, ~virtual[24:]].any()       # generated training-class examples do count


def test_short_digits_run_raises_the_buffer_area_share():
    for seed in (0, 1):
        config = cfg(MIRAGE, train={"epochs": 6, "batches_per_epoch": 10}, miner={"name": "none"})
        config["seed"], config["dataset"]["val_fraction"] = seed, 0.0
        config["miner"] = {"name": "none"}
        trial = Trial(resolve_config(config))
        start = trial.generation.module.buffer_area_share()
        for epoch in range(1, 7):
            trial.run_epoch(epoch)
        assert trial.generation.module.buffer_area_share() > start, seed


def test_resume_with_generation_matches_an_uninterrupted_run(tmp_path):
    from trial_helpers import full_and_resumed

    whole, resumed = full_and_resumed(cfg(MIRAGE, train={"epochs": 3}), tmp_path, stop_after_epoch=2)
    assert [r["epoch"] for r in resumed] == [3]
    for key in MODEL_KEYS + ("generator_loss", "discriminator_loss", "buffer_share"):
        assert resumed[-1].get(key) == whole[-1].get(key), key


def test_combines_with_meta_lambda_and_other_losses():
    meta = cfg(MIRAGE, loss={"name": "soft_contrastive", "lam": {"meta": {"init": 0.7, "lr": 0.05, "update": "adam", "scope": "head"}}})
    last = reports(meta)[-1]
    assert last["status"] == "ok" and last["lam_end"] != 0.7
    for loss in ("ms", "triplet", "binomial"):
        assert reports(cfg(MIRAGE, loss={"name": loss}, train={"epochs": 1}))[-1]["status"] == "ok"


def test_generation_config_errors_are_one_line():
    from dmltune.registry import ConfigError

    with pytest.raises(ConfigError, match="generation 'mirage'.*virtual_ratoi"):
        resolve_config(cfg({"name": "mirage", "virtual_ratoi": 1.0}))
    with pytest.raises(ConfigError, match="generation.name"):
        resolve_config(cfg({"name": "mirag"}))
