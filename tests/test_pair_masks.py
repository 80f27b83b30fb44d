"""The masked building blocks of dmltune.pairs, checked against brute force."""

import itertools

import pytest
import torch

from dmltune.pairs import get_loss, get_miner
from dmltune.pairs.masks import (
    full_precision,
    label_masks,
    masked_logsumexp,
    masked_mean,
    pairwise_hinge_sum,
    row_max,
    row_min,
)


def random_masks(b, density, seed, cols=None):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, cols or b, generator=g) < density


def test_label_masks_exclude_self_and_split_by_label():
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    pos, neg = label_masks(labels)
    for i, j in itertools.product(range(6), range(6)):
        assert bool(pos[i, j]) == (i != j and labels[i] == labels[j])
        assert bool(neg[i, j]) == (labels[i] != labels[j])


def test_row_extrema_of_empty_rows_are_infinite():
    values = torch.arange(6.0).reshape(2, 3)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    assert row_max(values, mask).flatten().tolist() == [2.0, float("-inf")]
    assert row_min(values, mask).flatten().tolist() == [0.0, float("inf")]


@pytest.mark.parametrize("add_one", [False, True])
def test_masked_logsumexp_matches_brute_force_and_is_stable(add_one):
    torch.manual_seed(0)
    values = torch.randn(7, 9, dtype=torch.float64) * 30  # large arguments: overflow if done naively
    mask = random_masks(7, 0.4, 1, cols=9)
    mask[3] = False
    got = masked_logsumexp(values, mask, add_one=add_one)
    for i in range(7):
        terms = values[i][mask[i]].tolist() + ([0.0] if add_one else [])
        expected = torch.logsumexp(torch.tensor(terms, dtype=torch.float64), 0) if terms else torch.tensor(0.0)
        assert got[i].item() == pytest.approx(expected.item(), rel=1e-12, abs=1e-12)


def test_empty_rows_give_finite_zero_gradients():
    values = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(4, 5, dtype=torch.bool)
    mask[0, :2] = True
    out = masked_logsumexp(values, mask).sum() + masked_logsumexp(values, mask, add_one=True).sum()
    out = out + masked_mean(values, mask).sum()
    (grad,) = torch.autograd.grad(out, values)
    assert torch.isfinite(grad).all()
    assert (grad[1:] == 0).all() and (grad[0, 2:] == 0).all() and (grad[0, :2] != 0).all()


@pytest.mark.parametrize("b, density, dtype", [(6, 0.5, torch.float64), (33, 0.3, torch.float64), (50, 0.7, torch.float32)])
def test_pairwise_hinge_sum_equals_the_triplet_brute_force(b, density, dtype):
    torch.manual_seed(b)
    a = torch.randn(b, b, dtype=dtype, requires_grad=True)
    c = torch.randn(b, b, dtype=dtype, requires_grad=True)
    pos, neg = random_masks(b, density, 2), random_masks(b, density, 3)
    pos[0] = False  # a row without positives
    neg[1] = False  # a row without negatives
    got = pairwise_hinge_sum(a, pos, c, neg)
    brute = torch.relu(c[:, None, :] - a[:, :, None])  # [i, j, k] = [c_ik − a_ij]_+
    brute = (brute * (pos[:, :, None] & neg[:, None, :])).sum(dim=(1, 2))
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got, brute, **tol)
    grads = torch.autograd.grad(got.sum(), (a, c))
    brute_grads = torch.autograd.grad(brute.sum(), (a, c))
    for g1, g2 in zip(grads, brute_grads):
        torch.testing.assert_close(g1, g2, **tol)


def test_bf16_similarities_are_mined_and_scored_in_float32():
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(24, 16), dim=1)
    labels = torch.arange(6).repeat_interleave(4)
    sim = emb @ emb.T
    assert full_precision(sim) is sim
    low = sim.bfloat16()
    mined_low = get_miner("asms")(low, labels)
    mined_ref = get_miner("asms")(low.float(), labels)
    assert torch.equal(mined_low.pos, mined_ref.pos) and torch.equal(mined_low.neg, mined_ref.neg)
    loss = get_loss("ms")(low, labels, mined_low)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(get_loss("ms")(low.float(), labels, mined_ref).item())


def test_stats_are_converted_once_and_keep_device_values():
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(12, 8), dim=1)
    labels = torch.arange(3).repeat_interleave(4)
    mined = get_miner("at_asms")(emb @ emb.T, labels)
    assert mined.stats is mined.stats  # cached: one conversion
    assert set(mined.stat_names) <= set(mined.stats)
    assert mined.stat_values.shape == (len(mined.stat_names),)
    assert all(isinstance(v, float) for v in mined.stats.values())


def test_mean_similarity_of_no_mined_pair_is_nan_not_zero():
    labels = torch.tensor([0, 1, 2, 3])  # K = 1: no positive pair at all
    emb = torch.nn.functional.normalize(torch.randn(4, 3), dim=1)
    stats = get_miner("ms")(emb @ emb.T, labels).stats
    assert stats["pos_before"] == 0 and stats["pos_after"] == 0
    assert stats["pos_sim_mean"] != stats["pos_sim_mean"]  # NaN
