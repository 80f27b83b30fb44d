"""Meta-learned loss threshold λ: the online threshold generator of DDTAS (METHODS.md §4).

At a meta step, with parameters θ (the embedding head or the whole network) and the current λ:

1. look ahead one SGD step, ``θ̂(λ) = θ − ψ ∇_θ L_train(λ)``;
2. evaluate the meta loss ``L_meta`` on a meta batch drawn from the training classes, at ``θ̂``;
3. ``λ ← clamp(λ − φ ∂L_meta/∂λ, lo, hi)`` (``update: sgd``, eq. 17 of the paper), or an Adam step
   of size about φ on the same gradient (``update: adam``, the default). The hypergradient is
   proportional to the look-ahead step ψ, so with the small learning rates of DML (ψ = 1e-5) an SGD
   step needs φ of the order of 1/ψ to move λ at all; Adam's steps do not depend on that scale.

The hypergradient is computed exactly but without differentiating through the meta forward pass:
since ``θ̂`` is linear in the gradient ``g(λ) = ∇_θ L_train(λ)``,

    ∂L_meta/∂λ = ⟨∇_θ̂ L_meta, ∂θ̂/∂λ⟩ = −ψ ∂/∂λ ⟨v, g(λ)⟩,   v = ∇_θ̂ L_meta (a constant),

so the meta batch needs one ordinary forward and backward pass at ``θ̂``, and the training side one
mixed second derivative of the training loss. The authors' public code does not implement this
generator; this design is dmltune's own.
"""

from __future__ import annotations

import copy
from typing import Callable, Mapping

import torch
from torch import Tensor

from .registry import Param

META_PARAMS = (
    Param("init", float, 0.7, low=-1.0, high=4.0, help="initial λ"),
    Param("lr", float, 0.01, low=0.0, high=1e6, help="step size φ of the λ update"),
    Param("update", str, "adam", choices=("adam", "sgd"),
          help="'sgd': λ − φ·∂L_meta/∂λ (DDTAS eq. 17); 'adam': Adam steps of size ≈ φ, whatever the gradient's scale"),
    Param("inner_lr", float, None, low=0.0, high=10.0, nullable=True,
          help="look-ahead step ψ; empty = the optimizer's learning rate"),
    Param("every", int, 1, low=1, help="run the meta step every k iterations"),
    Param("scope", str, "head", choices=("head", "full"),
          help="look ahead through the embedding head only, or the whole network"),
    Param("clamp", list, [0.0, 1.0], help="[lo, hi]: λ is kept inside this range"),
    Param("meta_batch", dict, {}, help="{classes: C, per_class: K} of the meta batch; empty = as the training batch"),
    Param("meta_loss", dict, {}, help="{name: ..., params} of the meta loss; empty = the training loss at λ = init"),
)


class MetaLambda:
    """Holds λ and updates it by one-step look-ahead meta-gradients."""

    def __init__(self, init: float, lr: float, inner_lr: float, clamp: tuple[float, float],
                 every: int = 1, device: torch.device | str | None = None, dtype=torch.float32,
                 update: str = "sgd"):
        lo, hi = clamp
        if not lo <= init <= hi:
            raise ValueError(f"meta λ: init {init} lies outside clamp [{lo}, {hi}]; widen clamp or move init")
        self.lr, self.inner_lr, self.every, self.update = lr, inner_lr, every, update
        self.lo, self.hi = lo, hi
        self._param = torch.tensor(float(init), device=device, dtype=dtype, requires_grad=True)
        self._adam = torch.optim.Adam([self._param], lr=lr) if update == "adam" else None
        self.last_hypergrad = torch.zeros((), device=device, dtype=dtype)

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
        if not isinstance(inner, Tensor) or not inner.requires_grad:
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
        if self._adam is not None:
            self._param.grad = hyper.clone()
            self._adam.step()
        else:
            with torch.no_grad():
                self._param -= self.lr * hyper
        with torch.no_grad():
            self._param.clamp_(self.lo, self.hi)
        self.last_hypergrad = hyper
        return hyper

    def state_dict(self) -> dict:
        return {"lam": self.lam.cpu(), "last_hypergrad": self.last_hypergrad.detach().cpu(),
                "adam": copy.deepcopy(self._adam.state_dict()) if self._adam is not None else {}}

    def load_state_dict(self, state: Mapping) -> None:
        self.lam = state["lam"]
        self.last_hypergrad = state["last_hypergrad"].to(self._param.device, self._param.dtype)
        if self._adam is not None and state.get("adam"):
            self._adam.load_state_dict(state["adam"])
