"""Datasets, class-balanced batches, and device-side image caching and transforms.

    from dmltune.data import load_dataset, ClassBalancedSampler, ImageSource, BatchTransform, TransformSpec
    splits = load_dataset("cub200", root="~/data/CUB_200_2011", val_fraction=0.25)
    sampler = ClassBalancedSampler(splits.train.labels, batch_size=80, k=5, seed=0)
    spec = TransformSpec.from_config({"preset": "imagenet"})
    source = ImageSource(splits.train, spec.resize, device="cuda")
    transform = BatchTransform(spec, model.input_spec, model.in_channels, device="cuda")
    for images, idx in source.batches(sampler):
        x = transform(images, train=True)
"""

from .cache import ImageSource, decode_image
from .datasets import DATASETS, load_dataset, read_idx
from .sampler import ClassBalancedSampler
from .scan import DEFAULT_MAX_PIXELS, ScanReport, scan_image_files, scan_image_tree
from .splits import DatasetSplits, ImageSet
from .transforms import PRESETS, TRANSFORM, BatchTransform, TransformSpec

__all__ = ["DATASETS", "DEFAULT_MAX_PIXELS", "PRESETS", "TRANSFORM", "BatchTransform", "ClassBalancedSampler",
           "DatasetSplits", "ImageSet", "ImageSource", "ScanReport", "TransformSpec", "decode_image", "load_dataset",
           "read_idx", "scan_image_files", "scan_image_tree"]
