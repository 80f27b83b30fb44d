"""Images per second into the network: the device cache + batch transform vs a PIL DataLoader.

    python benchmarks/data.py [--device cpu|cuda] [--images 400] [--workers 2] [--batches 20]

Writes synthetic JPEG files (500×375, like CUB photos) to a temporary folder, then measures
(1) the decode-once cache: uint8 batches on the device → random crop + flip + normalise, 224 px;
(2) a torchvision-style PIL DataLoader (decode, resize 256, random crop 224, flip, to tensor,
normalise, per image in worker processes), the papers' input pipeline;
(3) the same cache path at 28 px on Fashion-MNIST-sized arrays.
Cache build time is reported separately: it is paid once per trial. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, sync, write_json  # noqa: E402

from dmltune.data import BatchTransform, ClassBalancedSampler, ImageSet, ImageSource, TransformSpec  # noqa: E402
from dmltune.models.backbones import GRAY_SPEC, IMAGENET_SPEC  # noqa: E402


def synthetic_jpegs(folder: Path, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(arr).save(path, quality=90)
        paths.append(str(path))
    return paths


def cache_rate(source, transform, sampler, batches, device) -> float:
    it = iter(source.batches(sampler))
    images, _ = next(it)
    transform(images, train=True)  # warm-up
    sync(device)
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        try:
            images, _ = next(it)
        except StopIteration:
            it = iter(source.batches(sampler))
            images, _ = next(it)
        n += transform(images, train=True).shape[0]
    sync(device)
    return n / (time.perf_counter() - start)


def pil_loader_rate(paths, batch_size, workers, batches, device) -> float:
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(256), T.RandomCrop(224), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(IMAGENET_SPEC["mean"], IMAGENET_SPEC["std"])])

    class Files(torch.utils.data.Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            with Image.open(paths[i]) as img:
                return tf(img.convert("RGB"))

    loader = torch.utils.data.DataLoader(Files(), batch_size=batch_size, shuffle=True, num_workers=workers,
                                         drop_last=True, persistent_workers=workers > 0)
    it = iter(loader)
    next(it)  # start the workers
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        try:
            x = next(it)
        except StopIteration:
            it = iter(loader)
            x = next(it)
        n += x.to(device).shape[0]
    sync(device)
    return n / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=80)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results/data.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = synthetic_jpegs(Path(tmp), args.images)
        labels = np.arange(args.images) % 40
        spec = TransformSpec.from_config({"preset": "imagenet"})
        start = time.perf_counter()
        source = ImageSource(ImageSet(labels, paths=paths, classes=list(range(40))), spec.resize, device,
                             mode="device", workers=args.workers)
        sync(device)
        rows.append({"what": f"cache build: decode {args.images} JPEGs to 256 px", "img_per_s": args.images / (time.perf_counter() - start)})
        sampler = ClassBalancedSampler(labels, args.batch_size, 5, batches_per_epoch=10**6)
        transform = BatchTransform(spec, IMAGENET_SPEC, 3, device)
        rows.append({"what": "cache → crop 224 + flip + normalise", "img_per_s": cache_rate(source, transform, sampler, args.batches, device)})
        rows.append({"what": f"PIL DataLoader, {args.workers} workers, 224 px", "img_per_s": pil_loader_rate(paths, args.batch_size, args.workers, args.batches, device)})
    small = np.random.default_rng(0).integers(0, 255, (20000, 1, 28, 28), dtype=np.uint8)
    small_labels = np.arange(20000) % 5
    spec = TransformSpec.from_config({"preset": "28px"})
    source = ImageSource(ImageSet(small_labels, images=small, classes=list(range(5))), spec.resize, device)
    sampler = ClassBalancedSampler(small_labels, 100, 20, batches_per_epoch=10**6)
    rows.append({"what": "cache → 28 px shift + flip + normalise", "img_per_s": cache_rate(
        source, BatchTransform(spec, GRAY_SPEC, 1, device), sampler, args.batches * 5, device)})

    on_gpu = device.type == "cuda"
    print(f"{header(device)}, batch {args.batch_size}")
    print(f"{'what':<48} {'img/s':>10}")
    for r in rows:
        print(f"{r['what']:<48} {r['img_per_s']:>10.0f}")
    if on_gpu:
        ok = rows[1]["img_per_s"] >= 20000
        print(f"target ≥ 20,000 img/s from the cache at 224 px on an H100: {'ok' if ok else 'MISS'}")
    write_json(args.out, "data", device, rows, batch_size=args.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
