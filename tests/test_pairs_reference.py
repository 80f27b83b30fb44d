"""Miners and losses against per-anchor reference code and pytorch-metric-learning.

The reference code (tests/reference_pairs.py) is written from the papers' formulas with a loop over
anchors; pytorch-metric-learning (pml) is used where it implements the method, with its reducer
switched off so that per-pair / per-anchor values are compared and then aggregated by dmltune's rule.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dmltune.pairs import LOSSES, MINERS, get_loss, get_miner
from dmltune.registry import ConfigError
from reference_pairs import reference_loss, reference_mine

pml = pytest.importorskip("pytorch_metric_learning")
from pytorch_metric_learning import losses as pml_losses  # noqa: E402
from pytorch_metric_learning import miners as pml_miners  # noqa: E402
from pytorch_metric_learning.distances import CosineSimilarity  # noqa: E402
from pytorch_metric_learning.reducers import DoNothingReducer  # noqa: E402

MINER_CASES = {
    "none": {},
    "ms": {"epsilon": 0.1},
    "asms": {"gamma_pos": 0.15, "gamma_neg": 0.02},
    "at_asms": {"gamma_pos": 0.1, "gamma_neg": 0.01, "kappa": 0.5},
    "at_asms_code": {"gamma_pos": 0.1, "gamma_neg": 0.01, "kappa": 0.5, "count_neg_with": "gamma_pos"},
    "dsml": {"tau_p": 0.6, "tau_n": 0.0, "tau_b": 0.2},
    # negative tolerances tighten the screening (DDTAS §III-D.1)
    "ms-tight": {"epsilon": -0.05},
    "asms-tight": {"gamma_pos": -0.05, "gamma_neg": -0.03},
    "asms-mixed": {"gamma_pos": 0.15, "gamma_neg": -0.1},
    "at_asms-tight": {"gamma_pos": -0.05, "gamma_neg": -0.03, "kappa": 0.5},
    "at_asms-tight-directional": {"gamma_pos": -0.05, "gamma_neg": -0.03, "kappa": 2.0,
                                  "negative_update": "directional"},
    "at_asms-mixed-directional": {"gamma_pos": 0.1, "gamma_neg": -0.05, "kappa": 0.5,
                                  "negative_update": "directional"},
    "dsml-tight": {"tau_p": 0.6, "tau_n": -0.5, "tau_b": -0.1},
}
LOSS_CASES = {
    "contrastive": {},
    "triplet": {"margin": 0.2},
    "lifted": {"lam": 1.0},
    "binomial": {},
    "ms": {},
    "soft_contrastive": {},
    "soft_contrastive_code": {"scaling": "authors_code"},
    "triplet*": {"dynamic": True},
    "triplet*-tp": {"dynamic": True, "tp_form": "reduces_to_tp"},
    "triplet*-margin": {"dynamic": True, "margin": 0.5},
    "lifted*": {"dynamic": True},
    "binomial*": {"dynamic": True},
    "ms*": {"dynamic": True},
}


def loss_name(case):
    return case.split("-")[0].replace("*", "").replace("_code", "")


def miner_name(case):
    return case.split("-")[0].replace("_code", "")


def batch(b, k, d=16, dtype=torch.float64, spread=0.6, seed=0):
    """L2-normalised embeddings of b // k classes × k (class centres plus noise) and labels."""
    g = torch.Generator().manual_seed(seed)
    classes = b // k
    centres = torch.randn(classes, d, generator=g, dtype=dtype)
    labels = torch.arange(classes).repeat_interleave(k)
    labels = labels[torch.randperm(b, generator=g)]
    emb = centres[labels] + spread * torch.randn(b, d, generator=g, dtype=dtype)
    return F.normalize(emb, dim=1), labels


SHAPES = [(8, 2), (24, 4), (40, 8), (60, 3), (96, 6)]


@pytest.mark.parametrize("case", list(MINER_CASES))
@pytest.mark.parametrize("b, k", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_miners_match_reference(case, b, k, dtype):
    emb, labels = batch(b, k, dtype=dtype, seed=b + k)
    sim = emb @ emb.T
    params = MINER_CASES[case]
    mined = get_miner(miner_name(case), **params)(sim, labels)
    pos, neg, extra = reference_mine(miner_name(case), sim, labels, **params)
    assert torch.equal(mined.pos, pos)
    assert torch.equal(mined.neg, neg)
    stats = mined.stats
    assert stats["pos_after"] == pos.sum().item() and stats["neg_after"] == neg.sum().item()
    assert stats["pos_before"] == b * (k - 1) and stats["neg_before"] == b * (b - k)
    for key, value in extra.items():
        assert stats[key] == pytest.approx(value, rel=1e-5)


@pytest.mark.slow
def test_miners_and_a_loss_at_b500():
    emb, labels = batch(500, 5, d=32, dtype=torch.float32, seed=5)
    sim = emb @ emb.T
    mined = get_miner("asms")(sim, labels)
    pos, neg, _ = reference_mine("asms", sim, labels)
    assert torch.equal(mined.pos, pos) and torch.equal(mined.neg, neg)
    for name in ("triplet", "ms"):
        got = get_loss(name)(sim, labels, mined)
        expected = reference_loss(name, sim.double(), pos, neg)
        assert got.item() == pytest.approx(expected.item(), rel=1e-4)


@pytest.mark.parametrize("case", list(LOSS_CASES))
@pytest.mark.parametrize("b, k", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_losses_match_reference(case, b, k, dtype):
    emb, labels = batch(b, k, dtype=dtype, seed=3 * b + k)
    emb.requires_grad_(True)
    sim = emb @ emb.T
    mined = get_miner("ms", epsilon=0.1)(sim, labels)
    params = LOSS_CASES[case]
    got = get_loss(loss_name(case), **params)(sim, labels, mined, progress=0.7)
    emb64 = emb.detach().double().requires_grad_(True)
    expected = reference_loss(loss_name(case), emb64 @ emb64.T, mined.pos, mined.neg, progress=0.7, **params)
    tol = dict(rel=1e-9, abs=1e-12) if dtype == torch.float64 else dict(rel=2e-5, abs=1e-6)
    assert got.item() == pytest.approx(expected.item(), **tol)
    (g_got,) = torch.autograd.grad(got, emb)
    (g_exp,) = torch.autograd.grad(expected, emb64)
    atol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(g_got.double(), g_exp, rtol=1e-4, atol=atol)


@pytest.mark.parametrize("case", ["triplet*-tp", "lifted*", "binomial*", "ms*"])
def test_dynamic_terms_vanish_at_zero_progress_and_are_required(case):
    emb, labels = batch(24, 4, seed=1)
    sim = emb @ emb.T
    mined = get_miner("none")(sim, labels)
    name = loss_name(case)
    dynamic = get_loss(name, **{**LOSS_CASES[case], "dynamic": True})
    static = get_loss(name)
    assert dynamic(sim, labels, mined, progress=0.0).item() == pytest.approx(static(sim, labels, mined).item(), rel=1e-12)
    assert dynamic(sim, labels, mined, progress=1.0).item() != pytest.approx(static(sim, labels, mined).item(), rel=1e-3)
    with pytest.raises(ValueError, match="needs progress"):
        dynamic(sim, labels, mined)
    with pytest.raises(ValueError, match="progress must be in"):
        dynamic(sim, labels, mined, progress=1.5)


def test_tp_star_paper_form_is_dsml_eq_10():
    """DSML eq. 10 by hand on one anchor: [mean_P(w_p − S) + mean_N(S + w_n) + λ]_+ with
    w_p = 2r(τ_p − S)², w_n = 2r(S − τ_n)²; and its hinge sits outside the means."""
    sim = torch.tensor([[1.0, 0.6, 0.2, 0.5],
                        [0.6, 1.0, 0.3, -0.1],
                        [0.2, 0.3, 1.0, 0.7],
                        [0.5, -0.1, 0.7, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    r, lam, tau_p, tau_n = 0.5, 0.5, 0.9, 0.1
    loss = get_loss("triplet", dynamic=True, margin=lam)  # tp_form: paper is the default

    def anchor(s_pos, s_negs):
        w_p = 2 * r * (tau_p - s_pos) ** 2
        neg = sum(s + 2 * r * (s - tau_n) ** 2 for s in s_negs) / len(s_negs)
        return max(0.0, (w_p - s_pos) + neg + lam)

    expected = (anchor(0.6, [0.2, 0.5]) + anchor(0.6, [0.3, -0.1]) + anchor(0.7, [0.2, 0.3])
                + anchor(0.7, [0.5, -0.1])) / 4
    assert loss(sim, labels, progress=r).item() == pytest.approx(expected, rel=1e-12)
    per_triplet = get_loss("triplet", dynamic=True, margin=lam, tp_form="reduces_to_tp")(sim, labels, progress=r)
    assert per_triplet.item() != pytest.approx(expected, rel=1e-3)
    # at r = 0 only the per-triplet form is the plain triplet loss
    plain = get_loss("triplet", margin=lam)(sim, labels)
    assert get_loss("triplet", dynamic=True, margin=lam, tp_form="reduces_to_tp")(sim, labels, progress=0.0).item() == pytest.approx(plain.item())
    means = sum(max(0.0, -sp + sum(sn) / 2 + lam) for sp, sn in ((0.6, [0.2, 0.5]), (0.6, [0.3, -0.1]),
                                                                 (0.7, [0.2, 0.3]), (0.7, [0.5, -0.1]))) / 4
    assert loss(sim, labels, progress=0.0).item() == pytest.approx(means, rel=1e-12)


# --- pytorch-metric-learning as the oracle -------------------------------------------------------


def anchor_pairs(mask):
    a, other = mask.nonzero(as_tuple=True)
    return a, other


def aggregate_per_anchor(pair_anchor, pair_values, b, valid):
    """Mean of pair values per anchor (the dmltune per-anchor mean), zero for anchors without pairs."""
    sums = torch.zeros(b, dtype=pair_values.dtype).index_add_(0, pair_anchor, pair_values)
    counts = torch.zeros(b, dtype=pair_values.dtype).index_add_(0, pair_anchor, torch.ones_like(pair_values))
    return torch.where(valid, sums / counts.clamp_min(1), torch.zeros_like(sums))


@pytest.mark.parametrize("b, k", SHAPES + [(200, 4)])
@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.3])
def test_ms_miner_equals_pml(b, k, epsilon):
    emb, labels = batch(b, k, dtype=torch.float32, seed=b * 7 + k)
    mined = get_miner("ms", epsilon=epsilon)(emb @ emb.T, labels)
    a1, p, a2, n = pml_miners.MultiSimilarityMiner(epsilon=epsilon)(emb, labels)
    pos = torch.zeros(b, b, dtype=torch.bool)
    neg = torch.zeros(b, b, dtype=torch.bool)
    pos[a1, p] = True
    neg[a2, n] = True
    assert torch.equal(mined.pos, pos)
    assert torch.equal(mined.neg, neg)


def pml_values(part, n):
    """pml's unreduced values as a flat tensor; pml returns a plain 0 when there is nothing to score."""
    values = part["losses"]
    return values.flatten() if torch.is_tensor(values) else torch.zeros(n, dtype=torch.float64)


def _pml_setup(b, k, dtype=torch.float64, seed=0):
    # pml scores nothing when it gets at most one pair of each kind; draw until there is more.
    for attempt in range(100):
        emb, labels = batch(b, k, dtype=dtype, seed=seed + 1000 * attempt, spread=1.0)
        mined = get_miner("ms", epsilon=0.1)(emb @ emb.T, labels)
        if mined.pos.sum() > 1 and mined.neg.sum() > 1:
            break
    valid = mined.pos.any(1) & mined.neg.any(1)
    a1, p = anchor_pairs(mined.pos)
    a2, n = anchor_pairs(mined.neg)
    return emb, labels, mined, valid, (a1, p, a2, n)


@pytest.mark.parametrize("b, k", SHAPES)
def test_contrastive_equals_pml(b, k):
    emb, labels, mined, valid, (a1, p, a2, n) = _pml_setup(b, k, seed=b)
    oracle = pml_losses.ContrastiveLoss(pos_margin=1.0, neg_margin=0.5, distance=CosineSimilarity(),
                                        reducer=DoNothingReducer())
    out = oracle(emb, labels, indices_tuple=(a1, p, a2, n))
    pos_part = aggregate_per_anchor(a1, pml_values(out["pos_loss"], len(a1)), b, valid)
    neg_part = aggregate_per_anchor(a2, pml_values(out["neg_loss"], len(a2)), b, valid)
    expected = (pos_part + neg_part).sum() / b
    got = get_loss("contrastive")(emb @ emb.T, labels, mined)
    assert got.item() == pytest.approx(expected.item(), rel=1e-10)


@pytest.mark.parametrize("b, k", SHAPES)
@pytest.mark.parametrize("lam", [0.5, 0.7])
def test_ms_loss_equals_pml(b, k, lam):
    emb, labels, mined, valid, tuples = _pml_setup(b, k, seed=b + 1)
    oracle = pml_losses.MultiSimilarityLoss(alpha=2, beta=50, base=lam, reducer=DoNothingReducer())
    per_anchor = pml_values(oracle(emb, labels, indices_tuple=tuples)["loss"], b)
    expected = torch.where(valid, per_anchor, torch.zeros_like(per_anchor)).sum() / b
    got = get_loss("ms", alpha=2, beta=50, lam=lam)(emb @ emb.T, labels, mined)
    assert got.item() == pytest.approx(expected.item(), rel=1e-10)


@pytest.mark.parametrize("b, k", SHAPES)
def test_lifted_equals_pml_generalised_lifted(b, k):
    emb, labels, mined, valid, tuples = _pml_setup(b, k, seed=b + 2)
    oracle = pml_losses.GeneralizedLiftedStructureLoss(neg_margin=0, pos_margin=1.0, distance=CosineSimilarity(),
                                                       reducer=DoNothingReducer())
    per_anchor = pml_values(oracle(emb, labels, indices_tuple=tuples)["loss"], b)
    expected = torch.where(valid, per_anchor, torch.zeros_like(per_anchor)).sum() / b
    got = get_loss("lifted", lam=1.0)(emb @ emb.T, labels, mined)
    assert got.item() == pytest.approx(expected.item(), rel=1e-10)


@pytest.mark.parametrize("b, k", SHAPES)
def test_triplet_equals_pml_on_mined_triplets(b, k):
    emb, labels, mined, valid, _ = _pml_setup(b, k, seed=b + 3)
    # every (anchor, mined positive, mined negative) triplet
    trip = (mined.pos[:, :, None] & mined.neg[:, None, :]).nonzero(as_tuple=True)
    oracle = pml_losses.TripletMarginLoss(margin=0.1, distance=CosineSimilarity(), reducer=DoNothingReducer())
    per_triplet = pml_values(oracle(emb, labels, indices_tuple=trip)["loss"], len(trip[0]))
    expected = aggregate_per_anchor(trip[0], per_triplet, b, valid).sum() / b
    got = get_loss("triplet", margin=0.1)(emb @ emb.T, labels, mined)
    assert got.item() == pytest.approx(expected.item(), rel=1e-10, abs=1e-14)


# --- gradients --------------------------------------------------------------------------------------


GRAD_CASES = ["contrastive", "triplet", "lifted", "binomial", "ms", "soft_contrastive",
              "triplet*", "lifted*", "binomial*", "ms*"]


@pytest.mark.parametrize("case", GRAD_CASES)
def test_gradcheck_embeddings(case):
    emb, labels = batch(12, 3, d=5, seed=11)
    emb = emb.detach().requires_grad_(True)
    params = {"dynamic": True} if case.endswith("*") else {}
    if loss_name(case) == "contrastive":
        params.update(pos_margin=0.95, neg_margin=0.05)  # keep away from the hinge kinks
    loss_fn = get_loss(loss_name(case), **params)
    mined = get_miner("none")(emb @ emb.T, labels)

    def f(e):
        return loss_fn(e @ e.T, labels, mined, progress=0.4)

    assert torch.autograd.gradcheck(f, (emb,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name, dynamic", [
    ("lifted", False), ("binomial", False), ("ms", False), ("soft_contrastive", False),
    ("lifted", True), ("binomial", True), ("ms", True),
])
def test_gradcheck_lambda_tensor(name, dynamic):
    emb, labels = batch(12, 3, d=5, seed=12)
    sim = (emb @ emb.T).detach()
    mined = get_miner("asms")(sim, labels)
    lam = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    params = {"dynamic": True} if dynamic else {}

    def f(lam_):
        return get_loss(name, lam=lam_, **params)(sim, labels, mined, progress=0.3)

    assert torch.autograd.gradcheck(f, (lam,), eps=1e-6, atol=1e-7)
    # per-call λ reaches the same value and gradient as λ given at construction
    loss_fn = get_loss(name, **params)
    assert loss_fn(sim, labels, mined, progress=0.3, lam=lam).item() == pytest.approx(f(lam).item())
    assert torch.autograd.grad(f(lam), lam)[0].abs().item() > 0 or name == "lifted"


def test_lambda_rejected_by_losses_without_one():
    emb, labels = batch(8, 2)
    with pytest.raises(ValueError, match="has no threshold"):
        get_loss("contrastive")(emb @ emb.T, labels, lam=0.5)


# --- AT-ASMS adaptation -----------------------------------------------------------------------------


def test_at_asms_adapts_only_when_xi_exceeds_one():
    # Spread-out classes: many negatives are harder than the hardest positive → ξ > 1.
    emb, labels = batch(40, 4, spread=3.0, seed=4)
    stats = get_miner("at_asms", gamma_pos=0.1, gamma_neg=0.01, kappa=0.5)(emb @ emb.T, labels).stats
    assert stats["xi"] > 1
    sig = 1 / (1 + math.exp(-stats["xi"]))
    assert stats["gamma_pos"] == pytest.approx(0.1 * (1 + 0.5 * sig))
    assert stats["gamma_neg"] == pytest.approx(0.01 * (1 - 0.5 * sig))
    # Tight classes: no negative comes close to a positive → ξ ≤ 1 and γ unchanged.
    emb, labels = batch(40, 4, spread=0.05, seed=4)
    stats = get_miner("at_asms", gamma_pos=0.1, gamma_neg=0.01)(emb @ emb.T, labels).stats
    assert stats["xi"] <= 1
    assert stats["gamma_pos"] == pytest.approx(0.1) and stats["gamma_neg"] == pytest.approx(0.01)


@pytest.mark.parametrize("rule", ["literal", "directional"])
def test_at_asms_with_negative_tolerances(rule):
    """A negative γ tightens the screening; AT-ASMS's literal update (eq. 12–13) scales it by
    (1 ± κσ), so a negative γ_neg moves toward 0 (looser) and a negative γ_pos away from 0 (tighter);
    the directional rule widens positives and tightens negatives whatever the sign."""
    emb, labels = batch(40, 4, spread=3.0, seed=4)
    sim = emb @ emb.T
    gp, gn = -0.05, -0.02
    mined = get_miner("at_asms", gamma_pos=gp, gamma_neg=gn, kappa=0.5, negative_update=rule)(sim, labels)
    stats = mined.stats
    assert stats["xi"] > 1
    step = 0.5 * (1 / (1 + math.exp(-stats["xi"])))
    if rule == "literal":
        assert stats["gamma_pos"] == pytest.approx(gp * (1 + step)) and stats["gamma_pos"] < gp
        assert stats["gamma_neg"] == pytest.approx(gn * (1 - step)) and gn < stats["gamma_neg"] < 0
    else:
        assert stats["gamma_pos"] == pytest.approx(gp + abs(gp) * step) and stats["gamma_pos"] > gp
        assert stats["gamma_neg"] == pytest.approx(gn - abs(gn) * step) and stats["gamma_neg"] < gn
    pos, neg, extra = reference_mine("at_asms", sim, labels, gamma_pos=gp, gamma_neg=gn, kappa=0.5,
                                     negative_update=rule)
    assert torch.equal(mined.pos, pos) and torch.equal(mined.neg, neg)
    # with γ ≥ 0 the two rules are the same
    same = [get_miner("at_asms", gamma_pos=0.1, gamma_neg=0.01, negative_update=r)(sim, labels) for r in ("literal", "directional")]
    assert torch.equal(same[0].pos, same[1].pos) and same[0].stats == pytest.approx(same[1].stats, rel=1e-12)


def test_negative_tolerances_keep_fewer_pairs_than_zero():
    emb, labels = batch(48, 4, spread=1.0, seed=2)
    sim = emb @ emb.T
    zero = get_miner("asms", gamma_pos=0.0, gamma_neg=0.0)(sim, labels)
    tight = get_miner("asms", gamma_pos=-0.1, gamma_neg=-0.1)(sim, labels)
    assert (tight.pos & ~zero.pos).sum() == 0 and (tight.neg & ~zero.neg).sum() == 0
    assert tight.pos.sum() < zero.pos.sum() and tight.neg.sum() < zero.neg.sum()
    nothing = get_miner("asms", gamma_pos=-2.0, gamma_neg=-2.0)(sim, labels)
    assert not nothing.pos.any() and not nothing.neg.any()


def test_at_asms_counting_options_differ():
    emb, labels = batch(40, 4, spread=1.0, seed=6)
    sim = emb @ emb.T
    paper = get_miner("at_asms", gamma_pos=0.5, gamma_neg=0.0)(sim, labels).stats
    code = get_miner("at_asms", gamma_pos=0.5, gamma_neg=0.0, count_neg_with="gamma_pos")(sim, labels).stats
    assert code["xi"] > paper["xi"]
    for stats, params in ((paper, {}), (code, {"count_neg_with": "gamma_pos"})):
        *_, extra = reference_mine("at_asms", sim, labels, gamma_pos=0.5, gamma_neg=0.0, **params)
        assert stats["xi"] == pytest.approx(extra["xi"])


def test_ms_miner_is_asms_with_equal_tolerances():
    emb, labels = batch(48, 4, seed=9)
    sim = emb @ emb.T
    a = get_miner("ms", epsilon=0.07)(sim, labels)
    b = get_miner("asms", gamma_pos=0.07, gamma_neg=0.07)(sim, labels)
    assert torch.equal(a.pos, b.pos) and torch.equal(a.neg, b.neg)


# --- edge cases -------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_case", list(LOSS_CASES))
@pytest.mark.parametrize("miner_case", list(MINER_CASES))
def test_anchor_without_positive_contributes_nothing(loss_case, miner_case):
    emb, labels = batch(12, 4, seed=2)  # 3 classes × 4, plus a singleton class below
    emb = torch.cat([emb, F.normalize(torch.randn(1, emb.shape[1], dtype=emb.dtype), dim=1)])
    labels = torch.cat([labels, torch.tensor([99])])
    emb = emb.detach().requires_grad_(True)
    sim = emb @ emb.T
    mined = get_miner(miner_name(miner_case), **MINER_CASES[miner_case])(sim, labels)
    assert not mined.pos[12].any()
    loss = get_loss(loss_name(loss_case), **LOSS_CASES[loss_case])(sim, labels, mined, progress=0.5)
    expected = reference_loss(loss_name(loss_case), sim.double(), mined.pos, mined.neg, progress=0.5,
                              **LOSS_CASES[loss_case])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-9, abs=1e-12)
    (grad,) = torch.autograd.grad(loss, emb)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("labels", [
    torch.arange(6),                        # K = 1: no positive pair anywhere
    torch.zeros(6, dtype=torch.long),       # a single class: no negative pair
], ids=["K=1", "one-class"])
def test_nothing_to_learn_gives_an_attached_zero(name, labels):
    emb = F.normalize(torch.randn(6, 4, dtype=torch.float64), dim=1).requires_grad_(True)
    for miner in MINERS:
        sim = emb @ emb.T
        mined = get_miner(miner)(sim, labels)
        loss = get_loss(name)(sim, labels, mined)
        assert loss.item() == 0.0
        assert loss.requires_grad and loss.grad_fn is not None
        (grad,) = torch.autograd.grad(loss, emb)
        assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("name", list(LOSSES))
def test_all_pairs_filtered_gives_an_attached_zero(name):
    # Perfectly separated classes: the hardest positive is far above the hardest negative, so a
    # zero-tolerance miner keeps nothing.
    labels = torch.arange(4).repeat_interleave(3)
    emb = F.one_hot(labels, 4).double().requires_grad_(True)
    sim = emb @ emb.T
    mined = get_miner("asms", gamma_pos=0.0, gamma_neg=0.0)(sim, labels)
    assert not mined.pos.any() and not mined.neg.any()
    loss = get_loss(name)(sim, labels, mined)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(emb.grad, torch.zeros_like(emb.grad))


@pytest.mark.parametrize("name", list(LOSSES))
def test_duplicate_embeddings_are_finite_and_match_reference(name):
    emb, labels = batch(16, 4, seed=8)
    emb = emb.detach().clone()
    emb[1] = emb[0]   # a duplicated positive (similarity exactly 1)
    emb[5] = emb[0]   # a duplicate from another class: an exact tie between classes
    emb.requires_grad_(True)
    sim = emb @ emb.T
    mined = get_miner("none")(sim, labels)
    loss = get_loss(name)(sim, labels, mined)
    expected = reference_loss(name, sim, mined.pos, mined.neg)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-9)
    (grad,) = torch.autograd.grad(loss, emb)
    assert torch.isfinite(grad).all()


def test_mined_none_means_all_pairs():
    emb, labels = batch(24, 4, seed=3)
    sim = emb @ emb.T
    for name in LOSSES:
        loss_fn = get_loss(name)
        assert loss_fn(sim, labels).item() == loss_fn(sim, labels, get_miner("none")(sim, labels)).item()


def test_bad_shapes_are_reported():
    emb, labels = batch(8, 2)
    with pytest.raises(ValueError, match="square"):
        get_miner("ms")(emb @ emb.T[:, :4], labels)
    with pytest.raises(ValueError, match="length B"):
        get_loss("ms")(emb @ emb.T, labels[:5])


# --- declared parameters ----------------------------------------------------------------------------


def test_components_and_defaults_follow_the_methods_table():
    assert set(MINERS) == {"none", "ms", "asms", "at_asms", "dsml"}
    assert set(LOSSES) == {"contrastive", "triplet", "lifted", "binomial", "ms", "soft_contrastive"}
    assert MINERS["ms"].defaults == {"epsilon": 0.1}
    assert MINERS["asms"].defaults == {"gamma_pos": 0.1, "gamma_neg": 0.01}
    assert MINERS["at_asms"].defaults == {"gamma_pos": 0.1, "gamma_neg": 0.01, "kappa": 0.5,
                                          "count_neg_with": "gamma_neg", "negative_update": "literal"}
    assert MINERS["dsml"].defaults == {"tau_p": 0.9, "tau_n": 0.1, "tau_b": 0.2}
    dyn = {"dynamic": False, "tau_p": 0.9, "tau_n": 0.1}
    assert LOSSES["contrastive"].defaults == {"pos_margin": 1.0, "neg_margin": 0.5}
    assert LOSSES["triplet"].defaults == {"margin": 0.1, **dyn, "tp_form": "paper"}
    assert LOSSES["lifted"].defaults == {"lam": 1.0, **dyn}
    assert LOSSES["binomial"].defaults == {"alpha": 2, "beta": 40, "lam": 0.5, **dyn}
    assert LOSSES["ms"].defaults == {"alpha": 2, "beta": 50, "lam": 0.5, **dyn}
    assert LOSSES["soft_contrastive"].defaults == {"lam": 0.7, "mu": 2, "nu": 40, "scaling": "paper"}


@pytest.mark.parametrize("build, fragment", [
    (lambda: get_miner("asm"), "valid choices: asms, at_asms, dsml, ms, none"),
    (lambda: get_loss("softcontrastive"), "did you mean 'soft_contrastive'"),
    (lambda: get_miner("asms", gamma=0.1), "valid parameters: gamma_pos, gamma_neg"),
    (lambda: get_miner("asms", gamma_pos="0.1"), "must be a number"),
    (lambda: get_miner("asms", gamma_pos=-2.1), "outside its valid range [-2, 2]"),
    (lambda: get_miner("ms", epsilon=2.5), "outside its valid range [-2, 2]"),
    (lambda: get_miner("at_asms", negative_update="flip"), "one of 'literal', 'directional'"),
    (lambda: get_miner("at_asms", count_neg_with="gamma"), "one of 'gamma_neg', 'gamma_pos'"),
    (lambda: get_loss("soft_contrastive", lam=1.5), "outside its valid range [-1, 1]"),
    (lambda: get_loss("soft_contrastive", dynamic=True), "has no parameter 'dynamic'"),
    (lambda: get_loss("ms", dynamic="yes"), "must be true or false"),
])
def test_bad_parameters_raise_config_errors(build, fragment):
    with pytest.raises(ConfigError) as info:
        build()
    assert fragment in str(info.value)


# --- hand-made similarity matrices: exact boundaries ---------------------------------------------


def two_pairs(s02, s03, s12, s13, pos=0.5):
    """Labels [0, 0, 1, 1]; positives at `pos`, the four cross-class similarities as given."""
    sim = torch.tensor([
        [1.0, pos, s02, s03],
        [pos, 1.0, s12, s13],
        [s02, s12, 1.0, pos],
        [s03, s13, pos, 1.0],
    ], dtype=torch.float64)
    return sim, torch.tensor([0, 0, 1, 1])


@pytest.mark.parametrize("s03, xi, adapts", [(0.6, 1.5, True), (0.0, 1.0, False)])
def test_at_asms_threshold_on_xi_is_strictly_greater_than_one(s03, xi, adapts):
    sim, labels = two_pairs(0.6, s03, 0.6, 0.0)
    stats = get_miner("at_asms", gamma_pos=0.1, gamma_neg=0.0, kappa=0.5)(sim, labels).stats
    assert stats["xi"] == xi  # n_neg ordered negatives above the hardest positive / 4 positive pairs
    sig = 1 / (1 + math.exp(-xi))
    assert stats["gamma_pos"] == pytest.approx(0.1 * (1 + 0.5 * sig) if adapts else 0.1)


def test_tolerance_rules_are_strict_inequalities():
    # γ = 0.25 and similarities that are exact binary fractions: S − γ == max N and S + γ == min P exactly.
    sim, labels = two_pairs(0.25, 0.25, 0.25, 0.25, pos=0.5)
    mined = get_miner("asms", gamma_pos=0.25, gamma_neg=0.25)(sim, labels)
    assert not mined.pos.any() and not mined.neg.any()
    mined = get_miner("asms", gamma_pos=0.25 + 2**-20, gamma_neg=0.25 + 2**-20)(sim, labels)
    assert mined.pos.sum() == 4 and mined.neg.sum() == 8
    # dsml: S < τ_p and S > τ_n are strict too
    mined = get_miner("dsml", tau_p=0.5, tau_n=0.25, tau_b=1.0)(sim, labels)
    assert not mined.pos.any() and not mined.neg.any()
