"""Settings that are valid but most likely a mistake: ``validate`` and ``run`` print one warning line
for each and go on (nothing is refused).

- ``train.k`` above the images of a class: such a class's batches repeat images (the sampler draws
  with replacement), so its positive pairs include an image paired with itself;
- an ASHA ``max_t`` above ``train.epochs``: trials end before ASHA's last rungs, which never act;
- an ImageNet backbone (built for 224 × 224 inputs, 32× downsampling) on 8 × 8 images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .data_checks import arm_values

if TYPE_CHECKING:
    from .schema import Arm

TINY_SIDE = 8   # images this small (or smaller) leave an ImageNet backbone one feature-map pixel


def arm_warnings(arm: Arm, data: dict) -> list[str]:
    """The warnings of one arm; ``data``: what its data check found (:func:`.data_checks.check_arm_data`),
    ``{}`` when the data was not read."""
    where = f"arm '{arm.name}'"
    return [w for w in (_k_above_class(arm, data, where), _asha_beyond_epochs(arm, where),
                        _imagenet_on_tiny_images(arm, data, where)) if w]


def _k_above_class(arm: Arm, data: dict, where: str) -> str:
    smallest, k = data.get("smallest_class"), max(arm_values(arm, "train", "k"))
    if not smallest or k <= smallest:
        return ""
    return (f"{where}: train.k = {k} is larger than the {smallest} image(s) of {data['dataset']}'s smallest "
            f"training class, so its batches repeat images (drawn with replacement); lower train.k to at most "
            f"{smallest}")


def _asha_beyond_epochs(arm: Arm, where: str) -> str:
    asha = (arm.search.get("scheduler") or {}).get("asha")
    if not asha:
        return ""
    epochs = max(arm_values(arm, "train", "epochs"))
    if asha["max_t"] <= epochs:
        return ""
    return (f"{where}: search.scheduler.asha.max_t = {asha['max_t']} is above train.epochs = {epochs}: trials "
            f"end first, so ASHA's last rungs never act; set max_t: {epochs}")


def _imagenet_on_tiny_images(arm: Arm, data: dict, where: str) -> str:
    from ..models.backbones import WEIGHT_FILES  # the backbones built for ImageNet's 224 × 224 inputs

    crop = arm.resolved["dataset"]["transform"].get("crop")
    if crop is None:
        from ..data.transforms import PRESETS

        crop = PRESETS[arm.resolved["dataset"]["transform"]["preset"]]["crop"]
    side = min(s for s in (data.get("side"), crop) if s)
    backbones = [b for b in dict.fromkeys(arm_values(arm, "model", "backbone")) if b in WEIGHT_FILES]
    if side > TINY_SIDE or not backbones:
        return ""
    what = f"{data['dataset']}'s {side} × {side} images" if data.get("side") == side else f"{side} × {side} inputs"
    return (f"{where}: backbone {backbones[0]} is an ImageNet network (224 × 224 inputs, 32× downsampling) but "
            f"trains on {what}: its feature map is a single pixel; use model.backbone: small_cnn for such images")
