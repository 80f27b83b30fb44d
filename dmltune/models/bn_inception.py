"""BN-Inception (Inception v2 with batch normalisation), as used by most DML papers.

Layer names follow the widely used Caffe port (Cadene's ``pretrainedmodels``), so the common
``bn_inception-52deb4733.pth`` checkpoint loads strictly. The network expects BGR images in the
0–255 range minus the per-channel mean (104, 117, 128), with no division.
Built from a table of inception blocks rather than written out layer by layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

INPUT_SPEC = {"mean": (104.0, 117.0, 128.0), "std": (1.0, 1.0, 1.0), "channel_order": "BGR", "value_range": 255.0}
FEATURE_DIM = 1024

# name: (in, 1x1, 3x3 reduce, 3x3, double reduce, double 3x3, pool, pool projection, stride)
# A 1x1 of 0 means none; a projection of 0 means the pooled input passes through unchanged.
BLOCKS = (
    ("3a", 192, 64, 64, 64, 64, 96, "avg", 32, 1),
    ("3b", 256, 64, 64, 96, 64, 96, "avg", 64, 1),
    ("3c", 320, 0, 128, 160, 64, 96, "max", 0, 2),
    ("4a", 576, 224, 64, 96, 96, 128, "avg", 128, 1),
    ("4b", 576, 192, 96, 128, 96, 128, "avg", 128, 1),
    ("4c", 576, 160, 128, 160, 128, 160, "avg", 128, 1),
    ("4d", 608, 96, 128, 192, 160, 192, "avg", 128, 1),
    ("4e", 608, 0, 128, 192, 192, 256, "max", 0, 2),
    ("5a", 1056, 352, 192, 320, 160, 224, "avg", 128, 1),
    ("5b", 1024, 352, 192, 320, 192, 224, "max", 128, 1),
)


class BNInception(nn.Module):
    """The convolutional body; ``forward`` returns the 1024-channel feature map (7×7 at 224 px)."""

    def __init__(self):
        super().__init__()
        self._unit("conv1_7x7_s2", 3, 64, 7, stride=2, padding=3)
        self._unit("conv2_3x3_reduce", 64, 64, 1)
        self._unit("conv2_3x3", 64, 192, 3, padding=1)
        for name, cin, c1, r3, c3, rd, cd, _pool, proj, stride in BLOCKS:
            p = f"inception_{name}_"
            if c1:
                self._unit(p + "1x1", cin, c1, 1)
            self._unit(p + "3x3_reduce", cin, r3, 1)
            self._unit(p + "3x3", r3, c3, 3, stride=stride, padding=1)
            self._unit(p + "double_3x3_reduce", cin, rd, 1)
            self._unit(p + "double_3x3_1", rd, cd, 3, padding=1)
            self._unit(p + "double_3x3_2", cd, cd, 3, stride=stride, padding=1)
            if proj:
                self._unit(p + "pool_proj", cin, proj, 1)

    def _unit(self, name: str, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> None:
        self.add_module(name, nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding))
        self.add_module(name + "_bn", nn.BatchNorm2d(cout, eps=1e-5))

    def _run(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return F.relu(getattr(self, name + "_bn")(getattr(self, name)(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._run("conv1_7x7_s2", x)
        x = F.max_pool2d(x, 3, stride=2, ceil_mode=True)
        x = self._run("conv2_3x3", self._run("conv2_3x3_reduce", x))
        x = F.max_pool2d(x, 3, stride=2, ceil_mode=True)
        for name, _cin, c1, _r3, _c3, _rd, _cd, pool, proj, stride in BLOCKS:
            p = f"inception_{name}_"
            branches = [self._run(p + "1x1", x)] if c1 else []
            branches.append(self._run(p + "3x3", self._run(p + "3x3_reduce", x)))
            double = self._run(p + "double_3x3_1", self._run(p + "double_3x3_reduce", x))
            branches.append(self._run(p + "double_3x3_2", double))
            if pool == "avg":
                pooled = F.avg_pool2d(x, 3, stride=1, padding=1, ceil_mode=True, count_include_pad=True)
            elif stride == 2:
                pooled = F.max_pool2d(x, 3, stride=2, ceil_mode=True)
            else:
                pooled = F.max_pool2d(x, 3, stride=1, padding=1, ceil_mode=True)
            branches.append(self._run(p + "pool_proj", pooled) if proj else pooled)
            x = torch.cat(branches, dim=1)
        return x
