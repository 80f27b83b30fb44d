"""Getting uint8 images onto the device: a decoded-once cache, or a DataLoader when it won't fit.

``ImageSource(image_set, spec, device)`` serves batches of uint8 images N×C×S×S on ``device`` for
a list of indices. With the cache, every image is decoded once (PIL, shorter side resized to S,
centre crop S×S) and the whole set kept on the device; a batch is then a single index operation.
When the estimated size exceeds the memory budget, images are decoded per batch by DataLoader
workers instead. In-memory datasets (Fashion-MNIST, digits) are always cached.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator

import numpy as np

from ..lazy import lazy_module
from .scan import ImageProblem, open_image
from .splits import ImageSet

torch = lazy_module("torch")


def decode_image(path: str, size: int, channels: int = 3, max_pixels: int | None = None) -> np.ndarray:
    """One image file → uint8 C×size×size: shorter side resized to ``size``, then centre-cropped.

    An image over ``max_pixels`` (None: dmltune's default cap, see :mod:`.scan`) is refused from its
    header, before anything is decoded; any failure raises ``RuntimeError("cannot decode image …")``.
    """
    from PIL import Image

    try:
        img = open_image(path, max_pixels)
    except ImageProblem as err:
        raise RuntimeError(f"cannot decode image {err.path}: {err.problem}; {err.fix}") from None
    try:
        img.load()
    except Exception as err:  # OSError for truncated data; PIL raises others for damaged files
        img.close()
        raise RuntimeError(f"cannot decode image {path}: {' '.join(str(err).split())}") from None
    with img:
        img = img.convert("RGB" if channels == 3 else "L")
        w, h = img.size
        scale = size / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
        arr = np.array(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))


def resize_array(images: np.ndarray, size: int) -> np.ndarray:
    """In-memory uint8 N×C×H×W to N×C×size×size (no-op when already that size)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    t = torch.from_numpy(images).float()
    t = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return t.round().clamp(0, 255).to(torch.uint8).numpy()


class _DecodeDataset:
    """Decodes image ``i`` of ``paths`` on demand: a map-style dataset for a DataLoader (no torch base
    class needed, so that importing this module does not import torch)."""

    def __init__(self, paths, size, channels, max_pixels=None):
        self.paths, self.size, self.channels, self.max_pixels = paths, size, channels, max_pixels

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return torch.from_numpy(decode_image(self.paths[i], self.size, self.channels, self.max_pixels))


class ImageSource:
    """uint8 batches of one image set on one device, cached when the set fits ``budget_bytes``."""

    def __init__(self, image_set: ImageSet, size: int, device, channels: int = 3, mode: str = "auto",
                 budget_bytes: float = 8e9, workers: int = 2):
        self.set, self.size, self.device = image_set, size, torch.device(device)
        self.channels = image_set.images.shape[1] if image_set.in_memory else channels
        self.workers = workers
        estimate = len(image_set) * self.channels * size * size
        if mode == "auto":
            mode = "device" if image_set.in_memory or estimate <= budget_bytes else "loader"
        if mode == "loader" and image_set.in_memory:
            mode = "device"  # nothing to decode: in-memory data is always cached
        self.mode = mode
        self.cache = self._build_cache() if mode == "device" else None

    def _build_cache(self) -> torch.Tensor:
        if self.set.in_memory:
            arr = resize_array(self.set.images, self.size)
        else:
            with ThreadPoolExecutor(max_workers=max(self.workers, 1)) as pool:
                arr = np.stack(list(pool.map(lambda p: decode_image(p, self.size, self.channels, self.set.max_pixels),
                                             self.set.paths)))
        cache = torch.from_numpy(np.ascontiguousarray(arr)).to(self.device)
        return cache

    def __len__(self) -> int:
        return len(self.set)

    def labels(self) -> torch.Tensor:
        return torch.from_numpy(self.set.labels).to(self.device)

    def batch(self, indices) -> torch.Tensor:
        """uint8 images of ``indices`` on the device."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        if self.cache is not None:
            return self.cache[idx.to(self.device)]
        decode = _DecodeDataset(self.set.paths, self.size, self.channels, self.set.max_pixels)
        return torch.stack([decode[i] for i in idx.tolist()]).to(self.device)

    def batches(self, index_batches: Iterable) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        """(uint8 images on the device, indices) for each batch of indices, lazily; in loader mode
        DataLoader workers decode ahead of use."""
        if self.cache is not None:
            for b in index_batches:
                yield self.batch(b), np.asarray(b)
            return
        pending: list[np.ndarray] = []

        def recorded():
            for b in index_batches:
                pending.append(np.asarray(b))
                yield pending[-1].tolist()

        loader = torch.utils.data.DataLoader(
            _DecodeDataset(self.set.paths, self.size, self.channels, self.set.max_pixels), batch_sampler=recorded(),
            num_workers=self.workers, pin_memory=self.device.type == "cuda")
        for images in loader:
            yield images.to(self.device, non_blocking=True), pending.pop(0)

    def sequential(self, batch_size: int) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        """Every image once, in order, for embedding the whole set."""
        n = len(self.set)
        return self.batches(np.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size))
