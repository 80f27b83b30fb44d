"""Meta-learned λ: the exact hypergradient against finite differences, the updates (the gated default
stays put under noise and moves at its rate under a signal), the meta batch's class coverage, the
per-epoch hypergradient report and its mark in the trajectory plot."""

import pytest
import torch
from torch.func import functional_call

from dmltune.meta_lambda import MetaLambda
from dmltune.pairs import get_loss, get_miner


def tiny_problem(seed=0):
    torch.manual_seed(seed)
    head = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4)).double()
    feats = torch.randn(16, 6, dtype=torch.float64)
    labels = torch.arange(4).repeat_interleave(4)
    meta_feats = torch.randn(12, 6, dtype=torch.float64)
    meta_labels = torch.arange(4).repeat_interleave(3)
    return head, feats, labels, meta_feats, meta_labels


def embed(module, params, x):
    return torch.nn.functional.normalize(functional_call(module, params, (x,)), dim=1)


def closures(head, feats, labels, meta_feats, meta_labels, loss_name="soft_contrastive"):
    loss_fn = get_loss(loss_name)
    meta_loss_fn = get_loss("contrastive")
    miner = get_miner("none")
    params = dict(head.named_parameters())

    def train_loss(lam, p=params):
        e = embed(head, p, feats)
        sim = e @ e.T
        return loss_fn(sim, labels, miner(sim, labels), lam=lam)

    def meta_loss(theta_hat):
        e = embed(head, theta_hat, meta_feats)
        sim = e @ e.T
        return meta_loss_fn(sim, meta_labels, miner(sim, meta_labels))

    return train_loss, params, meta_loss


def lookahead_meta_loss(train_loss, params, meta_loss, lam, psi):
    """L_meta(θ − ψ ∇θ L_train(λ)) evaluated directly (first-order, for finite differences)."""
    tensors = list(params.values())
    grads = torch.autograd.grad(train_loss(torch.tensor(lam, dtype=torch.float64)), tensors)
    theta_hat = {n: t.detach() - psi * g for (n, t), g in zip(params.items(), grads)}
    return meta_loss(theta_hat).item()


@pytest.mark.parametrize("loss_name", ["soft_contrastive", "binomial", "ms"])
def test_hypergradient_matches_finite_differences(loss_name):
    head, feats, labels, meta_feats, meta_labels = tiny_problem()
    train_loss, params, meta_loss = closures(head, feats, labels, meta_feats, meta_labels, loss_name)
    psi, lam0, h = 0.5, 0.6, 1e-5
    gen = MetaLambda(init=lam0, lr=0.1, inner_lr=psi, clamp=(0.0, 1.0), dtype=torch.float64, update="sgd")
    exact = gen.hypergradient(train_loss, params, meta_loss).item()
    plus = lookahead_meta_loss(train_loss, params, meta_loss, lam0 + h, psi)
    minus = lookahead_meta_loss(train_loss, params, meta_loss, lam0 - h, psi)
    numeric = (plus - minus) / (2 * h)
    assert abs(numeric) > 1e-6  # the problem really depends on λ
    assert exact == pytest.approx(numeric, rel=1e-5, abs=1e-9)


def test_lambda_moves_towards_lower_meta_loss_and_stays_clamped():
    head, feats, labels, meta_feats, meta_labels = tiny_problem(1)
    train_loss, params, meta_loss = closures(head, feats, labels, meta_feats, meta_labels)
    psi = 0.5
    values = {lam: lookahead_meta_loss(train_loss, params, meta_loss, lam, psi) for lam in (0.3, 0.7)}
    better = min(values, key=values.get)
    gen = MetaLambda(init=0.5, lr=0.05, inner_lr=psi, clamp=(0.0, 1.0), dtype=torch.float64, update="sgd")
    before = gen.lam.item()
    gen.step(train_loss, params, meta_loss)
    after = gen.lam.item()
    assert (after - before) * (better - 0.5) > 0, (before, after, values)
    huge = MetaLambda(init=0.5, lr=1e9, inner_lr=psi, clamp=(0.2, 0.8), dtype=torch.float64, update="sgd")
    huge.step(train_loss, params, meta_loss)
    assert huge.lam.item() in (0.2, 0.8)


def test_every_k_and_state_round_trip():
    gen = MetaLambda(init=0.7, lr=0.1, inner_lr=0.1, clamp=(0.0, 1.0), every=3, update="sgd")
    assert [i for i in range(10) if gen.due(i)] == [0, 3, 6, 9]
    gen.lam = torch.tensor(0.42)
    other = MetaLambda(init=0.7, lr=0.1, inner_lr=0.1, clamp=(0.0, 1.0), update="sgd")
    other.load_state_dict(gen.state_dict())
    assert other.lam.item() == pytest.approx(0.42)


def test_init_outside_clamp_is_refused():
    with pytest.raises(ValueError, match="outside clamp"):
        MetaLambda(init=0.9, lr=0.1, inner_lr=0.1, clamp=(0.0, 0.5))


def test_loss_without_lambda_gives_zero_hypergradient():
    head, feats, labels, meta_feats, meta_labels = tiny_problem()
    _, params, meta_loss = closures(head, feats, labels, meta_feats, meta_labels)
    contrastive = get_loss("contrastive")

    def train_loss(lam):
        e = embed(head, params, feats)
        return contrastive(e @ e.T, labels) + 0 * lam

    gen = MetaLambda(init=0.5, lr=0.1, inner_lr=0.1, clamp=(0.0, 1.0), dtype=torch.float64, update="sgd")
    assert gen.hypergradient(train_loss, params, meta_loss).item() == 0.0


def test_lifted_lambda_only_shifts_the_loss_so_its_hypergradient_vanishes():
    # log Σ e^{λ − S} = λ + log Σ e^{−S}: while the hinge is active, λ does not change ∇θ L.
    head, feats, labels, meta_feats, meta_labels = tiny_problem()
    train_loss, params, meta_loss = closures(head, feats, labels, meta_feats, meta_labels, "lifted")
    gen = MetaLambda(init=0.6, lr=0.1, inner_lr=0.5, clamp=(0.0, 1.0), dtype=torch.float64, update="sgd")
    assert abs(gen.hypergradient(train_loss, params, meta_loss).item()) < 1e-12


def test_adam_update_moves_lambda_by_about_lr_in_the_same_direction():
    head, feats, labels, meta_feats, meta_labels = tiny_problem(1)
    train_loss, params, meta_loss = closures(head, feats, labels, meta_feats, meta_labels)
    sgd = MetaLambda(init=0.5, lr=1e-3, inner_lr=1e-4, clamp=(0.0, 1.0), dtype=torch.float64, update="sgd")
    adam = MetaLambda(init=0.5, lr=0.02, inner_lr=1e-4, clamp=(0.0, 1.0), dtype=torch.float64, update="adam")
    sgd.step(train_loss, params, meta_loss)
    adam.step(train_loss, params, meta_loss)
    sgd_move, adam_move = sgd.lam.item() - 0.5, adam.lam.item() - 0.5
    assert abs(sgd_move) < 1e-6  # tiny ψ: a plain SGD step on λ barely moves it
    assert adam_move == pytest.approx(0.02 * (1 if sgd_move > 0 else -1), rel=1e-3)
    restored = MetaLambda(init=0.5, lr=0.02, inner_lr=1e-4, clamp=(0.0, 1.0), dtype=torch.float64, update="adam")
    restored.load_state_dict(adam.state_dict())
    adam.step(train_loss, params, meta_loss)
    restored.step(train_loss, params, meta_loss)
    assert restored.lam.item() == adam.lam.item()


@pytest.mark.parametrize("loss_name", ["soft_contrastive", "binomial", "ms"])
def test_hypergradient_via_similarities_equals_double_backward(loss_name):
    head, feats, labels, meta_feats, meta_labels = tiny_problem(2)
    train_loss, params, meta_loss = closures(head, feats, labels, meta_feats, meta_labels, loss_name)
    loss_fn, miner = get_loss(loss_name), get_miner("none")
    gen = MetaLambda(init=0.55, lr=0.1, inner_lr=0.3, clamp=(0.0, 1.0), dtype=torch.float64, update="sgd")
    reference = gen.hypergradient(train_loss, params, meta_loss).item()

    e = embed(head, params, feats)
    sim = e @ e.T
    mined = miner(sim, labels)

    def sim_loss(s, lam):
        return loss_fn(s, labels, mined, lam=lam)

    def sim_tangent(v):
        def sim_of(p):
            emb = embed(head, p, feats)
            return emb @ emb.T

        return torch.func.jvp(sim_of, (dict(params),), (v,))[1]

    fast = gen.hypergradient_via_similarities(sim, sim_loss, params, meta_loss, sim_tangent).item()
    assert fast == pytest.approx(reference, rel=1e-9, abs=1e-15)
    # the training graph is still there for the step that follows
    sim.sum().backward()


# ---------------------------------------------------------------- the default update: 'gated'

def gated(**kw):
    from dmltune.meta_lambda import META_PARAMS

    defaults = {p.name: p.default for p in META_PARAMS}
    args = dict(init=defaults["init"], lr=defaults["lr"], inner_lr=1e-5, clamp=tuple(defaults["clamp"]),
                update=defaults["update"], window=defaults["window"], gate=defaults["gate"], dtype=torch.float64)
    args.update(kw)
    return MetaLambda(**args)


def feed(gen, values):
    path = []
    for v in values:
        gen.apply(torch.as_tensor(float(v), dtype=torch.float64))
        path.append(gen.lam.item())
    return path


def test_gated_is_the_default_update():
    from dmltune.config import resolve_config

    meta = resolve_config({"dataset": {"name": "digits"}, "loss": {"name": "soft_contrastive", "lam": {"meta": {}}}})
    assert meta["loss"]["lam"]["meta"]["update"] == "gated"


@pytest.mark.parametrize("seed", range(6))
def test_gated_update_stays_put_under_zero_mean_noise(seed):
    noise = torch.randn(2000, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    paths = {scale: feed(gated(), noise * scale) for scale in (1e-7, 1e-4, 1.0)}
    final = paths[1e-4][-1]
    assert abs(final - 0.7) < 0.02, (seed, final)
    # scale-free: the same noise at any magnitude takes λ along the same path
    for path in paths.values():
        assert path == pytest.approx(paths[1e-4], abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_gated_update_stays_put_under_heavy_tailed_and_changing_noise(seed):
    g = torch.Generator().manual_seed(100 + seed)

    def normal(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    t3 = normal(2000) / normal(3, 2000).pow(2).mean(0).sqrt()  # Student-t, 3 degrees of freedom
    log_normal_scale = normal(2000) * torch.exp(normal(2000))
    growing = normal(2000) * torch.logspace(-6, -3, 2000, dtype=torch.float64)  # 1,000-fold over the run
    for values in (t3, log_normal_scale, growing):
        assert abs(feed(gated(), values)[-1] - 0.7) < 0.02


def test_adam_random_walks_under_the_same_noise():
    # what the gated default fixes: Adam normalises every noisy hypergradient to a step of ≈ lr
    noise = torch.randn(2000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1e-5
    adam = MetaLambda(init=0.7, lr=0.01, inner_lr=1e-5, clamp=(0.0, 1.0), dtype=torch.float64, update="adam")
    assert abs(feed(adam, noise)[-1] - 0.7) > 0.02


@pytest.mark.parametrize("value", [3e-7, -3e-7, 0.02, -5.0])
def test_gated_update_moves_at_the_configured_rate_under_a_consistent_hypergradient(value):
    gen = gated()
    path = feed(gen, [value] * 101)
    lr, direction = gen.lr, -1.0 if value > 0 else 1.0
    assert path[0] == 0.7  # one hypergradient has no spread yet
    # then φ per meta step against the hypergradient's sign
    assert path[-1] == pytest.approx(0.7 + direction * lr * 100, abs=1e-9)
    assert all(b - a == pytest.approx(direction * lr, abs=1e-12) for a, b in zip(path, path[1:]))


@pytest.mark.parametrize("seed", range(3))
def test_gated_update_follows_a_signal_in_noise_and_stops_at_the_clamp(seed):
    g = torch.Generator().manual_seed(seed)
    values = -2e-6 * (1 + 0.1 * torch.randn(300, generator=g, dtype=torch.float64))  # 10 % noise
    gen = gated(lr=0.002, clamp=(0.2, 1.0))
    path = feed(gen, values)
    rate = (path[100] - path[2]) / 98
    assert rate == pytest.approx(0.002, rel=0.01)  # the whole step from the third meta step on
    assert path[-1] == 1.0  # 0.7 + 0.002 × 300 > 1.0: held at the clamp
    weak = gated()  # per-step SNR 1: about the whole step once the window has seen enough of it
    path = feed(weak, 1e-4 * (1.0 + torch.randn(400, generator=g, dtype=torch.float64)))
    assert (path[50] - path[-1]) / 350 == pytest.approx(weak.lr, rel=0.1)


def test_gated_state_round_trip_reproduces_the_path():
    g = torch.Generator().manual_seed(4)
    values = 1e-4 * (1.0 + torch.randn(80, generator=g, dtype=torch.float64))
    gen = gated(lr=0.002)
    feed(gen, values[:40])
    restored = gated(lr=0.002)
    restored.load_state_dict(gen.state_dict())
    assert feed(restored, values[40:]) == feed(gen, values[40:])
    assert gen.lam.item() < 0.7 - 0.02  # it really moved


def test_epoch_summary_is_the_mean_and_its_t_statistic():
    import numpy as np

    gen = gated()
    values = np.array([3e-6, 1e-6, 4e-6, -1e-6, 5e-6])
    feed(gen, values[:2])
    gen.start_epoch()
    assert np.isnan(gen.epoch_summary()["lam_hypergrad_snr"])
    feed(gen, values)
    out = gen.epoch_summary()
    assert out["lam_hypergrad_mean"] == pytest.approx(values.mean())
    assert out["lam_hypergrad_snr"] == pytest.approx(values.mean() / (values.std(ddof=1) / np.sqrt(5)))


# ---------------------------------------------------------------- the meta batch covers the training classes

def tiny_trial(**dataset):
    from dmltune.config import resolve_config
    from dmltune.training import Trial

    cfg = {"seed": 1, "dataset": dataset, "model": {"backbone": "small_cnn", "dim": 8, "freeze_bn": False},
           "miner": {"name": "none"}, "loss": {"name": "soft_contrastive", "lam": {"meta": {}}},
           "train": {"epochs": 1, "batch_size": 16, "k": 8, "lr": 1e-3}, "eval": {"nmi": False}}
    return Trial(resolve_config(cfg))


def meta_batches(trial, epoch=1):
    trial.meta.sampler.set_epoch(epoch)
    labels = trial.train_labels.cpu()
    return [labels[torch.as_tensor(b)] for b in trial.meta.sampler]


def test_default_meta_batch_holds_every_training_class():
    trial = tiny_trial(name="digits", val_fraction=0.0)  # 5 training classes, 2 per training batch
    classes = set(torch.unique(trial.train_labels).tolist())
    assert len(classes) == 5
    for batch in meta_batches(trial):
        assert set(batch.tolist()) == classes
        assert torch.bincount(batch).tolist().count(8) == 5  # train.k = 8 images of each


def test_capped_meta_batches_cycle_through_every_class():
    from dmltune.meta_lambda import META_BATCH_MAX_CLASSES, MetaBatchSampler

    trial = tiny_trial(name="synthetic", classes=600, per_class=2, size=8, channels=1, val_fraction=0.0,
                       transform={"preset": "8px"})
    classes = torch.unique(trial.train_labels)
    assert len(classes) == 300 > META_BATCH_MAX_CLASSES
    for epoch in (1, 2):
        batches = meta_batches(trial, epoch)
        assert all(len(torch.unique(b)) == META_BATCH_MAX_CLASSES == len(b) // 8 for b in batches)
        assert set(torch.cat(batches[:3]).tolist()) == set(classes.tolist())  # ⌈300 / 128⌉ meta steps
        # later passes too: over 30 meta batches (12.8 passes) every class comes 12 or 13 times
        visits = torch.bincount(torch.cat([torch.unique(b) for b in batches[:30]]), minlength=300)
        assert visits.min() >= 12 and visits.max() <= 13
    explicit = MetaBatchSampler(trial.train_labels.cpu().numpy(), 4, 3, batches_per_epoch=2, seed=0)
    assert [len(b) for b in explicit] == [12, 12]


def test_meta_batches_are_drawn_only_for_meta_steps():
    from dmltune.config import resolve_config
    from dmltune.training import Trial

    cfg = {"seed": 0, "dataset": {"name": "synthetic", "classes": 40, "per_class": 4, "size": 8, "channels": 1,
                                  "val_fraction": 0.0, "transform": {"preset": "8px"}},
           "model": {"backbone": "small_cnn", "dim": 8, "freeze_bn": False}, "miner": {"name": "none"},
           "loss": {"name": "soft_contrastive", "lam": {"meta": {"every": 3, "meta_batch": {"classes": 5}}}},
           "train": {"epochs": 1, "batch_size": 8, "k": 2, "lr": 1e-3, "batches_per_epoch": 12},
           "eval": {"nmi": False}}
    trial = Trial(resolve_config(cfg))
    drawn = []
    real_next = trial.meta.next_meta_batch
    trial.meta.next_meta_batch = lambda: (drawn.append(real_next()), drawn[-1])[1]
    report = trial.run_epoch(1)
    assert len(drawn) == 4  # iterations 0, 3, 6, 9
    # consecutive meta steps walk through the 20 classes, 5 at a time
    labels = trial.train_labels.cpu()
    assert len(set(torch.cat([labels[torch.as_tensor(m)] for m in drawn]).tolist())) == 20
    assert {"lam_hypergrad", "lam_hypergrad_mean", "lam_hypergrad_snr"} <= set(report)


def test_resume_with_the_gated_update_reproduces_a_moving_lambda(tmp_path, monkeypatch):
    """Exact resume of the gated state, with a hypergradient given a consistent part so that λ moves."""
    import dmltune.meta_lambda as meta_lambda
    from trial_helpers import full_and_resumed

    real = meta_lambda.MetaLambda.hypergradient_via_similarities
    monkeypatch.setattr(meta_lambda.MetaLambda, "hypergradient_via_similarities",
                        lambda self, *a: real(self, *a) + 1e-2)
    from trial_helpers import tiny_config

    cfg = tiny_config(seed=0, model__dim=8, loss={"name": "soft_contrastive", "lam": {"meta": {"init": 0.6, "lr": 0.01}}},
                      train__epochs=3, train__batches_per_epoch=4, train__checkpoint_every=1, eval__every=3)
    full, resumed = full_and_resumed(cfg, tmp_path, stop_after_epoch=1)
    keys = ("lam", "lam_end", "lam_hypergrad", "lam_hypergrad_mean", "lam_hypergrad_snr", "loss")
    for a, b in zip(full[1:], resumed):
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    assert full[-1]["lam_end"] < 0.6 - 0.05  # 12 meta steps of at most 0.01, most of them whole


def test_trajectory_plot_marks_epochs_without_hypergradient_signal():
    from synthetic_study import example_table

    from dmltune.analysis import analyse, study_table
    from dmltune.analysis.plots import trajectories_figure

    table = example_table()
    ddtas = table.arm == "ddtas"
    # per epoch and seed: epoch 1 clear in every seed, epoch 2 in one seed of three, epoch 3 clear (negative)
    snr = {(1, 0): 5.0, (1, 1): 3.0, (1, 2): 2.5, (2, 0): 4.0, (2, 1): 0.3, (2, 2): -1.0,
           (3, 0): -3.0, (3, 1): -2.5, (3, 2): -6.0}
    table.loc[ddtas, "lam_hypergrad_snr"] = [snr[(e, s)] for e, s in zip(table.epoch[ddtas], table.seed[ddtas])]
    source = {"eval": {"metric": "map@r"}, "arms": [{"name": a} for a in dict.fromkeys(table.arm)]}
    fig = trajectories_figure(analyse(study_table(table, source), {"reference": "ddtas"}))
    ax = fig.axes[0]
    assert ax.get_ylabel().startswith("λ")
    hollow = [line for line in ax.lines if line.get_markerfacecolor() == "white" and len(line.get_xdata())]
    assert [list(line.get_xdata()) for line in hollow] == [[2]]
    assert any("SNR < 2" in t.get_text() for t in ax.get_legend().get_texts())
