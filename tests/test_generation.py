"""MIRAGE generation component (METHODS.md §5): labels, losses, optimiser separation, buffer areas."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dmltune.generation import GENERATORS, Mirage, NoGeneration, build_generation
from dmltune.models import build_model
from dmltune.registry import ConfigError

FEAT, DIM = 12, 6


def embed_head(seed=0, feat=FEAT, dim=DIM):
    """A plain linear head with L2 normalisation, standing in for ``EmbeddingModel.embed``."""
    torch.manual_seed(seed)
    head = nn.Linear(feat, dim)
    return head, (lambda f: F.normalize(head(f), dim=1))


def mirage(num_classes=5, class_labels=None, feat=FEAT, dim=DIM, seed=0, **params):
    torch.manual_seed(seed)
    return build_generation("mirage", params, num_classes, feat, dim, "cpu", class_labels=class_labels)


def rng(seed=0):
    return torch.Generator().manual_seed(seed)


def snapshot(params):
    return [p.detach().clone() for p in params]


def changed(params, before):
    return [not torch.equal(p.detach(), b) for p, b in zip(params, before)]


# ----- building and parameters ----------------------------------------------------------------


def test_registry_declares_both_components_with_defaults():
    assert set(GENERATORS) == {"none", "mirage"}
    defaults = GENERATORS["mirage"].defaults
    assert defaults["virtual_ratio"] == 1.0 and defaults["generated_ratio"] == 1.0
    assert defaults["hidden"] == 512 and defaults["lr"] == 1e-4
    assert GENERATORS["none"].params == ()


def test_shapes_and_architecture():
    m = mirage(num_classes=4, virtual_ratio=1.5, hidden=7)
    assert isinstance(m, Mirage) and m.num_train == 4 and m.num_virtual == 6
    assert m.prototypes.shape == (10, DIM)
    linears = [layer for layer in m.G if isinstance(layer, nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(DIM, 7), (7, FEAT)]
    assert m.D.class_head.out_features == 10 and m.D.real_head.out_features == 1
    _, embed = embed_head()
    emb, labels = m.generate(embed, 11, rng())
    assert emb.shape == (11, DIM) and labels.shape == (11,) and labels.dtype == torch.long
    assert torch.allclose(emb.norm(dim=1), torch.ones(11), atol=1e-5)
    # N_v / (N_t + N_v) = 0.6 of 11 → round(6.6) = 7 virtual examples, placed last.
    assert m.is_virtual(labels).tolist() == [False] * 4 + [True] * 7


@pytest.mark.parametrize(
    "name, params, fragment",
    [
        ("mirage", {"noise_sigma": 0.1}, "'noise_sigma'"),
        ("mirage", {"virtual_ration": 1.0}, "did you mean 'virtual_ratio'"),
        ("mirage", {"virtual_ratio": 11.0}, "'virtual_ratio' = 11 is outside"),
        ("mirage", {"generated_ratio": -0.1}, "'generated_ratio'"),
        ("mirage", {"hidden": 2.5}, "'hidden' must be an integer"),
        ("none", {"virtual_ratio": 1.0}, "'virtual_ratio'"),
        ("mirrage", {}, "did you mean 'mirage'"),
        ("mirage", [("hidden", 3)], "must be a mapping"),
    ],
)
def test_bad_configuration_raises_one_line_config_error(name, params, fragment):
    with pytest.raises(ConfigError) as info:
        build_generation(name, params, 5, FEAT, DIM, "cpu")
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_class_labels_must_match_num_classes():
    with pytest.raises(ValueError, match="distinct"):
        build_generation("mirage", {}, 3, FEAT, DIM, class_labels=torch.tensor([1, 1, 2]))
    with pytest.raises(ValueError, match="distinct"):
        build_generation("mirage", {}, 4, FEAT, DIM, class_labels=torch.tensor([1, 2, 3]))


# ----- labels ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "class_labels",
    [None, torch.tensor([7, 3, 10**12, 0, 99_999]), torch.tensor([-5, -1, 4, 2, 60])],
)
def test_virtual_labels_never_collide_with_real_labels(class_labels):
    m = mirage(num_classes=5, class_labels=class_labels, virtual_ratio=3.0)
    real = m.class_labels
    assert m.virtual_labels.numel() == 15
    assert not torch.isin(m.virtual_labels, real).any()
    assert m.virtual_labels.unique().numel() == 15
    assert m.is_virtual(m.virtual_labels).all() and not m.is_virtual(real).any()
    _, embed = embed_head()
    _, labels = m.generate(embed, 200, rng())
    virtual = m.is_virtual(labels)
    assert virtual.any() and (~virtual).any()
    assert torch.isin(labels[~virtual], real).all()
    assert not torch.isin(labels[virtual], real).any()
    assert torch.isin(labels[virtual], m.virtual_labels).all()
    # Rows round-trip: real labels map to their sorted position, virtual ones after N_t.
    rows = m.label_rows(labels)
    assert torch.equal(m.row_labels(rows), labels)
    assert torch.equal(rows[~virtual], torch.searchsorted(real, labels[~virtual]))
    assert (rows[virtual] >= 5).all()


def test_non_negative_labels_get_minus_one_minus_v():
    m = mirage(num_classes=4, class_labels=torch.tensor([100, 200, 300, 400]), virtual_ratio=0.5)
    assert m.virtual_labels.tolist() == [-1, -2]
    assert m.label_rows(torch.tensor([300, -2, 100, -1])).tolist() == [2, 5, 0, 4]


def test_unknown_labels_are_rejected():
    m = mirage(num_classes=3, class_labels=torch.tensor([10, 20, 30]), virtual_ratio=1.0)
    with pytest.raises(ValueError, match="neither"):
        m.label_rows(torch.tensor([10, 25]))
    with pytest.raises(ValueError, match="neither"):
        m.label_rows(torch.tensor([-4]))  # only −1..−3 are virtual labels


def test_labels_from_restricts_training_classes_to_the_batch():
    m = mirage(num_classes=50, class_labels=torch.arange(1000, 1050), virtual_ratio=1.0, samples_per_class=4)
    _, embed = embed_head()
    batch = torch.tensor([1003, 1003, 1041, 1041])
    _, labels = m.generate(embed, 40, rng(), labels_from=batch)
    train = labels[~m.is_virtual(labels)]
    assert train.numel() == 20 and set(train.tolist()) <= {1003, 1041}
    # samples_per_class groups: consecutive runs of 4 identical labels.
    assert torch.equal(train.view(-1, 4), train.view(-1, 4)[:, :1].expand(-1, 4))
    with pytest.raises(ValueError):
        m.generate(embed, 4, rng(), labels_from=torch.tensor([-1]))


def test_virtual_share_controls_the_split():
    _, embed = embed_head()
    only_virtual = mirage(virtual_ratio=1.0, virtual_share=1.0)
    _, labels = only_virtual.generate(embed, 9, rng())
    assert only_virtual.is_virtual(labels).all()
    only_train = mirage(virtual_ratio=1.0, virtual_share=0.0)
    _, labels = only_train.generate(embed, 9, rng())
    assert not only_train.is_virtual(labels).any()


# ----- edge cases and the no-op ----------------------------------------------------------------


def test_virtual_ratio_zero_has_no_virtual_classes():
    m = mirage(num_classes=5, virtual_ratio=0.0, virtual_share=0.7)
    assert m.num_virtual == 0 and m.prototypes.shape[0] == 5 and m.D.class_head.out_features == 5
    _, embed = embed_head()
    emb, labels = m.generate(embed, 8, rng())
    assert emb.shape == (8, DIM) and not m.is_virtual(labels).any()
    assert m.buffer_area_share() == 0.0
    features = torch.randn(4, FEAT)
    # Without virtual classes the generator loss is the reconstruction alone.
    assert torch.allclose(m.generator_loss(features, embed, rng()),
                          m.recon_weight * m.reconstruction_loss(features, embed))
    d = m.discriminator_loss(embed(features), torch.tensor([0, 1, 2, 3]), emb, labels)
    assert torch.isfinite(d)


def test_generated_ratio_zero_generates_nothing():
    m = mirage(generated_ratio=0.0)
    _, embed = embed_head()
    assert m.num_generated(40) == 0
    emb, labels = m.generate(embed, m.num_generated(40), rng())
    assert emb.shape == (0, DIM) and labels.shape == (0,)
    features = torch.randn(4, FEAT)
    g = m.generator_loss(features, embed, rng())
    assert torch.allclose(g, m.reconstruction_loss(features, embed))
    d = m.discriminator_loss(embed(features), torch.tensor([0, 1, 2, 3]), emb, labels)
    assert torch.isfinite(d)


def test_num_generated_rounds_half_up():
    assert mirage(generated_ratio=0.5).num_generated(5) == 3
    assert mirage(generated_ratio=4.0).num_generated(40) == 160
    assert mirage(num_classes=5, virtual_ratio=0.5).num_virtual == 3  # 2.5 → 3


def test_none_is_a_no_op():
    gen = build_generation("none", None, 5, FEAT, DIM, "cpu")
    assert isinstance(gen, NoGeneration) and not gen.enabled
    assert list(gen.parameters()) == []
    head, embed = embed_head()
    before = snapshot(head.parameters())
    assert gen.num_generated(40) == 0
    emb, labels = gen.generate(embed, 10, rng())
    assert emb.shape == (0, DIM) and labels.shape == (0,)
    features = torch.randn(4, FEAT)
    assert float(gen.generator_loss(features, embed)) == 0.0
    assert float(gen.discriminator_loss(embed(features), torch.arange(4), emb, labels)) == 0.0
    assert gen.build_optimizers() == (None, None)
    assert all(not group for group in gen.parameter_groups().values())
    assert not gen.is_virtual(torch.tensor([-1, 0, 3])).any()
    assert math.isnan(gen.buffer_area_share())
    assert not any(changed(head.parameters(), before))


# ----- determinism ------------------------------------------------------------------------------


def test_seeded_generation_is_deterministic():
    m = mirage(noise_std=0.5)
    _, embed = embed_head()
    a = m.generate(embed, 16, rng(3))
    b = m.generate(embed, 16, rng(3))
    c = m.generate(embed, 16, rng(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_noise_moves_samples_and_zero_noise_does_not():
    _, embed = embed_head()
    quiet = mirage(num_classes=1, virtual_ratio=0.0, noise_std=0.0)
    emb, _ = quiet.generate(embed, 4, rng())
    assert torch.allclose(emb, emb[:1].expand(4, -1))
    expected = embed(quiet.G(F.normalize(quiet.prototypes, dim=1)))
    assert torch.allclose(emb[:1], expected, atol=1e-6)
    noisy = mirage(num_classes=1, virtual_ratio=0.0, noise_std=1.0)
    emb, _ = noisy.generate(embed, 4, rng())
    assert not torch.allclose(emb, emb[:1].expand(4, -1))


def test_noise_is_relative_to_the_unit_prototype():
    # The prototype is normalised before the noise is added, so its norm does not change samples.
    m = mirage(noise_std=0.5)
    _, embed = embed_head()
    before, labels = m.generate(embed, 12, rng(5))
    with torch.no_grad():
        m.prototypes.mul_(10.0)
    after, labels_after = m.generate(embed, 12, rng(5))
    assert torch.equal(labels, labels_after)
    assert torch.allclose(before, after, atol=1e-5)


# ----- losses against hand computations ---------------------------------------------------------


@torch.no_grad()
def test_reconstruction_loss_is_elastic_net_per_example():
    m = mirage()
    _, embed = embed_head()
    features = torch.randn(5, FEAT)
    expected = 0.0
    for f in features:
        r = f - m.G(embed(f[None]))[0]
        expected += float(r.abs().sum() + (r * r).sum())
    assert float(m.reconstruction_loss(features, embed)) == pytest.approx(expected / 5, rel=1e-5)


def test_generator_loss_subtracts_the_adversarial_term():
    # One virtual class and no noise: every virtual sample is the same, so L_adv is known exactly.
    m = mirage(num_classes=4, virtual_ratio=0.25, noise_std=0.0, recon_weight=0.5, adv_weight=2.0)
    assert m.num_virtual == 1
    _, embed = embed_head()
    features = torch.randn(6, FEAT)
    x = embed(m.G(F.normalize(m.prototypes[4:5], dim=1)))
    logit, cls = m.D(x)
    adv = -torch.log(1 - torch.sigmoid(logit)) - torch.log_softmax(cls, dim=1)[:, 4]
    expected = 0.5 * m.reconstruction_loss(features, embed) - 2.0 * adv[0]
    assert torch.allclose(m.generator_loss(features, embed, rng(), n_virtual=3), expected, atol=1e-5)


@torch.no_grad()
def test_discriminator_loss_matches_two_head_cross_entropy():
    m = mirage(num_classes=3, class_labels=torch.tensor([5, 9, 11]), virtual_ratio=1.0)
    real, gen = F.normalize(torch.randn(4, DIM), dim=1), F.normalize(torch.randn(3, DIM), dim=1)
    real_y, gen_y = torch.tensor([9, 5, 11, 9]), torch.tensor([-1, 11, -3])
    real_rows, gen_rows = [1, 0, 2, 1], [3, 2, 5]
    expected = 0.0
    for x, row, is_real, count in [(x, r, True, 4) for x, r in zip(real, real_rows)] + \
                                  [(x, r, False, 3) for x, r in zip(gen, gen_rows)]:
        logit, cls = m.D(x[None])
        p = torch.sigmoid(logit[0])
        bce = -torch.log(p) if is_real else -torch.log(1 - p)
        expected += float(bce - torch.log_softmax(cls[0], 0)[row]) / count
    assert float(m.discriminator_loss(real, real_y, gen, gen_y)) == pytest.approx(expected, rel=1e-5)


# ----- gradients and optimiser separation -------------------------------------------------------


def test_metric_loss_on_generated_examples_trains_prototypes_and_model_not_g():
    m = mirage()
    head, embed = embed_head()
    emb, _ = m.generate(embed, 10, rng())
    emb.sum().backward()
    assert all(p.grad is None for p in m.G.parameters())
    assert m.prototypes.grad is not None and m.prototypes.grad.abs().sum() > 0
    assert head.weight.grad is not None
    m.zero_grad()
    emb, _ = m.generate(embed, 10, rng(), train_generator=True)
    emb.sum().backward()
    assert all(p.grad is not None for p in m.G.parameters())


def test_discriminator_loss_does_not_reach_generator_or_prototypes():
    m = mirage()
    head, embed = embed_head()
    features = torch.randn(5, FEAT, requires_grad=True)
    emb, labels = m.generate(embed, 10, rng(), train_generator=True)  # live graph into G
    m.discriminator_loss(embed(features), torch.arange(5), emb, labels).backward()
    assert all(p.grad is None for p in m.G.parameters())
    assert m.prototypes.grad is None and features.grad is None and head.weight.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.D.parameters())


def test_generator_loss_does_not_reach_discriminator():
    m = mirage()
    _, embed = embed_head()
    m.generator_loss(torch.randn(5, FEAT), embed, rng()).backward()
    assert all(p.grad is None for p in m.D.parameters())
    assert all(p.grad is not None for p in m.G.parameters())
    grad = m.prototypes.grad
    # Only the virtual prototypes take part in the adversarial term; reconstruction skips them.
    assert grad[: m.num_train].abs().sum() == 0 and grad[m.num_train:].abs().sum() > 0


def test_parameter_groups_partition_the_module():
    m = mirage()
    groups = m.parameter_groups()
    ids = [id(p) for group in groups.values() for p in group]
    assert len(ids) == len(set(ids)) == len(list(m.parameters()))
    assert groups["prototypes"] == [m.prototypes]


def test_each_optimizer_steps_only_its_own_parameters():
    torch.manual_seed(0)
    model = build_model(backbone="small_cnn", dim=16, in_channels=1)
    m = build_generation("mirage", {"hidden": 32, "lr": 1e-2}, 5, model.feature_dim, 16, "cpu",
                         class_labels=torch.tensor([3, 17, 42, 1000, 10**9]))
    labels = torch.tensor([3, 17, 42, 1000, 10**9]).repeat(2)
    x = torch.rand(10, 1, 28, 28)
    gen_opt, disc_opt = m.build_optimizers()
    assert gen_opt.param_groups[0]["lr"] == 1e-2
    model_params, g_params, d_params = list(model.parameters()), list(m.G.parameters()), list(m.D.parameters())
    before = {name: snapshot(ps) for name, ps in
              [("model", model_params), ("G", g_params), ("D", d_params), ("P", [m.prototypes])]}

    features = model.features(x)
    gen_opt.zero_grad()
    model.zero_grad()
    m.generator_loss(features, model.embed, rng()).backward()
    assert any(p.grad is not None for p in model_params)  # gradients reach the head ...
    gen_opt.step()                                         # ... but its optimiser is not ours
    assert all(changed(g_params, before["G"]))
    proto_moved = (m.prototypes.detach() != before["P"][0]).any(dim=1)
    assert proto_moved[m.num_train:].any() and not proto_moved[: m.num_train].any()
    assert not any(changed(d_params, before["D"]))
    assert not any(changed(model_params, before["model"]))

    after_gen = {"G": snapshot(g_params), "P": snapshot([m.prototypes])}
    emb, gen_labels = m.generate(model.embed, m.num_generated(10), rng(1), labels_from=labels)
    disc_opt.zero_grad()
    m.discriminator_loss(model.embed(features), labels, emb, gen_labels).backward()
    disc_opt.step()
    assert all(changed(d_params, before["D"]))
    assert not any(changed(g_params, after_gen["G"]))
    assert not any(changed([m.prototypes], after_gen["P"]))
    assert not any(changed(model_params, before["model"]))


# ----- buffer-area statistic --------------------------------------------------------------------


def buffer_share_oracle(prototypes, num_train):
    p = F.normalize(prototypes.detach(), dim=1)
    hits = 0
    for i in range(num_train):
        best, best_j = -math.inf, None
        for j in range(p.shape[0]):
            if j != i:
                s = float(p[i] @ p[j])
                if s > best:
                    best, best_j = s, j
        hits += best_j >= num_train
    return hits / num_train


@pytest.mark.parametrize("seed, num_classes, ratio", [(0, 20, 1.5), (1, 7, 0.3), (2, 30, 4.0)])
def test_buffer_area_share_matches_loop_oracle(seed, num_classes, ratio):
    m = mirage(num_classes=num_classes, dim=8, virtual_ratio=ratio, seed=seed)
    expected = buffer_share_oracle(m.prototypes, m.num_train)
    assert m.buffer_area_share() == pytest.approx(expected)


def _unit(degrees):
    rad = torch.tensor(degrees, dtype=torch.float32) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=1)


def test_buffer_area_share_on_hand_built_prototypes():
    m = mirage(num_classes=3, dim=2, virtual_ratio=1.0)
    with torch.no_grad():
        # Virtual prototypes exactly between the training ones: every nearest neighbour is virtual.
        m.prototypes.copy_(_unit([0.0, 120.0, 240.0, 60.0, 180.0, 300.0]))
        assert m.buffer_area_share() == 1.0
        # t0 (0°) and t1 (20°) are each other's nearest; t2 (180°) has v (190°) nearest → 1/3.
        # Norms differ on purpose: the statistic is on cosine similarity.
        norms = torch.tensor([[1.0], [3.0], [0.5], [2.0], [1.0], [7.0]])
        m.prototypes.copy_(_unit([0.0, 20.0, 180.0, 100.0, 190.0, 270.0]) * norms)
        assert m.buffer_area_share() == pytest.approx(1 / 3)
        # All virtual prototypes far away: 0.
        m.prototypes.copy_(_unit([0.0, 10.0, 20.0, 180.0, 185.0, 190.0]))
        assert m.buffer_area_share() == 0.0
