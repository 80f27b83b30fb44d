"""Meta-learned λ: the exact hypergradient against finite differences, and the update's direction."""

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
    gen = MetaLambda(init=lam0, lr=0.1, inner_lr=psi, clamp=(0.0, 1.0), dtype=torch.float64)
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
    gen = MetaLambda(init=0.5, lr=0.05, inner_lr=psi, clamp=(0.0, 1.0), dtype=torch.float64)
    before = gen.lam.item()
    gen.step(train_loss, params, meta_loss)
    after = gen.lam.item()
    assert (after - before) * (better - 0.5) > 0, (before, after, values)
    huge = MetaLambda(init=0.5, lr=1e9, inner_lr=psi, clamp=(0.2, 0.8), dtype=torch.float64)
    huge.step(train_loss, params, meta_loss)
    assert huge.lam.item() in (0.2, 0.8)


def test_every_k_and_state_round_trip():
    gen = MetaLambda(init=0.7, lr=0.1, inner_lr=0.1, clamp=(0.0, 1.0), every=3)
    assert [i for i in range(10) if gen.due(i)] == [0, 3, 6, 9]
    gen.lam = torch.tensor(0.42)
    other = MetaLambda(init=0.7, lr=0.1, inner_lr=0.1, clamp=(0.0, 1.0))
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

    gen = MetaLambda(init=0.5, lr=0.1, inner_lr=0.1, clamp=(0.0, 1.0), dtype=torch.float64)
    assert gen.hypergradient(train_loss, params, meta_loss).item() == 0.0


def test_lifted_lambda_only_shifts_the_loss_so_its_hypergradient_vanishes():
    # log Σ e^{λ − S} = λ + log Σ e^{−S}: while the hinge is active, λ does not change ∇θ L.
    head, feats, labels, meta_feats, meta_labels = tiny_problem()
    train_loss, params, meta_loss = closures(head, feats, labels, meta_feats, meta_labels, "lifted")
    gen = MetaLambda(init=0.6, lr=0.1, inner_lr=0.5, clamp=(0.0, 1.0), dtype=torch.float64)
    assert abs(gen.hypergradient(train_loss, params, meta_loss).item()) < 1e-12


def test_adam_update_moves_lambda_by_about_lr_in_the_same_direction():
    head, feats, labels, meta_feats, meta_labels = tiny_problem(1)
    train_loss, params, meta_loss = closures(head, feats, labels, meta_feats, meta_labels)
    sgd = MetaLambda(init=0.5, lr=1e-3, inner_lr=1e-4, clamp=(0.0, 1.0), dtype=torch.float64)
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
    gen = MetaLambda(init=0.55, lr=0.1, inner_lr=0.3, clamp=(0.0, 1.0), dtype=torch.float64)
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
