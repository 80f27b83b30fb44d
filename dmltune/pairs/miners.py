"""Pair miners: which pairs of a batch enter the loss (METHODS.md §1).

A miner takes the B×B similarity matrix and the labels and returns a :class:`Mined` with boolean
masks of the kept positive and negative pairs. The min/max thresholds are taken over the unmined
positive and negative sets; self-pairs are never positives. Mining runs without gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property


from ..registry import Param, Registry
from .masks import check_pair_inputs, full_precision, label_masks, row_max, row_min
from typing import TYPE_CHECKING

from ..lazy import lazy_module, no_grad

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_module("torch")

MINERS = Registry("miner")

# Similarities lie in [-1, 1], so a tolerance beyond 2 keeps everything and one below −2 nothing.
# Negative tolerances tighten the screening for harder pairs (DDTAS §III-D.1).
_TOLERANCE = dict(kind=float, low=-2.0, high=2.0)
_SIMILARITY = dict(kind=float, low=-1.0, high=1.0)


@dataclass
class Mined:
    """Masks of the mined pairs and the batch's mining statistics.

    ``stats`` is a dict of floats (pairs before/after mining, mean mined similarities, the
    thresholds used). It is computed from ``stat_values`` on first access, with one device sync;
    a training loop can instead accumulate ``stat_values`` on the device and convert once per epoch.
    """

    pos: Tensor
    neg: Tensor
    stat_names: tuple[str, ...] = ()
    stat_values: Tensor | None = None
    constants: dict[str, float] = field(default_factory=dict)

    @cached_property
    def stats(self) -> dict[str, float]:
        out = {}
        if self.stat_values is not None:
            out.update(zip(self.stat_names, self.stat_values.tolist()))
        out.update(self.constants)
        return out


def _mined(sim: Tensor, pos_all: Tensor, neg_all: Tensor, pos: Tensor, neg: Tensor,
           adapted: dict[str, Tensor] | None = None, **constants: float) -> Mined:
    """Package masks with the statistics every miner reports."""
    dtype = sim.dtype
    zero = torch.zeros((), dtype=dtype, device=sim.device)
    n_pos, n_neg = pos.sum().to(dtype), neg.sum().to(dtype)
    values = {
        "pos_before": pos_all.sum().to(dtype),
        "neg_before": neg_all.sum().to(dtype),
        "pos_after": n_pos,
        "neg_after": n_neg,
        # 0/0 gives NaN on purpose: "no pair mined" is not a similarity of 0.
        "pos_sim_mean": torch.where(pos, sim, zero).sum() / n_pos,
        "neg_sim_mean": torch.where(neg, sim, zero).sum() / n_neg,
    }
    for name, value in (adapted or {}).items():
        values[name] = value.to(dtype)
    return Mined(pos, neg, tuple(values), torch.stack(list(values.values())), dict(constants))


def tolerance_masks(sim: Tensor, pos_all: Tensor, neg_all: Tensor, gamma_pos, gamma_neg) -> tuple[Tensor, Tensor]:
    """Keep positive j if ``S_ij − γ_pos < max_k S_ik`` and negative k if ``S_ik + γ_neg > min_j S_ij``.

    This is the MS / Sim_p rule with separate tolerances (ASMS, DDTAS eq. 7–8); ``γ`` may be a
    float or a 0-dim tensor.
    """
    hardest_neg = row_max(sim, neg_all)
    hardest_pos = row_min(sim, pos_all)
    pos = pos_all & (sim - gamma_pos < hardest_neg)
    neg = neg_all & (sim + gamma_neg > hardest_pos)
    return pos, neg


class Miner:
    """Shared plumbing: input checks, float32 similarities, label masks, statistics."""

    @no_grad
    def __call__(self, sim: Tensor, labels: Tensor) -> Mined:
        check_pair_inputs(sim, labels)
        sim = full_precision(sim.detach())
        pos_all, neg_all = label_masks(labels)
        pos, neg, adapted = self.select(sim, pos_all, neg_all)
        return _mined(sim, pos_all, neg_all, pos, neg, adapted, **self.constants())

    def select(self, sim: Tensor, pos_all: Tensor, neg_all: Tensor) -> tuple[Tensor, Tensor, dict | None]:
        """Masks of the kept pairs, and any thresholds computed on the device for this batch."""
        raise NotImplementedError

    def constants(self) -> dict[str, float]:
        """The fixed thresholds to report with every batch."""
        return {}


@MINERS.register("none")
class NoMiner(Miner):
    """Keep every positive and negative pair."""

    def select(self, sim, pos_all, neg_all):
        return pos_all, neg_all, None


@MINERS.register("ms", Param("epsilon", default=0.1, help="tolerance ε of the MS / Sim_p rule", **_TOLERANCE))
class MSMiner(Miner):
    """Multi-similarity pair mining (Sim_p / VTHM) with tolerance ε; ε = 0 is Sim_p (γ = 0)."""

    def __init__(self, epsilon: float = 0.1):
        self.epsilon = epsilon

    def select(self, sim, pos_all, neg_all):
        return (*tolerance_masks(sim, pos_all, neg_all, self.epsilon, self.epsilon), None)

    def constants(self):
        return {"epsilon": self.epsilon}


@MINERS.register(
    "asms",
    Param("gamma_pos", default=0.1, help="tolerance γ_pos for positive pairs", **_TOLERANCE),
    Param("gamma_neg", default=0.01, help="tolerance γ_neg for negative pairs", **_TOLERANCE),
)
class ASMSMiner(Miner):
    """Asymmetric sample mining strategy (DDTAS eq. 7–8): separate tolerances γ_pos, γ_neg."""

    def __init__(self, gamma_pos: float = 0.1, gamma_neg: float = 0.01):
        self.gamma_pos, self.gamma_neg = gamma_pos, gamma_neg

    def select(self, sim, pos_all, neg_all):
        return (*tolerance_masks(sim, pos_all, neg_all, self.gamma_pos, self.gamma_neg), None)

    def constants(self):
        return {"gamma_pos": self.gamma_pos, "gamma_neg": self.gamma_neg}


@MINERS.register(
    "at_asms",
    Param("gamma_pos", default=0.1, help="base tolerance γ_pos", **_TOLERANCE),
    Param("gamma_neg", default=0.01, help="base tolerance γ_neg", **_TOLERANCE),
    Param("kappa", float, 0.5, low=0.0, high=10.0,
          help="zoom κ of the adaptive tolerance (the paper gives no bound; κσ(ξ) > 1 flips γ̂_neg's sign)"),
    Param("count_neg_with", str, "gamma_neg", choices=("gamma_neg", "gamma_pos"),
          help="tolerance used to count n_neg; 'gamma_pos' reproduces the authors' code"),
    Param("negative_update", str, "literal", choices=("literal", "directional"),
          help="'literal': γ̂ = γ(1 ± κσ) as eq. 12–13, which moves a negative γ_neg toward 0 (looser) and a "
               "negative γ_pos away from 0 (tighter); 'directional': γ̂_pos = γ_pos + |γ_pos|κσ, "
               "γ̂_neg = γ_neg − |γ_neg|κσ, always admitting more positives and fewer negatives"),
)
class ATASMSMiner(Miner):
    """Adaptive-tolerance ASMS (DDTAS Alg. 1): widen γ_pos and tighten γ_neg when ξ = n_neg/N_pos > 1.

    The update scales each tolerance by (1 ± κσ(ξ)) (eq. 12–13). For γ ≥ 0 that widens the positive
    and tightens the negative screening, as the paper intends; for a negative γ the literal formula
    acts the other way round (``negative_update: directional`` keeps the intended direction).
    """

    def __init__(self, gamma_pos: float = 0.1, gamma_neg: float = 0.01, kappa: float = 0.5,
                 count_neg_with: str = "gamma_neg", negative_update: str = "literal"):
        self.gamma_pos, self.gamma_neg, self.kappa = gamma_pos, gamma_neg, kappa
        self.count_neg_with, self.negative_update = count_neg_with, negative_update

    def select(self, sim, pos_all, neg_all):
        counting_tolerance = self.gamma_neg if self.count_neg_with == "gamma_neg" else self.gamma_pos
        first_neg = neg_all & (sim + counting_tolerance > row_min(sim, pos_all))
        # ξ = n_neg / N_pos; a batch without any positive pair gets ξ = 0 (no adaptation).
        xi = first_neg.sum().to(sim.dtype) / pos_all.sum().clamp_min(1).to(sim.dtype)
        # κσ(ξ) when ξ > 1, else 0 (no adaptation)
        zoom = torch.where(xi > 1, self.kappa * torch.sigmoid(xi), torch.zeros_like(xi))
        if self.negative_update == "literal":  # γ(1 ± κσ), eq. 12–13 as written
            gamma_pos, gamma_neg = self.gamma_pos * (1 + zoom), self.gamma_neg * (1 - zoom)
        else:  # the same amounts, always in the widening / tightening direction
            gamma_pos = self.gamma_pos + abs(self.gamma_pos) * zoom
            gamma_neg = self.gamma_neg - abs(self.gamma_neg) * zoom
        pos, neg = tolerance_masks(sim, pos_all, neg_all, gamma_pos, gamma_neg)
        return pos, neg, {"xi": xi, "gamma_pos": gamma_pos, "gamma_neg": gamma_neg}


@MINERS.register(
    "dsml",
    Param("tau_p", default=0.9, help="keep positives with S < τ_p", **_SIMILARITY),
    Param("tau_n", default=0.1, help="keep negatives with S > τ_n", **_SIMILARITY),
    Param("tau_b", default=0.2, help="and with S > min positive − τ_b (negative: tighter)", **_TOLERANCE),
)
class DSMLMiner(Miner):
    """Dynamic-sampling miner (dynamic_sampling §3.1): absolute thresholds plus a relative bound."""

    def __init__(self, tau_p: float = 0.9, tau_n: float = 0.1, tau_b: float = 0.2):
        self.tau_p, self.tau_n, self.tau_b = tau_p, tau_n, tau_b

    def select(self, sim, pos_all, neg_all):
        pos = pos_all & (sim < self.tau_p)
        neg = neg_all & (sim > self.tau_n) & (sim > row_min(sim, pos_all) - self.tau_b)
        return pos, neg, None

    def constants(self):
        return {"tau_p": self.tau_p, "tau_n": self.tau_n, "tau_b": self.tau_b}


def get_miner(name: str, **params) -> object:
    """Build the miner registered as ``name``; unknown names or parameters raise ConfigError."""
    return MINERS.build(name, params)
