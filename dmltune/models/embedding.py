"""The embedding model: backbone → global pooling → linear head → L2 normalisation.

``features(x)`` gives the pooled backbone features and ``embed(features)`` the normalised
embedding, so code that only needs to differentiate through the head (the meta-learned λ with
``scope: head``) can reuse the backbone pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import ConfigError
from .backbones import BACKBONES
from .model_section import POOLINGS


def global_pool(x: torch.Tensor, mode: str) -> torch.Tensor:
    """B×C×H×W → B×C. ``avg+max`` is the sum of both, as in common DML code."""
    if mode == "avg":
        return x.mean(dim=(2, 3))
    if mode == "max":
        return x.amax(dim=(2, 3))
    return x.mean(dim=(2, 3)) + x.amax(dim=(2, 3))


def _batchnorms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class EmbeddingModel(nn.Module):
    """Backbone body (feature map) → global pooling → ``head`` (Linear F→dim) → L2 normalisation.

    Attributes the training code relies on: ``backbone``, ``head``, ``input_spec`` (the network
    expects ``(x01[channel_order] · value_range − mean) / std``), ``input_size`` (recommended square
    input side), ``in_channels`` and ``feature_dim`` (F).

    With ``freeze_bn`` every BatchNorm of the backbone stays in eval mode, also after ``.train()``,
    so its running statistics never change; its scale and shift are not trained either unless
    ``train_bn_affine`` is set.
    """

    def __init__(self, backbone: str = "resnet50", dim: int = 512, pretrained: bool = False,
                 weights: str | None = None, freeze_bn: bool = True, train_bn_affine: bool = False,
                 pooling: str = "avg", in_channels: int | None = None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"model: pooling {pooling!r} is not valid; choose one of {', '.join(POOLINGS)}")
        choice = {"in_channels": in_channels} if in_channels is not None else {}
        spec = BACKBONES.build(backbone, {"pretrained": pretrained, "weights": weights, **choice})
        self.backbone_name = backbone
        self.backbone = spec.body
        self.head = nn.Linear(spec.feature_dim, dim)
        self.pooling = pooling
        self.freeze_bn = freeze_bn
        self.input_spec = dict(spec.input_spec)
        self.input_size = spec.input_size
        self.in_channels = spec.in_channels
        self.feature_dim = spec.feature_dim
        if freeze_bn and not train_bn_affine:
            for m in _batchnorms(self.backbone):
                for p in m.parameters():
                    p.requires_grad_(False)
        self.train()

    def train(self, mode: bool = True) -> "EmbeddingModel":
        super().train(mode)
        if self.freeze_bn:  # BatchNorm keeps its running statistics, in training too
            for m in _batchnorms(self.backbone):
                m.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features, B×F."""
        return global_pool(self.backbone(x), self.pooling)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Head and L2 normalisation: B×F features → B×dim unit vectors."""
        return F.normalize(self.head(features), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.features(x))
