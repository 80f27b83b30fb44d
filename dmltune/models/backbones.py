"""Backbones by name: the convolutional body, its feature width, input convention and size.

Each registered factory takes ``(pretrained, weights, in_channels)`` and returns a
:class:`Backbone`. Add one by writing a factory and decorating it with ``BACKBONES.register``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..lazy import lazy_module
from ..registry import ConfigError, Param, Registry
from .weights import find_weights, load_backbone_weights, load_state_dict_file

nn = lazy_module("torch.nn")

BACKBONES = Registry("backbone")

IMAGENET_SPEC = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "channel_order": "RGB", "value_range": 1.0}
# torchvision's GoogLeNet weights expect (x − 0.5) / 0.5 (its transform_input step, which dmltune
# folds into the input normalisation instead).
GOOGLENET_SPEC = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "channel_order": "RGB", "value_range": 1.0}
GRAY_SPEC = {"mean": (0.5,), "std": (0.5,), "channel_order": "RGB", "value_range": 1.0}


# File names under $TORCH_HOME/hub/checkpoints (torchvision's own, so a cache filled by torchvision
# is found) and where to get them, per backbone with ImageNet weights; the first file found is used.
# ResNet-50: IMAGENET1K_V1 first (the weights DML papers used), torchvision's newer V2 file also accepted.
WEIGHT_FILES = {
    "resnet50": (("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth"), "https://download.pytorch.org/models/resnet50-0676ba61.pth"),
    "resnet18": (("resnet18-f37072fd.pth",), "https://download.pytorch.org/models/resnet18-f37072fd.pth"),
    "googlenet": (("googlenet-1378be20.pth",), "https://download.pytorch.org/models/googlenet-1378be20.pth"),
    "bn_inception": (("bn_inception-52deb4733.pth",), "http://data.lip6.fr/cadene/pretrainedmodels/bn_inception-52deb4733.pth"),
}


def check_weights(model: dict) -> None:
    """Before a study starts: the weights file a resolved ``model`` section will load exists (a
    ConfigError names the missing path and how to get it). Nothing is read or built."""
    if not (model.get("pretrained") or model.get("weights")):
        return
    backbone = model["backbone"]
    if backbone in WEIGHT_FILES:
        find_weights(backbone, *WEIGHT_FILES[backbone], model.get("weights"))
    elif model.get("weights"):
        find_weights(backbone, (), "", model["weights"])


# GPU share of one trial when a study asks for `resources: {gpu: auto}` (trials packed per GPU):
# launch-bound or small networks leave most of an H100 idle at B = 80, so several trials share one;
# ResNet-50 / BN-Inception at 224 px keep a GPU busy with two trials. Unmeasured on a GPU so far
# (docs/performance.md); override with a number in the study file.
DEFAULT_GPU_FRACTION = {"resnet50": 0.5, "bn_inception": 0.5, "googlenet": 0.25, "resnet18": 0.25, "small_cnn": 0.125}


def default_gpu_fraction(backbone: str) -> float:
    """GPU share per trial for ``resources: {gpu: auto}``; 1.0 for a backbone without an entry."""
    return DEFAULT_GPU_FRACTION.get(backbone, 1.0)


def _params(in_channels: int = 3, in_channels_help: str = "image channels; must be 3") -> tuple[Param, ...]:
    """The parameters every backbone factory accepts."""
    return (
        Param("pretrained", bool, False, help="load ImageNet weights from $TORCH_HOME/hub/checkpoints"),
        Param("weights", str, None, nullable=True, help="explicit path of a weights file"),
        Param("in_channels", int, in_channels, low=1, high=3, help=in_channels_help),
    )


@dataclass
class Backbone:
    """A convolutional body returning a feature map of ``feature_dim`` channels."""

    body: nn.Module
    feature_dim: int
    input_spec: dict
    input_size: int
    in_channels: int = 3


def _needs_rgb(name: str, in_channels: int) -> None:
    if in_channels != 3:
        raise ConfigError(f"backbone '{name}' takes 3-channel images, got in_channels = {in_channels}; "
                          "grayscale data is expanded to 3 channels by the data transform")


def _torchvision(name, builder, pretrained, weights, in_channels, spec=IMAGENET_SPEC, **kwargs) -> Backbone:
    _needs_rgb(name, in_channels)
    net = builder(weights=None, **kwargs)
    if pretrained or weights:
        path = find_weights(name, *WEIGHT_FILES[name], weights)
        load_backbone_weights(net, load_state_dict_file(path), path, drop_prefixes=("fc.", "aux1.", "aux2."))
    feature_dim = net.fc.in_features
    # keep everything up to (not including) global pooling and the classifier
    drop = {"avgpool", "fc", "dropout", "aux1", "aux2"}
    body = nn.Sequential(*[m for n, m in net.named_children() if n not in drop])
    return Backbone(body, feature_dim, spec, 224)


@BACKBONES.register("resnet50", *_params())
def resnet50(pretrained=False, weights=None, in_channels=3) -> Backbone:
    """torchvision ResNet-50 (2048-d features)."""
    from torchvision.models import resnet50 as build

    return _torchvision("resnet50", build, pretrained, weights, in_channels)


@BACKBONES.register("resnet18", *_params())
def resnet18(pretrained=False, weights=None, in_channels=3) -> Backbone:
    """torchvision ResNet-18 (512-d features)."""
    from torchvision.models import resnet18 as build

    return _torchvision("resnet18", build, pretrained, weights, in_channels)


@BACKBONES.register("googlenet", *_params())
def googlenet(pretrained=False, weights=None, in_channels=3) -> Backbone:
    """torchvision GoogLeNet / Inception v1 (1024-d features), without auxiliary heads."""
    from torchvision.models import googlenet as build

    return _torchvision("googlenet", build, pretrained, weights, in_channels, spec=GOOGLENET_SPEC,
                        aux_logits=False, transform_input=False, init_weights=False)


@BACKBONES.register("bn_inception", *_params())
def bninception(pretrained=False, weights=None, in_channels=3) -> Backbone:
    """BN-Inception (1024-d features); BGR 0–255 input, as in most DML papers."""
    from . import bn_inception  # an nn.Module subclass: torch is imported only to build one

    _needs_rgb("bn_inception", in_channels)
    body = bn_inception.BNInception()
    if pretrained or weights:
        path = find_weights("bn_inception", *WEIGHT_FILES["bn_inception"], weights)
        load_backbone_weights(body, load_state_dict_file(path), path, drop_prefixes=("last_linear.", "fc."))
    return Backbone(body, bn_inception.FEATURE_DIM, bn_inception.INPUT_SPEC, 224)


@BACKBONES.register("small_cnn", *_params(1, "image channels, 1 (grayscale) or 3"))
def small_cnn(pretrained=False, weights=None, in_channels=1) -> Backbone:
    """Four conv-BN-ReLU blocks (128-d features) for 28×28 or 8×8 images, 1 or 3 channels."""
    if pretrained and not weights:
        raise ConfigError("backbone 'small_cnn' has no pretrained weights; set model.pretrained=false or give model.weights")
    if in_channels not in (1, 3):
        raise ConfigError(f"backbone 'small_cnn' takes 1- or 3-channel images, got in_channels = {in_channels}")
    widths = (32, 64, 128, 128)
    layers, cin = [], in_channels
    for i, width in enumerate(widths):
        layers += [nn.Conv2d(cin, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        if i in (1, 2):
            layers.append(nn.MaxPool2d(2, ceil_mode=True))  # 28 → 14 → 7; 8 → 4 → 2
        cin = width
    body = nn.Sequential(*layers)
    if weights:
        path = find_weights("small_cnn", (), "", weights)
        load_backbone_weights(body, load_state_dict_file(path), path, drop_prefixes=())
    spec = GRAY_SPEC if in_channels == 1 else IMAGENET_SPEC
    return Backbone(body, widths[-1], spec, 28, in_channels)
