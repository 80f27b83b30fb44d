"""The trainable on CPU: a full run, exact resume from a checkpoint, divergence, meta-λ, Ray Tune."""

import math

import pytest
import torch

from dmltune.config import resolve_config
from dmltune.registry import ConfigError
from dmltune.training import build_optimizer, train, tune_trainable
from dmltune.training.reporting import ConsoleReporter

from trial_helpers import TINY as BASE  # noqa: F401
from trial_helpers import full_and_resumed
from trial_helpers import tiny_config as config


def test_standalone_run_reports_every_epoch(tmp_path, capsys):
    reporter = ConsoleReporter(tmp_path)
    last = train(config(), reporter=reporter)
    assert [r["epoch"] for r in reporter.history] == [1, 2, 3, 4]
    for key in ("loss", "pos_before", "neg_before", "pos_after", "neg_after", "gamma_pos", "gamma_neg",
                "images_per_s", "wall_s", "gpu_s", "val/map@r", "lam"):
        assert key in last, key
    assert "test/recall@1" in last and "test/map@r" in reporter.history[-1]
    assert "test/recall@1" not in reporter.history[0]  # test classes only at the end by default
    assert last["gpu_s"] == 0.0 and last["status"] == "ok"
    assert 0 <= last["test/recall@1"] <= 1
    assert len(capsys.readouterr().out.strip().splitlines()) == 4
    pos = [last[f"val_simhist/pos/{i:02d}"] for i in range(40)]
    neg = [last[f"val_simhist/neg/{i:02d}"] for i in range(40)]
    assert sum(pos) == pytest.approx(1.0) and sum(neg) == pytest.approx(1.0)
    assert "val_simhist/pos/00" not in train(config(eval__similarity_bins=0, train__epochs=1))


@pytest.mark.parametrize("meta", [None, "head"])
def test_resumed_run_matches_an_uninterrupted_one(tmp_path, meta):
    cfg = config(train__checkpoint_every=1)
    if meta:
        # adam: digits' hypergradient is mostly noise, which the default (gated) update rightly ignores
        cfg["loss"]["lam"] = {"meta": {"init": 0.6, "lr": 0.05, "update": "adam", "scope": meta}}
    whole, resumed = full_and_resumed(cfg, tmp_path, stop_after_epoch=2)
    full, last = whole[-1], resumed[-1]
    assert [r["epoch"] for r in resumed] == [3, 4]
    for key in ("loss", "val/map@r", "test/recall@1", "test/map@r", "pos_after", "neg_after"):
        assert last[key] == full[key], key
    if meta:
        assert last["lam_end"] == full["lam_end"] and last["lam_end"] != 0.6


def test_divergence_ends_the_trial_cleanly(tmp_path, monkeypatch):
    from dmltune.pairs import LOSSES

    real_build = LOSSES.build
    calls = {"n": 0}

    def poisoned(name, params=None, /, **context):
        loss_fn = real_build(name, params, **context)

        class Poisoned(type(loss_fn)):
            def __call__(self, *args, **kwargs):
                calls["n"] += 1
                value = super().__call__(*args, **kwargs)
                return value * float("nan") if calls["n"] > 8 else value

        loss_fn.__class__ = Poisoned
        return loss_fn

    monkeypatch.setattr(LOSSES, "build", poisoned)
    reporter = ConsoleReporter(tmp_path)
    last = train(config(), reporter=reporter)
    assert last["status"] == "diverged" and last["epoch"] == 2
    assert "NaN" in last["reason"] and math.isnan(last["val/map@r"])
    assert [r["epoch"] for r in reporter.history] == [1, 2]


def test_meta_lambda_moves_and_is_reported(tmp_path):
    cfg = config(train__epochs=2)
    # adam: digits' hypergradient is mostly noise, which the default (gated) update rightly ignores
    cfg["loss"]["lam"] = {"meta": {"init": 0.6, "lr": 0.05, "update": "adam", "every": 2, "scope": "full", "clamp": [0.3, 0.9]}}
    reporter = ConsoleReporter(tmp_path)
    last = train(cfg, reporter=reporter)
    assert all("lam" in r and "lam_hypergrad" in r for r in reporter.history)
    assert 0.3 <= last["lam_end"] <= 0.9 and last["lam_end"] != 0.6


def test_backbone_learning_rate_multiplier_really_applies():
    from dmltune.models import build_model

    model = build_model(backbone="small_cnn", dim=8, freeze_bn=False)
    opt = build_optimizer(model, {"lr": 1e-3, "backbone_lr_mult": 0.1, "optimizer": "adam", "weight_decay": 0.0})
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"head": 1e-3, "backbone": pytest.approx(1e-4)}
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len([p for p in model.parameters() if p.requires_grad])


@pytest.mark.parametrize("changes, fragment", [
    ({"train__batch_size": 25}, "not divisible by train.k"),
    ({"train__k": 1}, "outside its valid range"),
    ({"loss__lam": {"meta": {"init": 0.9, "clamp": [0.0, 0.5]}}}, "outside clamp"),
    ({"loss__name": "contrastive", "loss__lam": {"meta": {}}}, "no threshold λ"),
    ({"miner__name": "asmss"}, "did you mean 'asms'"),
    ({"model__backbone": "resnet"}, "unknown backbone"),
    ({"dataset__transform": {"preset": "64px"}}, "one of 'imagenet', '28px', '8px'"),
    ({"eval__metrics": 1}, "has no parameter 'metrics'"),
])
def test_config_errors_name_the_key(changes, fragment):
    with pytest.raises(ConfigError) as info:
        resolve_config(config(**changes))
    assert fragment in str(info.value)


def test_unknown_section():
    with pytest.raises(ConfigError, match="unknown section"):
        resolve_config({**BASE, "optimiser": {}})


@pytest.mark.slow
def test_inside_ray_tune(tmp_path):
    ray = pytest.importorskip("ray")
    from ray import tune

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        cfg = config(train__epochs=2)
        cfg["seed"] = tune.grid_search([0, 1])
        tuner = tune.Tuner(
            tune.with_resources(tune_trainable, {"cpu": 1}),
            param_space=cfg,
            tune_config=tune.TuneConfig(metric="val/map@r", mode="max"),
            run_config=tune.RunConfig(storage_path=str(tmp_path), name="t", verbose=0),
        )
        results = tuner.fit()
        assert len(results) == 2 and not results.errors
        for result in results:
            assert result.metrics["epoch"] == 2 and result.metrics["status"] == "ok"
            assert result.checkpoint is not None
            assert "test/recall@1" in result.metrics
            assert len(result.metrics_dataframe) == 2  # one report per epoch, nothing extra
    finally:
        ray.shutdown()


def test_meta_step_runs_every_k_iterations(tmp_path, monkeypatch):
    from dmltune.training.meta import MetaLambdaStep

    calls = []
    real = MetaLambdaStep.update
    monkeypatch.setattr(MetaLambdaStep, "update",
                        lambda self, *a: (calls.append(self.trial.iteration), real(self, *a))[1])
    cfg = config(train__epochs=2)
    cfg["loss"]["lam"] = {"meta": {"init": 0.6, "every": 4}}
    train(cfg, reporter=ConsoleReporter(tmp_path))
    assert calls == [0, 4, 8]  # 2 epochs × 6 iterations


@pytest.mark.parametrize("scope", ["head", "full"])
def test_trainable_meta_step_matches_the_double_backward_hypergradient(scope):
    from torch.func import functional_call

    from dmltune.training import Batch, Trial

    cfg = config()
    cfg["loss"]["lam"] = {"meta": {"init": 0.6, "scope": scope, "inner_lr": 0.5}}
    trial = Trial(resolve_config(cfg))
    meta = trial.meta  # the meta-λ part
    trial.model.double()
    trial.sampler.set_epoch(1)
    meta.sampler.set_epoch(1)
    idx, meta_idx = next(iter(trial.sampler)), next(iter(meta.sampler))
    x = trial.transform(trial.source.batch(idx), train=False).double()
    y = trial.train_labels[torch.as_tensor(idx)]
    trial.transform = lambda images, train: images.double() / 255  # same meta input for both methods
    feats = trial.model.features(x)
    emb = trial.model.embed(feats)
    sim = emb @ emb.T
    mined = trial.miner(sim, y)
    batch = Batch(x=x, y=y, features=feats, embeddings=emb, all_embeddings=emb, all_labels=y, sim=sim, mined=mined)
    fast = meta.update(sim, batch, mined, 0.5, meta_idx).item()
    assert fast == meta.lam.last_hypergrad.item()

    meta_x = trial.source.batch(meta_idx).double() / 255
    meta_y = trial.train_labels[torch.as_tensor(meta_idx)]
    module = trial.model.head if scope == "head" else trial.model
    params = {n: p for n, p in module.named_parameters() if p.requires_grad}
    buffers = {n: b.clone() for n, b in module.named_buffers()}
    meta_in = trial.model.features(meta_x).detach() if scope == "head" else meta_x

    def meta_loss(theta_hat):
        out = functional_call(module, {**theta_hat, **buffers}, (meta_in,))
        e = torch.nn.functional.normalize(out, dim=1) if scope == "head" else out
        s = e @ e.T
        return meta.meta_loss_fn(s, meta_y, trial.miner(s, meta_y))

    meta.lam.lam = 0.6
    reference = meta.lam.hypergradient(
        lambda lam: trial.loss_fn(sim, y, mined, progress=0.5, lam=lam), params, meta_loss).item()
    assert reference != 0 and fast == pytest.approx(reference, rel=1e-6)



TIMING = {"wall_s", "gpu_s", "epoch_s", "images_per_s", "time_this_iter_s", "time_total_s", "timestamp",
          "time_since_restore", "pid", "hostname", "node_ip", "date", "trial_id", "checkpoint_dir_name"}


def _tune_trials(tmp_path, name: str, param_space: dict, reuse: bool) -> list:
    """(configuration, per-epoch reports) of every trial of one Tune experiment, in trial order."""
    from ray import tune

    tuner = tune.Tuner(tune.with_resources(tune_trainable, {"cpu": 1}), param_space=param_space,
                       tune_config=tune.TuneConfig(metric="val/map@r", mode="max", reuse_actors=reuse),
                       run_config=tune.RunConfig(storage_path=str(tmp_path), name=name, verbose=0))
    results = tuner.fit()
    assert not results.errors
    return sorted(((r.config, r.metrics_dataframe) for r in results), key=lambda t: t[1].timestamp.iloc[0])


@pytest.mark.slow
def test_a_trial_in_a_reused_worker_is_bit_identical_to_one_in_a_fresh_worker(tmp_path):
    """`reuse_actors`: the last trial runs in the worker of earlier trials with another miner and
    seed; its every reported value equals the same trial's in a worker of its own."""
    import pandas as pd

    ray = pytest.importorskip("ray")
    from ray import tune

    target = {**config(train__epochs=2), "seed": 3}
    other_miner = {"name": "ms"}
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        reused = _tune_trials(tmp_path, "reused", {**target, "seed": tune.grid_search([0, 3]),
                                                   "miner": tune.grid_search([other_miner, target["miner"]])}, True)
        [(_, alone)] = _tune_trials(tmp_path, "fresh", target, False)
    finally:
        ray.shutdown()
    assert len({df.pid.iloc[0] for _, df in reused}) == 1  # one worker ran all four trials
    [(_, same)] = [(c, df) for c, df in reused if c["seed"] == 3 and c["miner"] == target["miner"]]
    assert same is not reused[0][1]  # it did not run first
    columns = [c for c in alone.columns if c not in TIMING and not c.startswith("config/")]
    pd.testing.assert_frame_equal(same[columns].reset_index(drop=True), alone[columns].reset_index(drop=True))
