"""Label masks and masked row reductions over a B×B similarity matrix.

These are the only building blocks the miners and losses use: everything is computed for all
anchors at once, with boolean masks selecting each anchor's pairs. Reductions over an empty row
return finite values with zero gradient, so callers can discard those anchors with ``torch.where``
without NaNs leaking into the backward pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_module

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_module("torch")


def check_pair_inputs(sim: Tensor, labels: Tensor) -> None:
    """Raise ValueError unless ``sim`` is B×B and ``labels`` has B entries."""
    if sim.dim() != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"sim must be a square B×B similarity matrix, got shape {tuple(sim.shape)}")
    if labels.dim() != 1 or labels.shape[0] != sim.shape[0]:
        raise ValueError(
            f"labels must be a vector of length B = {sim.shape[0]}, got shape {tuple(labels.shape)}"
        )


def full_precision(sim: Tensor) -> Tensor:
    """``sim`` in float32 if it is half or bfloat16 (as under autocast), unchanged otherwise.

    Mining thresholds of 0.01 and exponents scaled by β = 50 need more precision than bf16 has.
    """
    return sim.float() if sim.dtype in (torch.float16, torch.bfloat16) else sim


def label_masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """All positive pairs (same label, j ≠ i) and all negative pairs (different label)."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def row_max(values: Tensor, mask: Tensor) -> Tensor:
    """Max of each row over ``mask`` (B×1); ``-inf`` for an empty row."""
    return values.masked_fill(~mask, float("-inf")).amax(dim=1, keepdim=True)


def row_min(values: Tensor, mask: Tensor) -> Tensor:
    """Min of each row over ``mask`` (B×1); ``+inf`` for an empty row."""
    return values.masked_fill(~mask, float("inf")).amin(dim=1, keepdim=True)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of each row over ``mask``; 0 for an empty row."""
    total = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum(dim=1)
    return total / mask.sum(dim=1).clamp_min(1).to(values.dtype)


def masked_logsumexp(values: Tensor, mask: Tensor, add_one: bool = False) -> Tensor:
    """``log Σ_mask exp(v)`` per row, or ``log(1 + Σ_mask exp(v))`` with ``add_one``.

    Stable for large arguments. An empty row gives 0 (that is ``log 1`` with ``add_one``; without
    it the true value is ``-inf``, so callers must discard such rows) and receives no gradient.
    """
    neg_inf = torch.tensor(float("-inf"), dtype=values.dtype, device=values.device)
    masked = torch.where(mask, values, neg_inf)
    shift = masked.amax(dim=1, keepdim=True)
    if add_one:
        shift = shift.clamp_min(0.0)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift)).detach()
    total = torch.exp(masked - shift).sum(dim=1)
    shift = shift.squeeze(1)
    if add_one:
        total = total + torch.exp(-shift)
    total = torch.where(total > 0, total, torch.ones_like(total))
    return shift + torch.log(total)


def pairwise_hinge_sum(pos_values: Tensor, pos: Tensor, neg_values: Tensor, neg: Tensor) -> Tensor:
    """``Σ_{j ∈ pos_i, k ∈ neg_i} [neg_values_ik − pos_values_ij]_+`` for every row i.

    Computed without the B×B×B triplet tensor: each row's positive values are sorted, and for
    every negative the number and the sum of positive values below it come from a binary search
    and a prefix sum, so memory stays B×B and time O(B² log B).
    """
    inf = torch.tensor(float("inf"), dtype=pos_values.dtype, device=pos_values.device)
    a_sorted, _ = torch.sort(torch.where(pos, pos_values, inf), dim=1)
    b = neg_values.contiguous()
    below = torch.searchsorted(a_sorted, b.detach())  # #{j : a_ij < b_ik}
    prefix = torch.cat([torch.zeros_like(a_sorted[:, :1]), torch.cumsum(a_sorted, dim=1)], dim=1)
    # prefix is finite up to each row's number of positives, and `below` never exceeds it for a
    # finite b; masked-out negatives may index further, hence the where() below.
    below_sum = torch.gather(prefix, 1, below)
    per_neg = below.to(b.dtype) * b - below_sum
    return torch.where(neg, per_neg, torch.zeros((), dtype=b.dtype, device=b.device)).sum(dim=1)
