"""Batch transforms on the device: crop (or random resized crop), flip, normalise, in one pass.

Input is a uint8 batch N×C×S×S already on the device (from the cache or a loader). Plain random
crops (with optional zero-padded shifts) and flips are one gather of whole pixels, so they reproduce
the pixels exactly; random resized crops fold each sample's window and flip into an affine map
applied with one bilinear ``grid_sample``. Normalisation
follows the backbone's input convention (``input_spec``): ``(x01[channel order] · value_range −
mean) / std``.

Presets (``dataset.transform.preset``):

| preset | stored size | train | test |
|---|---|---|---|
| imagenet | 256 | random 224 crop + horizontal flip | centre 224 crop |
| 28px | native 28 | ±2 px random shift (zero padding) + flip | as stored |
| 8px | native 8 | ±1 px random shift | as stored |
"""

from __future__ import annotations

import math
from dataclasses import dataclass


from ..registry import Component, Param
from ..lazy import lazy_module

torch = lazy_module("torch")
F = lazy_module("torch.nn.functional")

PRESETS = {
    "imagenet": {"resize": 256, "crop": 224, "pad": 0, "flip": True},
    "28px": {"resize": 28, "crop": 28, "pad": 2, "flip": True},
    "8px": {"resize": 8, "crop": 8, "pad": 1, "flip": False},
}

TRANSFORM_PARAMS = (
    Param("preset", str, "imagenet", choices=tuple(PRESETS), help="size and augmentation preset"),
    Param("resize", int, None, low=4, high=1024, nullable=True, help="stored (cached) image size; empty = preset's"),
    Param("crop", int, None, low=4, high=1024, nullable=True, help="network input size; empty = preset's"),
    Param("pad", int, None, low=0, high=64, nullable=True, help="max random shift in pixels (small presets)"),
    Param("flip", bool, None, nullable=True, help="random horizontal flips in training; empty = preset's"),
    Param("random_resized_crop", bool, False, help="random scale 0.16–1 and aspect 3/4–4/3 crops instead of plain crops"),
)
TRANSFORM = Component("section", "dataset.transform", dict, TRANSFORM_PARAMS)


@dataclass
class TransformSpec:
    resize: int
    crop: int
    pad: int
    flip: bool
    random_resized_crop: bool = False

    @classmethod
    def from_config(cls, values: dict | None) -> "TransformSpec":
        values = TRANSFORM.validate(values or {})
        base = dict(PRESETS[values.pop("preset")])
        base.update({k: v for k, v in values.items() if v is not None})
        return cls(**base)


class BatchTransform:
    """uint8 N×C×S×S on the device → normalised float N×C'×crop×crop, training or test mode."""

    def __init__(self, spec: TransformSpec, input_spec: dict, in_channels: int, device, seed: int = 0):
        self.spec = spec
        self.in_channels = in_channels
        order = [2, 1, 0] if input_spec.get("channel_order", "RGB") == "BGR" and in_channels == 3 else None
        self.order = order
        value_range = float(input_spec.get("value_range", 1.0))
        mean = torch.tensor(input_spec["mean"], dtype=torch.float32, device=device)
        std = torch.tensor(input_spec["std"], dtype=torch.float32, device=device)
        # out = x_uint8 · scale − shift, per channel
        self.scale = (value_range / 255.0 / std).view(1, -1, 1, 1)
        self.shift = (mean / std).view(1, -1, 1, 1)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def __call__(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        # Crops and flips pick whole pixels, so they run on the uint8 batch (a quarter of the bytes);
        # only the cropped pixels are converted to float and normalised.
        x = images
        if train and self.spec.random_resized_crop:
            x = self._sample(x.float(), *self._random_windows(x))
        elif train:
            x = self._crop_and_flip(x)
        elif x.shape[-1] != self.spec.crop or x.shape[-2] != self.spec.crop:
            top = (x.shape[-2] - self.spec.crop) // 2
            left = (x.shape[-1] - self.spec.crop) // 2
            x = x[..., top:top + self.spec.crop, left:left + self.spec.crop]
        if x.shape[1] == 1 and self.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)  # grayscale data, RGB backbone
        if self.order is not None:
            x = x[:, self.order]
        return x.float() * self.scale - self.shift

    def _random_windows(self, x: torch.Tensor):
        """Per-sample random-resized-crop window (left, top, width, height in pixels) and flip sign."""
        n, h, w, spec = x.shape[0], x.shape[-2], x.shape[-1], self.spec
        dev, g = x.device, self.generator

        def uniform(lo, hi):
            return lo + (hi - lo) * torch.rand(n, device=dev, generator=g)

        area = uniform(0.16, 1.0) * h * w
        log_ratio = uniform(math.log(3 / 4), math.log(4 / 3))
        ratio = torch.exp(log_ratio)
        cw = torch.sqrt(area * ratio).clamp(1, w)
        ch = torch.sqrt(area / ratio).clamp(1, h)
        left, top = uniform(0, 1) * (w - cw), uniform(0, 1) * (h - ch)
        flip = torch.ones(n, device=dev)
        if spec.flip:
            flip = torch.where(torch.rand(n, device=dev, generator=g) < 0.5, -flip, flip)
        return left, top, cw, ch, flip

    def _crop_and_flip(self, x: torch.Tensor) -> torch.Tensor:
        """Random whole-pixel crop windows (shifts of up to ``pad`` into zero padding) and flips."""
        n, h, w, spec = x.shape[0], x.shape[-2], x.shape[-1], self.spec
        dev, g, c, pad = x.device, self.generator, spec.crop, spec.pad
        if pad:
            x = F.pad(x, (pad, pad, pad, pad))
        top = torch.randint(0, h - c + 2 * pad + 1, (n, 1), device=dev, generator=g)
        left = torch.randint(0, w - c + 2 * pad + 1, (n, 1), device=dev, generator=g)
        steps = torch.arange(c, device=dev).view(1, c)
        cols = left + steps
        if spec.flip:
            flip = torch.rand(n, 1, device=dev, generator=g) < 0.5
            cols = torch.where(flip, left + (c - 1) - steps, cols)
        rows = top + steps
        batch = torch.arange(n, device=dev).view(n, 1, 1)
        out = x[batch, :, rows[:, :, None], cols[:, None, :]]  # N×c×c×C
        return out.permute(0, 3, 1, 2)

    def _sample(self, x, left, top, cw, ch, flip):
        n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
        theta = torch.zeros(n, 2, 3, device=x.device)
        # output pixel j of the window maps to input pixel left + j (align_corners=False centres)
        theta[:, 0, 0] = flip * cw / w
        theta[:, 0, 2] = (cw + 2 * left) / w - 1
        theta[:, 1, 1] = ch / h
        theta[:, 1, 2] = (ch + 2 * top) / h - 1
        size = self.spec.crop
        grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
