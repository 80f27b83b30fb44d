"""Meta-learned loss threshold λ: the online threshold generator of DDTAS (METHODS.md §4).

At a meta step, with parameters θ (the embedding head or the whole network) and the current λ:

1. look ahead one SGD step, ``θ̂(λ) = θ − ψ ∇_θ L_train(λ)``;
2. evaluate the meta loss ``L_meta`` on a meta batch drawn from the training classes, at ``θ̂``;
3. update λ from the hypergradient ``∂L_meta/∂λ`` and clamp it to ``[lo, hi]``:

   * ``update: gated`` (the default): a step of at most φ against the sign of the hypergradient's
     running mean, taken only while that mean is significant. The hypergradients of the last
     ``window`` meta steps (an exponential moving average of that span, with its variance and its
     effective sample size) give a t-statistic t; the step is ``φ · min(1, |t|/c)^8`` with c the
     two-sided Student-t critical value at the tail probability of ``gate`` normal standard errors
     (4 by default) for the window's degrees of freedom (at least 10). Under zero-mean noise |t|
     stays well below c and λ stays put; under a consistent hypergradient λ moves φ per meta step.
     t does not depend on the hypergradient's scale, so φ is a step in λ's own units whatever ψ is;
   * ``update: sgd``: ``λ − φ ∂L_meta/∂λ`` (eq. 17 of the paper). The hypergradient is proportional
     to the look-ahead step ψ, so with the small learning rates of DML (ψ = 1e-5) an SGD step needs
     φ of the order of 1/ψ to move λ at all;
   * ``update: adam``: Adam steps of size about φ on the same gradient. Adam normalises the scale
     but not the noise: fed zero-mean noise, λ random-walks (see docs/training.md).

The hypergradient is computed exactly but without differentiating through the meta forward pass:
since ``θ̂`` is linear in the gradient ``g(λ) = ∇_θ L_train(λ)``,

    ∂L_meta/∂λ = ⟨∇_θ̂ L_meta, ∂θ̂/∂λ⟩ = −ψ ∂/∂λ ⟨v, g(λ)⟩,   v = ∇_θ̂ L_meta (a constant),

so the meta batch needs one ordinary forward and backward pass at ``θ̂``, and the training side one
mixed second derivative of the training loss. The authors' public code does not implement this
generator; this design is dmltune's own.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Callable, Mapping


from .data.sampler import META_BATCH_MAX_CLASSES, MetaBatchSampler  # noqa: F401 (their old home)
from .registry import ConfigError, Param
from typing import TYPE_CHECKING
from .lazy import lazy_module

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_module("torch")

GATE_SHARPNESS = 8
"""Exponent of the gated update's ramp ``min(1, |t|/c)^8``: 1 % of the step at |t| = 0.56 c, 34 %
at 0.875 c, the whole step from c on."""

GATE_MIN_DF = 10
"""The gated update's critical value c is taken at no fewer degrees of freedom than this (6.6 for
gate 4), so a clear signal moves λ within the first meta steps instead of after a dozen."""

META_PARAMS = (
    Param("init", float, 0.7, low=-1.0, high=4.0, help="initial λ"),
    Param("lr", float, 0.001, low=0.0, high=1e6,
          help="step size φ: 'gated' and 'adam': λ moves at most ≈ φ per meta step; 'sgd': the multiplier of ∂L_meta/∂λ"),
    Param("update", str, "gated", choices=("gated", "adam", "sgd"),
          help="'gated': step φ against the sign of the windowed mean hypergradient, only while its t-statistic "
               "is significant (stays put under noise); 'sgd': λ − φ·∂L_meta/∂λ (DDTAS eq. 17); "
               "'adam': Adam steps of size ≈ φ (random-walks under noise)"),
    Param("window", int, 50, low=2, high=100000,
          help="'gated': span in meta steps of the moving mean and variance of the hypergradient"),
    Param("gate", float, 4.0, low=0.5, high=20.0,
          help="'gated': significance, in standard errors (normal-equivalent), at which λ takes the whole step φ"),
    Param("inner_lr", float, None, low=0.0, high=10.0, nullable=True,
          help="look-ahead step ψ; empty = the optimizer's learning rate"),
    Param("every", int, 1, low=1, help="run the meta step every k iterations"),
    Param("scope", str, "head", choices=("head", "full"),
          help="look ahead through the embedding head only, or the whole network"),
    Param("clamp", list, [0.0, 1.0], help="[lo, hi]: λ is kept inside this range"),
    Param("meta_batch", dict, {},
          help="{classes: C, per_class: K} of the meta batch; by default every training class (at most "
               f"{META_BATCH_MAX_CLASSES}, cycling through all of them when there are more) × the training K"),
    Param("meta_loss", dict, {}, help="{name: ..., params} of the meta loss; empty = the training loss at λ = init"),
)


_DEFAULTS = {p.name: p.default for p in META_PARAMS}
_UPDATES = next(p.choices for p in META_PARAMS if p.name == "update")


def check_clamp(init: float, clamp, where: str = "loss.lam.meta") -> None:
    """``clamp`` is ``[lo, hi]`` with lo ≤ hi and ``init`` lies inside it; else a one-line ConfigError."""
    if (len(clamp) != 2 or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in clamp)
            or clamp[0] > clamp[1]):
        raise ConfigError(f"{where}: clamp must be [lo, hi] with lo ≤ hi, got {list(clamp)}")
    if not clamp[0] <= init <= clamp[1]:
        raise ConfigError(f"{where}: init = {init} lies outside clamp {list(clamp)}; widen clamp or move init")


@lru_cache(maxsize=256)
def _critical_t(df: float, gate: float) -> float:
    """Two-sided Student-t critical value with ``df`` degrees of freedom at the tail probability of
    ``gate`` standard normal deviations."""
    from scipy.special import ndtr, stdtrit

    return float(stdtrit(df, ndtr(gate)))


class MetaLambda:
    """Holds λ and updates it by one-step look-ahead meta-gradients."""

    def __init__(self, init: float = _DEFAULTS["init"], lr: float = _DEFAULTS["lr"], inner_lr: float = 1e-5,
                 clamp: tuple[float, float] = tuple(_DEFAULTS["clamp"]), every: int = _DEFAULTS["every"],
                 device: torch.device | str | None = None, dtype=None, update: str = _DEFAULTS["update"],
                 window: int = _DEFAULTS["window"], gate: float = _DEFAULTS["gate"]):
        check_clamp(init, clamp, "meta λ")
        dtype = torch.float32 if dtype is None else dtype
        lo, hi = clamp
        if update not in _UPDATES:
            raise ValueError(f"meta λ: unknown update {update!r}; use 'gated', 'adam' or 'sgd'")
        self.lr, self.inner_lr, self.every, self.update = lr, inner_lr, every, update
        self.lo, self.hi = lo, hi
        self.window, self.gate = window, gate
        self._param = torch.tensor(float(init), device=device, dtype=dtype, requires_grad=True)
        self._adam = torch.optim.Adam([self._param], lr=lr) if update == "adam" else None
        self.last_hypergrad = torch.zeros((), device=device, dtype=dtype)
        # 'gated': moving mean and (population) variance of the hypergradient, on the device in float64
        # (hypergradients of 1e-7 square to 1e-14); count and Σw² of the normalised weights are
        # data-independent, so they live on the host and cost no synchronisation
        self._mean = torch.zeros((), device=device, dtype=torch.float64)
        self._var = torch.zeros((), device=device, dtype=torch.float64)
        self._count, self._weights_sq = 0, 0.0
        self.start_epoch()

    @property
    def lam(self) -> Tensor:
        """The current λ (a 0-dim tensor without gradient)."""
        return self._param.detach()

    @lam.setter
    def lam(self, value) -> None:
        with torch.no_grad():
            self._param.copy_(torch.as_tensor(value, dtype=self._param.dtype))

    def due(self, iteration: int) -> bool:
        """Whether iteration ``iteration`` (counted from 0) runs a meta step."""
        return iteration % self.every == 0

    def hypergradient(
        self,
        train_loss: Callable[[Tensor], Tensor],
        params: Mapping[str, Tensor],
        meta_loss: Callable[[Mapping[str, Tensor]], Tensor],
    ) -> Tensor:
        """``∂L_meta(θ̂(λ))/∂λ`` at the current λ.

        ``train_loss(lam)`` returns the training loss at threshold ``lam`` (a tensor that requires
        grad) through the look-ahead parameters ``params``; ``meta_loss(theta_hat)`` returns the
        meta loss of the meta batch computed with parameters ``theta_hat`` (a dict like ``params``).
        """
        lam = self.lam.detach().clone().requires_grad_(True)
        names = list(params)
        tensors = [params[n] for n in names]
        loss = train_loss(lam)
        grads = torch.autograd.grad(loss, tensors, create_graph=True, allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)]
        theta_hat = {n: (t.detach() - self.inner_lr * g.detach()).requires_grad_(True)
                     for n, t, g in zip(names, tensors, grads)}
        meta = meta_loss(theta_hat)
        v = torch.autograd.grad(meta, [theta_hat[n] for n in names], allow_unused=True)
        inner = sum((g * vi.to(g.dtype)).sum() for g, vi in zip(grads, v) if vi is not None and g.requires_grad)
        if not isinstance(inner, torch.Tensor) or not inner.requires_grad:
            return torch.zeros_like(self.lam)  # λ does not influence this step
        (d_inner,) = torch.autograd.grad(inner, lam, allow_unused=True)
        if d_inner is None:
            return torch.zeros_like(self.lam)
        return (-self.inner_lr * d_inner).detach().to(self.lam.dtype)

    def hypergradient_via_similarities(
        self,
        sim: Tensor,
        sim_loss: Callable[[Tensor, Tensor], Tensor],
        params: Mapping[str, Tensor],
        meta_loss: Callable[[Mapping[str, Tensor]], Tensor],
        sim_tangent: Callable[[Mapping[str, Tensor]], Tensor],
    ) -> Tensor:
        """The same hypergradient as :meth:`hypergradient`, without any second-order backward pass.

        λ enters the training loss only through the loss head on the B×B similarity matrix S, so
        ∇θ L(λ) = Jᵀ G(λ) with J = ∂S/∂θ and G = ∂L/∂S, and

            ∂/∂λ ⟨v, ∇θ L(λ)⟩ = ⟨J v, ∂G/∂λ⟩.

        ``J v`` is one forward-mode directional derivative of S (``sim_tangent(v)``) and ``∂G/∂λ``
        a second derivative of the cheap loss head only. ``sim`` must still hold its autograd
        graph (it is kept for the training step that follows); ``sim_loss(s, lam)`` is the training
        loss of similarities ``s`` at threshold ``lam``.
        """
        lam = self.lam.detach().clone().requires_grad_(True)
        names = list(params)
        tensors = [params[n] for n in names]
        leaf = sim.detach().requires_grad_(True)
        (head_grad,) = torch.autograd.grad(sim_loss(leaf, lam), leaf, create_graph=True)  # G(λ)
        grads = torch.autograd.grad(sim, tensors, grad_outputs=head_grad.detach(), retain_graph=True,
                                    allow_unused=True)
        theta_hat = {n: (t.detach() - self.inner_lr * (0 if g is None else g)).requires_grad_(True)
                     for n, t, g in zip(names, tensors, grads)}
        v = torch.autograd.grad(meta_loss(theta_hat), [theta_hat[n] for n in names], allow_unused=True)
        v = {n: torch.zeros_like(theta_hat[n]) if vi is None else vi.detach() for n, vi in zip(names, v)}
        tangent = sim_tangent(v).detach().to(head_grad.dtype)
        if not head_grad.requires_grad:
            return torch.zeros_like(self.lam)
        (d_inner,) = torch.autograd.grad((head_grad * tangent).sum(), lam, allow_unused=True)
        if d_inner is None:
            return torch.zeros_like(self.lam)
        return (-self.inner_lr * d_inner).detach().to(self.lam.dtype)

    def step(self, train_loss, params, meta_loss) -> Tensor:
        """One meta update of λ (hypergradient by double backward); returns the hypergradient."""
        return self.apply(self.hypergradient(train_loss, params, meta_loss))

    def apply(self, hyper: Tensor) -> Tensor:
        """Update λ with a hypergradient, then clamp; returns it."""
        if self.update == "gated":
            self._gated_step(hyper)
        elif self._adam is not None:
            self._param.grad = hyper.clone()
            self._adam.step()
        else:
            with torch.no_grad():
                self._param -= self.lr * hyper
        with torch.no_grad():
            self._param.clamp_(self.lo, self.hi)
        self.last_hypergrad = hyper
        g = hyper.detach().to(self._epoch_sums.dtype)
        self._epoch_sums = self._epoch_sums + torch.stack([g, g * g])
        self._epoch_steps += 1
        return hyper

    def _gated_step(self, hyper: Tensor) -> None:
        """Moving mean and variance of the hypergradient (cumulative for the first window/2 steps,
        then exponential with span ``window``), their t-statistic, and a step of at most ``lr``."""
        g = hyper.detach().to(self._mean.dtype)
        self._count += 1
        a = max(2.0 / (self.window + 1), 1.0 / self._count)  # weight of the newest hypergradient
        d = g - self._mean
        self._mean = self._mean + a * d
        self._var = (1 - a) * (self._var + a * d * d)  # weighted (population) variance, Welford-style
        self._weights_sq = (1 - a) ** 2 * self._weights_sq + a * a  # Σw², w the normalised weights
        if self._count < 2:
            return  # no variance yet
        s2 = self._weights_sq
        # Var(weighted mean) = σ² Σw²; the unbiased σ² is the weighted variance / (1 − Σw²)
        t = self._mean / torch.sqrt(self._var * (s2 / (1.0 - s2)))
        critical = _critical_t(max(round(1.0 / s2 - 1.0, 3), GATE_MIN_DF), self.gate)  # df: n_eff − 1
        share = (t.abs() / critical).clamp(max=1.0) ** GATE_SHARPNESS  # |t| = ∞ (no spread): 1
        step = torch.nan_to_num(torch.sign(self._mean) * share, nan=0.0)  # all-zero hypergradients: 0/0
        with torch.no_grad():
            self._param -= (self.lr * step).to(self._param.dtype)

    def start_epoch(self) -> None:
        """Reset the per-epoch sums of the hypergradient (see :meth:`epoch_summary`)."""
        self._epoch_sums = torch.zeros(2, device=self._param.device, dtype=torch.float64)
        self._epoch_steps = 0

    def epoch_summary(self) -> dict[str, float]:
        """The hypergradients since :meth:`start_epoch`: their mean and its signal-to-noise ratio,
        mean / (sd / √n) (a t-statistic, signed; NaN with fewer than two meta steps or no spread).
        One host synchronisation."""
        n = self._epoch_steps
        if n == 0:
            return {"lam_hypergrad_mean": float("nan"), "lam_hypergrad_snr": float("nan")}
        total, total_sq = self._epoch_sums.tolist()
        mean = total / n
        var = (total_sq - n * mean * mean) / (n - 1) if n > 1 else 0.0
        se = (max(var, 0.0) / n) ** 0.5
        return {"lam_hypergrad_mean": mean, "lam_hypergrad_snr": mean / se if se > 0 else float("nan")}

    def state_dict(self) -> dict:
        return {"lam": self.lam.cpu(), "last_hypergrad": self.last_hypergrad.detach().cpu(),
                "adam": copy.deepcopy(self._adam.state_dict()) if self._adam is not None else {},
                "gated": {"mean": self._mean.cpu(), "var": self._var.cpu(), "count": self._count,
                          "weights_sq": self._weights_sq}}

    def load_state_dict(self, state: Mapping) -> None:
        self.lam = state["lam"]
        self.last_hypergrad = state["last_hypergrad"].to(self._param.device, self._param.dtype)
        if self._adam is not None and state.get("adam"):
            self._adam.load_state_dict(state["adam"])
        gated = state.get("gated")
        if gated:
            self._mean = gated["mean"].to(self._mean.device, self._mean.dtype)
            self._var = gated["var"].to(self._var.device, self._var.dtype)
            self._count, self._weights_sq = int(gated["count"]), float(gated["weights_sq"])
