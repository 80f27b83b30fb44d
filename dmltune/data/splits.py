"""Image sets and class-disjoint splits.

An :class:`ImageSet` is a list of images (file paths, or an in-memory uint8 array N×C×H×W) with
integer labels remapped to 0..C−1. A dataset yields :class:`DatasetSplits`: training classes,
validation classes (a seeded fraction of the training classes, for model selection), and the test
classes (or, for In-Shop, a query and a gallery set). No class appears in two of train, val, test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


@dataclass
class ImageSet:
    labels: np.ndarray                  # int64, 0..C−1
    paths: list[str] | None = None      # image files, or
    images: np.ndarray | None = None    # uint8 N×C×H×W in memory
    classes: list = field(default_factory=list)  # original class id of each label
    max_pixels: int | None = None       # pixel cap of its image files (None: dmltune's default)

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if (self.paths is None) == (self.images is None):
            raise ValueError("an ImageSet holds either paths or in-memory images")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_memory(self) -> bool:
        return self.images is not None


def make_set(original_labels: Sequence, keep_classes: Sequence, paths=None, images=None) -> ImageSet:
    """The items whose class is in ``keep_classes``, with labels remapped in that order."""
    original = np.asarray(original_labels)
    keep_classes = list(keep_classes)
    mapping = {c: i for i, c in enumerate(keep_classes)}
    selected = np.flatnonzero(np.isin(original, keep_classes))
    labels = np.array([mapping[c] for c in original[selected]], dtype=np.int64)
    return ImageSet(
        labels=labels,
        paths=[paths[i] for i in selected] if paths is not None else None,
        images=images[selected] if images is not None else None,
        classes=keep_classes,
    )


@dataclass
class DatasetSplits:
    name: str
    train: ImageSet
    val: ImageSet
    test: ImageSet | None
    query: ImageSet | None = None     # In-Shop: test queries
    gallery: ImageSet | None = None   # In-Shop: test gallery
    channels: int = 3
    native_size: int | None = None    # side of in-memory images; None for files of varying size

    def summary(self) -> str:
        parts = [f"train {len(self.train)} images / {self.train.num_classes} classes",
                 f"val {len(self.val)} / {self.val.num_classes}"]
        if self.test is not None:
            parts.append(f"test {len(self.test)} / {self.test.num_classes}")
        if self.query is not None:
            parts.append(f"query {len(self.query)}, gallery {len(self.gallery)}")
        return f"{self.name}: " + ", ".join(parts)


def split_train_val(train_classes: Sequence, val_fraction: float, seed: int) -> tuple[list, list]:
    """A seeded ``val_fraction`` of the training classes becomes the validation classes."""
    train_classes = list(train_classes)
    n_val = int(round(val_fraction * len(train_classes)))
    if val_fraction > 0:
        n_val = max(min(max(n_val, 2), len(train_classes) - 2), 0)  # retrieval needs ≥ 2 classes on each side
    order = np.random.default_rng(seed).permutation(len(train_classes))
    val = sorted(train_classes[i] for i in order[:n_val])
    rest = [c for c in train_classes if c not in set(val)]
    return rest, val


def class_disjoint_splits(name: str, original_labels, train_classes, test_classes, val_fraction: float,
                          val_seed: int, paths=None, images=None, channels: int = 3) -> DatasetSplits:
    """Train / val / test sets from per-item class ids and the protocol's train and test classes."""
    fit, val = split_train_val(train_classes, val_fraction, val_seed)
    return DatasetSplits(
        name=name,
        train=make_set(original_labels, fit, paths, images),
        val=make_set(original_labels, val, paths, images),
        test=make_set(original_labels, list(test_classes), paths, images),
        channels=channels,
        native_size=None if images is None else int(images.shape[-1]),
    )
