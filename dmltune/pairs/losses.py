"""Pair losses over the mined pairs (METHODS.md §2) and their dynamic-sampling forms (§3).

Each loss computes a per-anchor value ``L_i`` from its mined positives ``P'_i`` and negatives
``N'_i``. An anchor counts only when both sets are non-empty, and the batch loss is ``Σ_i L_i / B``
over all B anchors. When no anchor counts, the loss is an exact zero that is still part of the
autograd graph.

The threshold λ (``lam``) may be a float or a 0-dim tensor; with a tensor that requires grad,
gradients flow into it (this is how the meta-learned λ is trained). It can also be passed per call.
"""

from __future__ import annotations


from ..registry import Param, Registry
from .masks import check_pair_inputs, full_precision, label_masks, masked_logsumexp, masked_mean, pairwise_hinge_sum
from typing import TYPE_CHECKING

from ..lazy import lazy_module

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_module("torch")
F = lazy_module("torch.nn.functional")

LOSSES = Registry("loss", "losses")

_POSITIVE = dict(kind=float, low=1e-3, high=1e3)


def _lam(default_range: tuple[float, float], default: float, help: str = "loss threshold λ") -> Param:
    low, high = default_range
    return Param("lam", float, default, low=low, high=high, tensor_ok=True, help=help)


_DYNAMIC = (
    Param("dynamic", bool, False, help="add the dynamic-sampling terms w_p, w_n (needs progress r)"),
    Param("tau_p", float, 0.9, low=-1.0, high=1.0, help="positive target τ_p of w_p = 2r(τ_p − S)²"),
    Param("tau_n", float, 0.1, low=-1.0, high=1.0, help="negative target τ_n of w_n = 2r(S − τ_n)²"),
)


class PairLoss:
    """Shared plumbing: masks, valid anchors, λ, progress and the Σ_i L_i / B reduction."""

    has_lambda = False
    has_dynamic = False

    def __init__(self, lam: float | Tensor | None = None, dynamic: bool = False,
                 tau_p: float = 0.9, tau_n: float = 0.1):
        self.lam = lam
        self.dynamic, self.tau_p, self.tau_n = dynamic, tau_p, tau_n

    def __call__(self, sim: Tensor, labels: Tensor, mined=None, progress: float | Tensor | None = None,
                 lam: float | Tensor | None = None) -> Tensor:
        check_pair_inputs(sim, labels)
        sim = full_precision(sim)
        if mined is None:
            pos, neg = label_masks(labels)
        else:
            pos, neg = mined.pos, mined.neg
        if lam is not None and not self.has_lambda:
            raise ValueError(f"{type(self).__name__} has no threshold λ; do not pass lam")
        lam = self.lam if lam is None else lam
        weights = self._dynamic_weights(sim, progress)
        per_anchor = self.per_anchor(sim, pos, neg, lam, weights)
        valid = pos.any(dim=1) & neg.any(dim=1)
        zero = torch.zeros((), dtype=per_anchor.dtype, device=per_anchor.device)
        return torch.where(valid, per_anchor, zero).sum() / sim.shape[0]

    def _dynamic_weights(self, sim: Tensor, progress) -> tuple[Tensor, Tensor] | None:
        if not self.dynamic:
            return None
        if progress is None:
            raise ValueError(f"{type(self).__name__} with dynamic=True needs progress=r (epoch / total epochs)")
        r = float(progress) if not isinstance(progress, torch.Tensor) else progress
        if not isinstance(r, torch.Tensor) and not 0.0 <= r <= 1.0:
            raise ValueError(f"progress must be in [0, 1], got {r}")
        return 2 * r * (self.tau_p - sim) ** 2, 2 * r * (sim - self.tau_n) ** 2

    def per_anchor(self, sim: Tensor, pos: Tensor, neg: Tensor, lam, weights) -> Tensor:
        raise NotImplementedError


@LOSSES.register(
    "contrastive",
    Param("pos_margin", float, 1.0, low=-1.0, high=2.0, help="α_pos: positives are pulled above it"),
    Param("neg_margin", float, 0.5, low=-1.0, high=2.0, help="α_neg: negatives are pushed below it"),
)
class ContrastiveLoss(PairLoss):
    """Contrastive loss on similarities (DDTAS eq. 2): mean [α_pos − S]_+ + mean [S − α_neg]_+."""

    def __init__(self, pos_margin: float = 1.0, neg_margin: float = 0.5):
        super().__init__()
        self.pos_margin, self.neg_margin = pos_margin, neg_margin

    def per_anchor(self, sim, pos, neg, lam, weights):
        return (masked_mean(F.relu(self.pos_margin - sim), pos)
                + masked_mean(F.relu(sim - self.neg_margin), neg))


@LOSSES.register(
    "triplet",
    Param("margin", float, 0.1, low=0.0, high=2.0, help="margin m (λ of DSML eq. 10, which uses 0.5)"),
    *_DYNAMIC,
    Param("tp_form", str, "paper", choices=("paper", "reduces_to_tp"),
          help="TP* (dynamic: true): 'paper' = DSML eq. 10, one hinge over the anchor's means "
               "[mean_P'(w_p − S) + mean_N'(S + w_n) + m]_+; 'reduces_to_tp' = the mean over triplets of "
               "[S_ik − S_ij + m + w_p + w_n]_+, which is the triplet loss at r = 0"),
)
class TripletLoss(PairLoss):
    """Triplet loss over all mined (positive, negative) combinations of each anchor.

    With ``dynamic: true`` (TP*), ``tp_form`` chooses between DSML eq. 10 as written (``paper``, the
    default: the hinge is taken once, over the anchor's mean positive and mean negative terms) and
    the per-triplet form (``reduces_to_tp``), which equals the plain triplet loss when r = 0.
    """

    has_dynamic = True

    def __init__(self, margin: float = 0.1, tp_form: str = "paper", **dynamic):
        super().__init__(**dynamic)
        self.margin, self.tp_form = margin, tp_form

    def per_anchor(self, sim, pos, neg, lam, weights):
        if weights is not None and self.tp_form == "paper":  # DSML eq. 10, per anchor
            return F.relu(masked_mean(weights[0] - sim, pos) + masked_mean(sim + weights[1], neg) + self.margin)
        # [S_ik − S_ij + m + w_p(S_ij) + w_n(S_ik)]_+ = [b_ik − a_ij]_+ with the terms split by pair.
        a = sim - self.margin
        b = sim
        if weights is not None:
            a = a - weights[0]
            b = b + weights[1]
        total = pairwise_hinge_sum(a, pos, b, neg)
        n_triplets = pos.sum(dim=1) * neg.sum(dim=1)
        return total / n_triplets.clamp_min(1).to(sim.dtype)


@LOSSES.register("lifted", _lam((0.0, 4.0), 1.0, "margin λ of the positive term"), *_DYNAMIC)
class LiftedLoss(PairLoss):
    """Generalised lifted structure: [log Σ_P' e^{λ − S} + log Σ_N' e^{S}]_+."""

    has_lambda = has_dynamic = True

    def __init__(self, lam: float | Tensor = 1.0, **dynamic):
        super().__init__(lam=lam, **dynamic)

    def per_anchor(self, sim, pos, neg, lam, weights):
        pos_arg, neg_arg = lam - sim, sim
        if weights is not None:
            pos_arg, neg_arg = pos_arg + weights[0], neg_arg + weights[1]
        return F.relu(masked_logsumexp(pos_arg, pos) + masked_logsumexp(neg_arg, neg))


@LOSSES.register(
    "binomial",
    Param("alpha", default=2.0, help="positive scale α", **_POSITIVE),
    Param("beta", default=40.0, help="negative scale β", **_POSITIVE),
    _lam((-1.0, 1.0), 0.5),
    *_DYNAMIC,
)
class BinomialLoss(PairLoss):
    """Binomial deviance: mean_P' log(1 + e^{α(λ − S)}) + mean_N' log(1 + e^{β(S − λ)})."""

    has_lambda = has_dynamic = True

    def __init__(self, alpha: float = 2.0, beta: float = 40.0, lam: float | Tensor = 0.5, **dynamic):
        super().__init__(lam=lam, **dynamic)
        self.alpha, self.beta = alpha, beta

    def per_anchor(self, sim, pos, neg, lam, weights):
        pos_arg, neg_arg = lam - sim, sim - lam
        if weights is not None:
            pos_arg, neg_arg = pos_arg + weights[0], neg_arg + weights[1]
        return (masked_mean(F.softplus(self.alpha * pos_arg), pos)
                + masked_mean(F.softplus(self.beta * neg_arg), neg))


@LOSSES.register(
    "ms",
    Param("alpha", default=2.0, help="positive scale α", **_POSITIVE),
    Param("beta", default=50.0, help="negative scale β (the authors' code uses 40)", **_POSITIVE),
    _lam((-1.0, 1.0), 0.5),
    *_DYNAMIC,
)
class MultiSimilarityLoss(PairLoss):
    """Multi-similarity loss (unified_view eq. 17)."""

    has_lambda = has_dynamic = True

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, lam: float | Tensor = 0.5, **dynamic):
        super().__init__(lam=lam, **dynamic)
        self.alpha, self.beta = alpha, beta

    def per_anchor(self, sim, pos, neg, lam, weights):
        # Dynamic form (dynamic_sampling eq. 11): w is added outside the α, β scaling.
        pos_arg, neg_arg = -self.alpha * (sim - lam), self.beta * (sim - lam)
        if weights is not None:
            pos_arg, neg_arg = pos_arg + weights[0], neg_arg + weights[1]
        return (masked_logsumexp(pos_arg, pos, add_one=True) / self.alpha
                + masked_logsumexp(neg_arg, neg, add_one=True) / self.beta)


@LOSSES.register(
    "soft_contrastive",
    _lam((-1.0, 1.0), 0.7),
    Param("mu", default=2.0, help="positive scale μ", **_POSITIVE),
    Param("nu", default=40.0, help="negative scale ν", **_POSITIVE),
    Param("scaling", str, "paper", choices=("paper", "authors_code"),
          help="'paper': terms scaled by 1/μ, 1/ν (eq. 9); 'authors_code': by 2/μ, 2/ν"),
)
class SoftContrastiveLoss(PairLoss):
    """Soft contrastive loss (DDTAS eq. 9)."""

    has_lambda = True

    def __init__(self, lam: float | Tensor = 0.7, mu: float = 2.0, nu: float = 40.0, scaling: str = "paper"):
        super().__init__(lam=lam)
        self.mu, self.nu = mu, nu
        self.coef = 1.0 if scaling == "paper" else 2.0

    def per_anchor(self, sim, pos, neg, lam, weights):
        return self.coef * (masked_mean(F.softplus(self.mu * (lam - sim)), pos) / self.mu
                            + masked_mean(F.softplus(self.nu * (sim - lam)), neg) / self.nu)


def get_loss(name: str, **params) -> PairLoss:
    """Build the loss registered as ``name``; unknown names or parameters raise ConfigError."""
    return LOSSES.build(name, params)
