"""Running a module with its weights held fixed."""

from __future__ import annotations

from torch import Tensor, nn
from torch.func import functional_call


def with_detached_weights(module: nn.Module, *args: Tensor) -> Tensor:
    """Run ``module`` with its parameters detached: gradients reach the inputs, not the weights
    (an adversary's or a generator's objective that must not move the module it passes through)."""
    params = {name: p.detach() for name, p in module.named_parameters()}
    return functional_call(module, params, args)
