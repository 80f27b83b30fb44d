"""Backbones and the embedding model.

    from dmltune.models import build_model, BACKBONES
    model = build_model(backbone="bn_inception", dim=512, pretrained=True, freeze_bn=True)
    emb = model(images)                       # B×512, L2-normalised
    feats = model.features(images); emb = model.embed(feats)
"""

from ..lazy import lazy_attributes
from .backbones import BACKBONES, Backbone, check_weights
from .model_section import MODEL, build_model, resolve_model


__getattr__ = lazy_attributes(__name__, {"EmbeddingModel": "embedding", "global_pool": "embedding"})  # nn.Modules

__all__ = ["BACKBONES", "MODEL", "Backbone", "check_weights", "EmbeddingModel", "build_model", "global_pool", "resolve_model"]
