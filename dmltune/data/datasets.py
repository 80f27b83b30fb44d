"""Datasets by name, read from their standard on-disk layouts, with the standard class-disjoint splits.

| name | layout read | train / test classes |
|---|---|---|
| cub200 | CUB_200_2011/images.txt, image_class_labels.txt, images/ | 1–100 / 101–200 |
| cars196 | cars_annos.mat of the original release, car_ims/ | 1–98 / 99–196 |
| sop | Stanford_Online_Products/Ebay_train.txt, Ebay_test.txt | as the two files |
| inshop | list_eval_partition.txt (also under Eval/), img/ | train / query + gallery |
| folder | ROOT/<class>/<image> | first train_fraction of the sorted classes / rest |
| fashion_mnist | the four IDX files (gzipped or not) | 0–4 / 5–9 |
| digits | scikit-learn's bundled 8×8 digits | 0–4 / 5–9 |
| synthetic | random images generated in memory (benchmarks, smoke tests) | first half / second half |

A validation set is carved from the training classes (``val_fraction``, ``val_seed``). Nothing is
downloaded unless ``download: true`` is given where a download is possible (Fashion-MNIST).

The datasets read from image files (cub200, cars196, sop, inshop, folder) take ``max_pixels``, the
cap on one image's pixels that both the scan and the training-time decoder enforce, and, as a
context argument of :func:`load_dataset`, ``scan``: check every image's header before returning
(:mod:`.scan`; ``validate`` and ``run`` do this once per dataset, trials do not).
"""

from __future__ import annotations

import gzip
import inspect
import os
from pathlib import Path

import numpy as np

from ..registry import ConfigError, Param, Registry
from .scan import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, scan_image_files, scan_image_tree  # noqa: F401 (IMAGE_SUFFIXES re-exported)
from .splits import DatasetSplits, ImageSet, class_disjoint_splits, make_set, split_train_val

DATASETS = Registry("dataset")
FASHION_MNIST_DEFAULT = "/usr/share/datasets/fashion-mnist"


def _root_param(default=None, help="dataset folder") -> Param:
    return Param("root", str, default, nullable=True, help=help)


_SPLIT_PARAMS = (
    Param("val_fraction", float, 0.25, low=0.0, high=0.9, help="share of training classes held out for validation"),
    Param("val_seed", int, 0, low=0, help="seed of the validation-class draw"),
)
_FILE_PARAMS = (
    *_SPLIT_PARAMS,
    Param("max_pixels", int, DEFAULT_MAX_PIXELS, low=1,
          help="largest image allowed, in pixels (a bigger one is refused as a decompression bomb)"),
)


def _image_files(splits: DatasetSplits, max_pixels: int, scan: bool) -> DatasetSplits:
    """The pixel cap recorded on every image set (the decoder enforces it), and with ``scan`` every
    image file checked (header only; see :mod:`.scan`)."""
    sets = [s for s in (splits.train, splits.val, splits.test, splits.query, splits.gallery) if s is not None]
    for image_set in sets:
        image_set.max_pixels = max_pixels
    if scan:
        scan_image_files((p for s in sets for p in s.paths), max_pixels, dataset=splits.name)
    return splits


def _require(path: Path, dataset: str, how: str) -> Path:
    if not path.exists():
        raise ConfigError(f"dataset '{dataset}': {path} not found; {how}, and set dataset.root to its folder "
                          "(dmltune does not download this dataset)")
    return path


def _root(root, dataset, env, how) -> Path:
    root = root or os.environ.get(env)
    if not root:
        raise ConfigError(f"dataset '{dataset}' needs dataset.root (or ${env}); {how}")
    try:
        return Path(os.path.expanduser(root)).resolve()
    except (OSError, RuntimeError):  # Python < 3.13 raises RuntimeError for a symlink loop
        raise ConfigError(f"dataset '{dataset}': {root} is a symlink loop; {how}, and set dataset.root to it") from None


def _read_rows(path: Path, skip: int = 0) -> list[list[str]]:
    lines = path.read_text().splitlines()[skip:]
    return [line.split() for line in lines if line.strip()]


@DATASETS.register("cub200", _root_param(help="the CUB_200_2011 folder"), *_FILE_PARAMS)
def cub200(root=None, val_fraction=0.25, val_seed=0, max_pixels=DEFAULT_MAX_PIXELS, scan=False) -> DatasetSplits:
    """CUB-200-2011 birds: classes 1–100 train, 101–200 test."""
    how = "get CUB_200_2011.tgz from https://www.vision.caltech.edu/datasets/cub_200_2011/ and extract it"
    base = _root(root, "cub200", "DMLTUNE_CUB200", how)
    images = dict(_read_rows(_require(base / "images.txt", "cub200", how)))
    labels = dict(_read_rows(_require(base / "image_class_labels.txt", "cub200", how)))
    ids = sorted(images, key=int)
    paths = [str(base / "images" / images[i]) for i in ids]
    classes = [int(labels[i]) for i in ids]
    splits = class_disjoint_splits("cub200", classes, range(1, 101), range(101, 201), val_fraction, val_seed, paths=paths)
    return _image_files(splits, max_pixels, scan)


@DATASETS.register("cars196", _root_param(help="the folder with cars_annos.mat and car_ims/"), *_FILE_PARAMS)
def cars196(root=None, val_fraction=0.25, val_seed=0, max_pixels=DEFAULT_MAX_PIXELS, scan=False) -> DatasetSplits:
    """Stanford Cars196: classes 1–98 train, 99–196 test."""
    from scipy.io import loadmat

    how = ("get car_ims.tgz and cars_annos.mat of the original release "
           "(https://ai.stanford.edu/~jkrause/cars/car_dataset.html) and extract them side by side")
    base = _root(root, "cars196", "DMLTUNE_CARS196", how)
    annos = loadmat(str(_require(base / "cars_annos.mat", "cars196", how)), squeeze_me=True)["annotations"]
    paths = [str(base / str(a["relative_im_path"])) for a in annos]
    classes = [int(a["class"]) for a in annos]
    splits = class_disjoint_splits("cars196", classes, range(1, 99), range(99, 197), val_fraction, val_seed, paths=paths)
    return _image_files(splits, max_pixels, scan)


@DATASETS.register("sop", _root_param(help="the Stanford_Online_Products folder"), *_FILE_PARAMS)
def sop(root=None, val_fraction=0.25, val_seed=0, max_pixels=DEFAULT_MAX_PIXELS, scan=False) -> DatasetSplits:
    """Stanford Online Products: Ebay_train.txt classes train, Ebay_test.txt classes test."""
    how = "get Stanford_Online_Products.zip from https://cvgl.stanford.edu/projects/lifted_struct/ and extract it"
    base = _root(root, "sop", "DMLTUNE_SOP", how)
    splits = {}
    for part in ("train", "test"):
        rows = _read_rows(_require(base / f"Ebay_{part}.txt", "sop", how), skip=1)
        splits[part] = ([int(r[1]) for r in rows], [str(base / r[3]) for r in rows])
    train_classes = sorted(set(splits["train"][0]))
    test_classes = sorted(set(splits["test"][0]))
    fit, val = split_train_val(train_classes, val_fraction, val_seed)
    return _image_files(DatasetSplits(
        name="sop",
        train=make_set(splits["train"][0], fit, paths=splits["train"][1]),
        val=make_set(splits["train"][0], val, paths=splits["train"][1]),
        test=make_set(splits["test"][0], test_classes, paths=splits["test"][1]),
    ), max_pixels, scan)


@DATASETS.register("inshop", _root_param(help="the In-shop Clothes Retrieval folder"), *_FILE_PARAMS)
def inshop(root=None, val_fraction=0.25, val_seed=0, max_pixels=DEFAULT_MAX_PIXELS, scan=False) -> DatasetSplits:
    """DeepFashion In-Shop: train items; test as query and gallery sets of the same items."""
    how = ("get the In-shop Clothes Retrieval Benchmark (img/ and Eval/list_eval_partition.txt) from "
           "https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html")
    base = _root(root, "inshop", "DMLTUNE_INSHOP", how)
    listing = base / "list_eval_partition.txt"
    if not listing.exists() and (base / "Eval" / "list_eval_partition.txt").exists():
        listing = base / "Eval" / "list_eval_partition.txt"
    rows = _read_rows(_require(listing, "inshop", how), skip=2)
    by_status: dict[str, tuple[list, list]] = {"train": ([], []), "query": ([], []), "gallery": ([], [])}
    for path, item, status in rows:
        by_status[status][0].append(item)
        by_status[status][1].append(str(base / path))
    train_items = sorted(set(by_status["train"][0]))
    test_items = sorted(set(by_status["query"][0]) | set(by_status["gallery"][0]))
    fit, val = split_train_val(train_items, val_fraction, val_seed)
    labels, paths = by_status["train"]
    return _image_files(DatasetSplits(
        name="inshop",
        train=make_set(labels, fit, paths=paths),
        val=make_set(labels, val, paths=paths),
        test=None,
        query=make_set(by_status["query"][0], test_items, paths=by_status["query"][1]),
        gallery=make_set(by_status["gallery"][0], test_items, paths=by_status["gallery"][1]),
    ), max_pixels, scan)


@DATASETS.register(
    "folder",
    _root_param(help="a folder with one sub-folder of images per class"),
    Param("train_fraction", float, 0.5, low=0.1, high=0.9, help="share of the (sorted) classes used for training"),
    *_FILE_PARAMS,
)
def folder(root=None, train_fraction=0.5, val_fraction=0.25, val_seed=0, max_pixels=DEFAULT_MAX_PIXELS,
           scan=False) -> DatasetSplits:
    """Any class-per-folder tree: the first train_fraction of the sorted class folders train, the rest test.

    Class folders are the root's sub-folders, images the files with an image suffix directly inside
    them; names starting with a dot are skipped. With ``scan`` the tree is checked first
    (:func:`.scan.scan_image_tree`): no broken or oversized image, no loop, no single-image class.
    """
    base = _root(root, "folder", "DMLTUNE_FOLDER", "point it at a folder holding one sub-folder per class")
    tree = scan_image_tree(base, max_pixels, dataset="folder", check_files=scan)
    classes = tree.classes
    if len(classes) < 4:
        raise ConfigError(f"dataset 'folder': {base} has {len(classes)} class folders with images; at least 4 are needed")
    n_train = min(max(int(round(train_fraction * len(classes))), 2), len(classes) - 2)
    splits = class_disjoint_splits("folder", tree.labels, classes[:n_train], classes[n_train:], val_fraction, val_seed,
                                   paths=tree.paths)
    return _image_files(splits, max_pixels, scan=False)  # already scanned with the tree


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST format), gzipped or not, as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ConfigError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ConfigError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {body.size}")
    return body.reshape(dims)


def _idx_file(base: Path, stem: str, how: str) -> Path:
    for candidate in (base / f"{stem}.gz", base / stem):
        if candidate.exists():
            return candidate
    raise ConfigError(f"dataset 'fashion_mnist': {base / (stem + '.gz')} not found; {how}")


@DATASETS.register(
    "fashion_mnist",
    _root_param(FASHION_MNIST_DEFAULT, help="folder with the four IDX files"),
    Param("download", bool, False, help="download the IDX files into root if they are missing"),
    *_SPLIT_PARAMS,
)
def fashion_mnist(root=FASHION_MNIST_DEFAULT, download=False, val_fraction=0.25, val_seed=0) -> DatasetSplits:
    """Fashion-MNIST 28×28 grayscale, all 70,000 images: classes 0–4 train, 5–9 test."""
    base = Path(os.path.expanduser(root or FASHION_MNIST_DEFAULT)).resolve()
    how = "install Debian's dataset-fashion-mnist package, point dataset.root at the IDX files, or set download: true"
    if download:
        from torchvision.datasets import FashionMNIST

        for train in (True, False):  # torchvision keeps the files in <root>/FashionMNIST/raw
            FashionMNIST(str(base), train=train, download=True)
        base = base / "FashionMNIST" / "raw"
    images = np.concatenate([read_idx(_idx_file(base, "train-images-idx3-ubyte", how)),
                             read_idx(_idx_file(base, "t10k-images-idx3-ubyte", how))])
    labels = np.concatenate([read_idx(_idx_file(base, "train-labels-idx1-ubyte", how)),
                             read_idx(_idx_file(base, "t10k-labels-idx1-ubyte", how))]).astype(np.int64)
    return class_disjoint_splits("fashion_mnist", labels, range(5), range(5, 10), val_fraction, val_seed,
                                 images=images[:, None], channels=1)


@DATASETS.register("digits", *_SPLIT_PARAMS)
def digits(val_fraction=0.25, val_seed=0) -> DatasetSplits:
    """scikit-learn's bundled 8×8 digits (1,797 images): classes 0–4 train, 5–9 test."""
    pixels, labels = digits_arrays()
    images = np.round(pixels * (255 / 16)).astype(np.uint8)[:, None]
    return class_disjoint_splits("digits", labels, range(5), range(5, 10), val_fraction, val_seed,
                                 images=images, channels=1)


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The digits' 1797×8×8 pixel values (0–16) and labels, as ``sklearn.datasets.load_digits`` gives
    them. Read straight from the data file scikit-learn ships (it takes milliseconds, where importing
    ``sklearn.datasets`` takes most of a second, which ``dmltune validate`` would pay); through
    ``load_digits`` where that file is not where it has always been."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is not None and path.is_file():
        table = np.loadtxt(path, delimiter=",")
        if table.shape == (1797, 65):
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images, data.target


@DATASETS.register(
    "synthetic",
    Param("classes", int, 20, low=4, high=100000, help="number of classes (half train, half test)"),
    Param("per_class", int, 10, low=1, high=10000, help="images per class"),
    Param("size", int, 32, low=4, high=1024, help="image side in pixels"),
    Param("channels", int, 3, low=1, high=3, help="1 (grayscale) or 3"),
    Param("seed", int, 0, low=0, help="seed of the random images"),
    *_SPLIT_PARAMS,
)
def synthetic(classes=20, per_class=10, size=32, channels=3, seed=0, val_fraction=0.25, val_seed=0) -> DatasetSplits:
    """Random uint8 images with a per-class mean colour, in memory: for benchmarks and smoke tests."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    base = rng.integers(0, 256, (classes, channels, 1, 1))
    noise = rng.integers(-40, 41, (len(labels), channels, size, size))
    images = np.clip(base[labels] + noise, 0, 255).astype(np.uint8)
    half = classes // 2
    return class_disjoint_splits("synthetic", labels, range(half), range(half, classes), val_fraction, val_seed,
                                 images=images, channels=channels)


def load_dataset(name: str, root: str | None = None, val_fraction: float = 0.25, val_seed: int = 0,
                 scan: bool = False, **params) -> DatasetSplits:
    """The splits of dataset ``name``; unknown names, bad parameters or missing files raise ConfigError.

    ``root`` is passed on only when given, so datasets without files (digits, synthetic) accept
    ``root=None``; an empty root means the dataset's default (or its environment variable).
    ``scan``: datasets read from image files first check every image (header only, see
    :mod:`.scan`) and refuse a bad one in one line; in-memory datasets ignore it.
    """
    if root is not None:
        params["root"] = root
    context = {"scan": scan} if "scan" in inspect.signature(DATASETS.lookup(name).factory).parameters else {}
    return DATASETS.build(name, {"val_fraction": val_fraction, "val_seed": val_seed, **params}, **context)


__all__ = ["DATASETS", "ImageSet", "load_dataset", "read_idx"]
