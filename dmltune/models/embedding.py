"""The embedding model: backbone → global pooling → linear head → L2 normalisation.

``features(x)`` gives the pooled backbone features and ``embed(features)`` the normalised
embedding, so code that only needs to differentiate through the head (the meta-learned λ with
``scope: head``) can reuse the backbone pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import Component, ConfigError, Param
from .backbones import BACKBONES

POOLINGS = ("avg", "max", "avg+max")


def global_pool(x: torch.Tensor, mode: str) -> torch.Tensor:
    """B×C×H×W → B×C. ``avg+max`` is the sum of both, as in common DML code."""
    if mode == "avg":
        return x.mean(dim=(2, 3))
    if mode == "max":
        return x.amax(dim=(2, 3))
    return x.mean(dim=(2, 3)) + x.amax(dim=(2, 3))


class EmbeddingModel(nn.Module):
    def __init__(self, backbone: str = "resnet50", dim: int = 512, pretrained: bool = False,
                 weights: str | None = None, freeze_bn: bool = True, pooling: str = "avg",
                 in_channels: int | None = None):
        super().__init__()
        spec = BACKBONES.lookup(backbone).factory(
            pretrained=pretrained, weights=weights, **({"in_channels": in_channels} if in_channels else {}))
        self.backbone_name = backbone
        self.backbone = spec.body
        self.head = nn.Linear(spec.feature_dim, dim)
        self.pooling = pooling
        self.freeze_bn = freeze_bn
        self.input_spec = dict(spec.input_spec)
        self.input_size = spec.input_size
        self.in_channels = spec.in_channels
        self.feature_dim = spec.feature_dim
        if freeze_bn:
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    for p in m.parameters():
                        p.requires_grad_(False)
        self.train()

    def train(self, mode: bool = True) -> "EmbeddingModel":
        super().train(mode)
        if self.freeze_bn:  # BatchNorm keeps its running statistics, in training too
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return global_pool(self.backbone(x), self.pooling)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(features), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.features(x))


MODEL_PARAMS = (
    Param("backbone", str, "resnet50", help="backbone name (dmltune list backbones)"),
    Param("dim", int, 512, low=2, high=8192, help="embedding dimension"),
    Param("pretrained", bool, False, help="load ImageNet weights from local files (never downloaded)"),
    Param("weights", str, None, nullable=True, help="explicit path of a weights file"),
    Param("freeze_bn", bool, True, help="keep BatchNorm statistics and affine parameters fixed"),
    Param("pooling", str, "avg", choices=POOLINGS, help="global pooling of the last feature map"),
    Param("in_channels", int, None, low=1, high=3, nullable=True, help="input channels (small_cnn); empty = the data's"),
)

MODEL = Component("section", "model", EmbeddingModel, MODEL_PARAMS, "the embedding model")


def resolve_model(params, where: str = "model") -> dict:
    """The model parameters with defaults filled in; unknown backbones or values raise ConfigError."""
    resolved = MODEL.validate(params, where=where)
    try:
        BACKBONES.lookup(resolved["backbone"])
    except ConfigError as err:
        raise ConfigError(f"{where}.backbone: {err}") from None
    return resolved


def build_model(**params) -> EmbeddingModel:
    """An :class:`EmbeddingModel` from validated parameters."""
    return EmbeddingModel(**resolve_model(params))
