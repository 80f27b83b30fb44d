"""The ``model`` section: its declared parameters, their check, and building the model from them.

Kept apart from :mod:`.embedding` (an ``nn.Module``) so that validating a study never imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..registry import Component, ConfigError, Param
from .backbones import BACKBONES

if TYPE_CHECKING:
    from .embedding import EmbeddingModel

POOLINGS = ("avg", "max", "avg+max")


MODEL_PARAMS = (
    Param("backbone", str, "resnet50", help="backbone name (dmltune list backbones)"),
    Param("dim", int, 512, low=2, high=8192, help="embedding dimension"),
    Param("pretrained", bool, False, help="load ImageNet weights from local files (never downloaded)"),
    Param("weights", str, None, nullable=True, help="explicit path of a weights file"),
    Param("freeze_bn", bool, True, help="keep the backbone's BatchNorm in eval mode (statistics fixed)"),
    Param("train_bn_affine", bool, False, help="with freeze_bn: still train BatchNorm's scale and shift"),
    Param("pooling", str, "avg", choices=POOLINGS, help="global pooling of the last feature map"),
    Param("in_channels", int, None, low=1, high=3, nullable=True, help="input channels (small_cnn); empty = the data's"),
)

def _embedding_model(**params):
    from .embedding import EmbeddingModel

    return EmbeddingModel(**params)


MODEL = Component("section", "model", _embedding_model, MODEL_PARAMS, "the embedding model")


def resolve_model(params, where: str = "model") -> dict:
    """The model parameters with defaults filled in; unknown backbones or values raise ConfigError."""
    resolved = MODEL.validate(params, where=where)
    try:
        BACKBONES.lookup(resolved["backbone"])
    except ConfigError as err:
        raise ConfigError(f"{where}.backbone: {err}") from None
    return resolved


def build_model(backbone: str = "resnet50", **params) -> EmbeddingModel:
    """An :class:`EmbeddingModel` from the model section's parameters (see ``MODEL_PARAMS``).

    Every value is validated first; a mistake raises ConfigError. ``pretrained`` and ``weights``
    read local files only (:mod:`dmltune.models.weights`).
    """
    return _embedding_model(**resolve_model({"backbone": backbone, **params}))
