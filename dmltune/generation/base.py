"""The generation interface a trainer uses, the do-nothing ``none``, the registry and the factory.

A generation method (``mirage.py`` is the one shipped) subclasses :class:`Generation`, registers
its name and parameters in ``catalog.py``, and is built by :func:`build_generation`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .catalog import GENERATORS

EmbedFn = Callable[[Tensor], Tensor]


class Generation(nn.Module):
    """The interface a trainer uses; ``none`` implements it as a no-op.

    * ``num_generated(batch_size)`` — how many generated examples go with a batch of real ones;
    * ``generate(embed_fn, n, generator)`` — ``(embeddings n×d, labels n)``;
    * ``is_virtual(labels)`` — which labels belong to virtual classes;
    * ``generator_loss(features, embed_fn)`` and ``discriminator_loss(...)`` — scalar losses;
    * ``parameter_groups()`` / ``build_optimizers(lr)`` — separate optimisers per side;
    * ``buffer_area_share()`` — share of training prototypes whose nearest prototype is virtual.
    """

    enabled: bool = False

    def __init__(self, class_labels: Tensor, feature_dim: int, embed_dim: int):
        super().__init__()
        self.register_buffer("class_labels", class_labels.clone(), persistent=True)
        self.feature_dim = int(feature_dim)
        self.embed_dim = int(embed_dim)
        self.num_train = int(class_labels.numel())
        self.num_virtual = 0
        self.lr = 0.0

    @property
    def device(self) -> torch.device:
        return self.class_labels.device

    def num_generated(self, batch_size: int) -> int:
        return 0

    def is_virtual(self, labels: Tensor) -> Tensor:
        return torch.zeros_like(labels, dtype=torch.bool)

    def _empty(self) -> tuple[Tensor, Tensor]:
        return (torch.empty(0, self.embed_dim, device=self.device),
                torch.empty(0, dtype=torch.long, device=self.device))

    def generate(self, embed_fn: EmbedFn, n: int, generator: torch.Generator | None = None, *,
                 labels_from: Tensor | None = None, train_generator: bool = False) -> tuple[Tensor, Tensor]:
        return self._empty()

    def proxy_batch(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        return self._empty()

    def generator_loss(self, features: Tensor, embed_fn: EmbedFn, generator: torch.Generator | None = None, *,
                       n_virtual: int | None = None) -> Tensor:
        return torch.zeros((), device=self.device)

    def discriminator_loss(self, real: Tensor, real_labels: Tensor, generated: Tensor,
                           generated_labels: Tensor) -> Tensor:
        return torch.zeros((), device=self.device)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"generator": [], "prototypes": [], "discriminator": []}

    def build_optimizers(self, lr: float | None = None) -> tuple[torch.optim.Optimizer | None,
                                                               torch.optim.Optimizer | None]:
        """``(generator side, discriminator)`` Adam optimisers; ``None`` where a side has no parameters."""
        lr = self.lr if lr is None else lr
        groups = self.parameter_groups()
        gen = groups["generator"] + groups["prototypes"]
        disc = groups["discriminator"]
        return (torch.optim.Adam(gen, lr=lr) if gen else None,
                torch.optim.Adam(disc, lr=lr) if disc else None)

    def buffer_area_share(self) -> float:
        return float("nan")


class NoGeneration(Generation):
    """No generated examples: every method is a no-op and there are no parameters."""



def _check_class_labels(num_classes: int, class_labels: Tensor | None) -> Tensor:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"generation: num_classes must be a positive integer, got {num_classes!r}")
    if class_labels is None:
        return torch.arange(num_classes)
    labels = torch.as_tensor(class_labels).detach().cpu()
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.ndim != 1:
        raise ValueError("generation: class_labels must be a 1-D tensor of integer labels")
    labels = labels.long().sort().values
    if labels.numel() != num_classes or bool((labels[1:] == labels[:-1]).any()):
        raise ValueError(f"generation: class_labels must hold {num_classes} distinct labels, "
                         f"got {labels.numel()} with {labels.unique().numel()} distinct")
    return labels


def build_generation(name: str, params: Mapping[str, Any] | None, num_classes: int, feature_dim: int,
                     embed_dim: int, device: torch.device | str = "cpu", *,
                     class_labels: Tensor | None = None) -> Generation:
    """The generation component ``name`` with ``params`` validated against its declaration.

    ``class_labels`` are the training classes' real labels (default ``0..num_classes−1``).
    Unknown names or parameters and out-of-range values raise a one-line ConfigError.
    """
    labels = _check_class_labels(num_classes, class_labels)
    module = GENERATORS.build(name, params, class_labels=labels, feature_dim=feature_dim, embed_dim=embed_dim)
    return module.to(device)
