"""Datasets in their on-disk layouts (miniature trees), splits, the sampler, transforms and caching."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dmltune.data import (
    DATASETS,
    BatchTransform,
    ClassBalancedSampler,
    ImageSource,
    TransformSpec,
    decode_image,
    load_dataset,
    read_idx,
)
from dmltune.registry import ConfigError


def write_image(path: Path, colour, size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def colour_of(class_id, j):
    return (class_id * 7 % 256, j * 30 % 256, 100)


def assert_disjoint(splits):
    sets = [splits.train, splits.val, splits.test] if splits.test is not None else [splits.train, splits.val]
    class_sets = [set(s.classes) for s in sets]
    for i in range(len(class_sets)):
        for j in range(i + 1, len(class_sets)):
            assert not class_sets[i] & class_sets[j]
    for s in sets:
        assert set(s.labels.tolist()) == set(range(s.num_classes))


@pytest.fixture
def cub_tree(tmp_path):
    root = tmp_path / "CUB_200_2011"
    lines, labels = [], []
    image_id = 1
    for c in range(1, 201):
        for j in range(2):
            rel = f"{c:03d}.Bird_{c}/img_{j}.jpg"
            if c in (1, 2, 3, 4, 150, 200):  # only a few real files: metadata drives the split
                write_image(root / "images" / rel, colour_of(c, j))
            lines.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c}")
            image_id += 1
    (root / "images.txt").write_text("\n".join(lines) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    return root


def test_cub200_layout_and_split(cub_tree):
    splits = load_dataset("cub200", root=str(cub_tree), val_fraction=0.25, val_seed=3)
    assert splits.test.classes == list(range(101, 201))
    assert sorted(splits.train.classes + splits.val.classes) == list(range(1, 101))
    assert splits.val.num_classes == 25 and len(splits.test) == 200
    assert_disjoint(splits)
    first = splits.train.paths[0]
    assert first.startswith(str(cub_tree / "images")) and "Bird" in first
    other = load_dataset("cub200", root=str(cub_tree), val_fraction=0.25, val_seed=4)
    assert other.val.classes != splits.val.classes  # the validation draw depends on its seed
    assert set(other.val.classes) <= set(range(1, 101))


def test_cars196_reads_the_mat_annotations(tmp_path):
    from scipy.io import savemat

    dtype = [("relative_im_path", "O"), ("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"),
             ("bbox_y2", "O"), ("class", "O"), ("test", "O")]
    rows = [(f"car_ims/{i:06d}.jpg", 1, 1, 5, 5, c, i % 2) for i, c in enumerate(list(range(1, 197)) * 2, start=1)]
    savemat(tmp_path / "cars_annos.mat", {"annotations": np.array(rows, dtype=dtype).reshape(1, -1)})
    splits = load_dataset("cars196", root=str(tmp_path), val_fraction=0.0)
    assert splits.train.classes == list(range(1, 99)) and splits.test.classes == list(range(99, 197))
    assert len(splits.train) == 196 and splits.val.num_classes == 0
    assert splits.train.paths[0] == str(tmp_path / "car_ims" / "000001.jpg")
    assert splits.native_size is None  # files of varying size


def test_sop_uses_its_two_files(tmp_path):
    header = "image_id class_id super_class_id path\n"
    train = "".join(f"{i} {c} 1 bicycle_final/{c}_{i}.JPG\n" for i, c in enumerate([1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6], 1))
    test = "".join(f"{i} {c} 2 chair_final/{c}_{i}.JPG\n" for i, c in enumerate([7, 7, 8, 8, 9], 1))
    (tmp_path / "Ebay_train.txt").write_text(header + train)
    (tmp_path / "Ebay_test.txt").write_text(header + test)
    splits = load_dataset("sop", root=str(tmp_path), val_fraction=0.34)
    assert splits.test.classes == [7, 8, 9] and len(splits.test) == 5
    assert splits.val.num_classes == 2 and splits.train.num_classes == 4
    assert_disjoint(splits)


def test_inshop_query_and_gallery(tmp_path):
    rows = ["img/WOMEN/a/id_00000001/01_1_front.jpg id_00000001 train",
            "img/WOMEN/a/id_00000001/02_1_side.jpg id_00000001 train",
            "img/WOMEN/a/id_00000002/01_1_front.jpg id_00000002 train",
            "img/WOMEN/a/id_00000003/01_1_front.jpg id_00000003 train",
            "img/WOMEN/a/id_00000004/01_1_front.jpg id_00000004 train",
            "img/MEN/b/id_00000005/01_1_front.jpg id_00000005 query",
            "img/MEN/b/id_00000005/02_2_side.jpg id_00000005 gallery",
            "img/MEN/b/id_00000006/01_1_front.jpg id_00000006 gallery"]
    (tmp_path / "Eval").mkdir()
    (tmp_path / "Eval" / "list_eval_partition.txt").write_text(f"{len(rows)}\nimage_name item_id evaluation_status\n" + "\n".join(rows))
    splits = load_dataset("inshop", root=str(tmp_path), val_fraction=0.5)
    assert splits.test is None and len(splits.query) == 1 and len(splits.gallery) == 2
    # query and gallery share one label space
    assert splits.query.classes == splits.gallery.classes == ["id_00000005", "id_00000006"]
    assert splits.query.labels.tolist() == [0] and splits.gallery.labels.tolist() == [0, 1]
    assert splits.val.num_classes == 2 and splits.train.num_classes == 2


def test_folder_tree_split_by_class(tmp_path):
    for c in range(6):
        for j in range(3):
            write_image(tmp_path / f"class_{c}" / f"{j}.png", colour_of(c, j))
    (tmp_path / "class_0" / "notes.txt").write_text("not an image")
    splits = load_dataset("folder", root=str(tmp_path), train_fraction=0.5, val_fraction=0.0)
    assert splits.train.classes == ["class_0", "class_1", "class_2"]
    assert splits.test.classes == ["class_3", "class_4", "class_5"] and len(splits.test) == 9
    assert all(p.endswith(".png") for p in splits.train.paths)


def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def test_fashion_mnist_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (30, 28, 28)))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(30) % 10)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 255, (10, 28, 28)))  # not gzipped
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(10))
    splits = load_dataset("fashion_mnist", root=str(tmp_path), val_fraction=0.0)
    assert splits.channels == 1 and splits.native_size == 28 and splits.train.images.shape == (20, 1, 28, 28)
    assert splits.train.classes == [0, 1, 2, 3, 4] and splits.test.classes == [5, 6, 7, 8, 9]
    truncated = tmp_path / "train-labels-idx1-ubyte.gz"
    truncated.write_bytes(gzip.compress(bytes([0, 0, 8, 1]) + (30).to_bytes(4, "big") + bytes(5)))
    with pytest.raises(ConfigError, match="truncated"):
        read_idx(truncated)


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists(),
                    reason="Debian's dataset-fashion-mnist package is not installed")
def test_real_fashion_mnist_from_debian_package():
    splits = load_dataset("fashion_mnist", val_fraction=0.0)
    assert len(splits.train) == 35000 and len(splits.test) == 35000


def test_digits_bundled():
    splits = load_dataset("digits", root=None, val_fraction=0.4, val_seed=1)  # an empty root is accepted
    assert splits.train.images.dtype == np.uint8 and splits.train.images.max() == 255
    assert splits.channels == 1 and splits.native_size == 8
    # sklearn's 0..16 grey levels scale to 0..255
    from sklearn.datasets import load_digits
    raw = load_digits()
    first = int(np.flatnonzero(np.isin(raw.target, splits.train.classes))[0])
    np.testing.assert_array_equal(splits.train.images[0, 0], np.round(raw.images[first] * 255 / 16))
    assert splits.val.num_classes == 2 and splits.train.num_classes == 3 and splits.test.num_classes == 5
    assert_disjoint(splits)


@pytest.mark.parametrize("name, params, fragment", [
    ("cub200", {"root": "/no/such/CUB"}, "/no/such/CUB/images.txt not found"),
    ("cars196", {"root": "/no/such/cars"}, "/no/such/cars/cars_annos.mat not found"),
    ("sop", {"root": "/no/such/sop"}, "Ebay_train.txt not found"),
    ("inshop", {"root": "/no/such/inshop"}, "list_eval_partition.txt not found"),
    ("fashion_mnist", {"root": "/no/such/fm"}, "dataset-fashion-mnist"),
    ("cub200", {}, "needs dataset.root"),
    ("cub200", {"root": "/x", "val_fraction": 1.5}, "outside its valid range"),
    ("cub_200", {}, "did you mean 'cub200'"),
])
def test_missing_data_and_bad_parameters(name, params, fragment, monkeypatch):
    monkeypatch.delenv("DMLTUNE_CUB200", raising=False)
    with pytest.raises(ConfigError) as info:
        load_dataset(name, **params)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    if "not found" in fragment and name != "fashion_mnist":
        assert "https://" in str(info.value) and "does not download" in str(info.value)


def test_registry_names():
    assert set(DATASETS) == {"cub200", "cars196", "sop", "inshop", "folder", "fashion_mnist", "digits", "synthetic"}


def test_synthetic_dataset_is_seeded_and_class_disjoint():
    a = load_dataset("synthetic", classes=8, per_class=3, size=16, val_fraction=0.5)
    b = load_dataset("synthetic", classes=8, per_class=3, size=16, val_fraction=0.5)
    assert np.array_equal(a.train.images, b.train.images) and a.train.images.shape[1:] == (3, 16, 16)
    assert a.test.classes == [4, 5, 6, 7] and a.val.num_classes == 2
    assert_disjoint(a)



@pytest.mark.parametrize("n_classes", [0, 1, 2, 3, 4, 5, 40])
def test_validation_classes_partition_the_training_classes(n_classes):
    from dmltune.data.splits import split_train_val

    classes = list(range(100, 100 + n_classes))
    fit, val = split_train_val(classes, 0.25, seed=0)
    assert sorted(fit + val) == classes and not set(fit) & set(val)
    # at least 2 classes on each side when there are enough, never more than the class count
    expected = 0 if n_classes < 3 else min(max(round(0.25 * n_classes), 2), n_classes - 2)
    assert len(val) == expected
    assert split_train_val(classes, 0.0, seed=0) == (classes, [])

# --- sampler ------------------------------------------------------------------------------------


def test_sampler_batches_are_class_balanced_and_reproducible():
    labels = np.repeat(np.arange(10), 7)
    labels = np.concatenate([labels, [10, 10]])  # a class with fewer than K images
    sampler = ClassBalancedSampler(labels, batch_size=20, k=4, seed=5)
    assert len(sampler) == len(labels) // 20
    sampler.set_epoch(2)
    batches = list(sampler)
    seen = set()
    for b in batches:
        assert len(b) == 20
        classes, counts = np.unique(labels[b], return_counts=True)
        assert len(classes) == 5 and (counts == 4).all()
        seen.update(classes.tolist())
    again = ClassBalancedSampler(labels, batch_size=20, k=4, seed=5)
    again.set_epoch(2)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    again.set_epoch(3)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, again))
    state = sampler.state_dict()
    restored = ClassBalancedSampler(labels, batch_size=20, k=4, seed=0)
    restored.load_state_dict(state)
    assert all(np.array_equal(a, b) for a, b in zip(batches, restored))


def test_sampler_covers_small_classes_with_replacement():
    labels = np.array([0, 0, 0, 1, 2, 2, 2, 2])
    sampler = ClassBalancedSampler(labels, batch_size=12, k=4, batches_per_epoch=3)
    for b in sampler:
        assert set(labels[b]) == {0, 1, 2}
        assert (b[labels[b] == 1] == 3).all()


@pytest.mark.parametrize("batch, k, fragment", [(10, 4, "not divisible"), (40, 2, "needs 20 classes")])
def test_sampler_rejects_impossible_batches(batch, k, fragment):
    with pytest.raises(ConfigError, match=fragment):
        ClassBalancedSampler(np.repeat(np.arange(5), 3), batch, k)


# --- transforms ---------------------------------------------------------------------------------

RGB = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "channel_order": "RGB", "value_range": 255.0}


def gradient_images(n=4, size=32):
    x = torch.arange(size, dtype=torch.uint8).view(1, 1, 1, size).expand(n, 3, size, size).clone()
    x[:, 1] = torch.arange(size, dtype=torch.uint8).view(1, size, 1)
    x[:, 2] = torch.arange(n, dtype=torch.uint8).view(n, 1, 1) * 10
    return x


def test_centre_crop_is_exact_and_deterministic():
    spec = TransformSpec.from_config({"preset": "imagenet", "resize": 32, "crop": 24})
    t = BatchTransform(spec, RGB, 3, "cpu")
    x = gradient_images()
    out = t(x, train=False)
    assert torch.equal(out, x[..., 4:28, 4:28].float())
    assert torch.equal(out, t(x, train=False))


def test_random_crops_are_exact_pixel_windows_and_flips_mirror():
    spec = TransformSpec.from_config({"preset": "imagenet", "resize": 32, "crop": 24})
    t = BatchTransform(spec, RGB, 3, "cpu", seed=1)
    x = gradient_images(n=64)
    out = t(x, train=True)
    assert out.shape == (64, 3, 24, 24)
    flipped = 0
    for i in range(64):
        left = out[i, 0, 0, 0].item()
        row = out[i, 0, 0]
        if row[0] > row[-1]:  # mirrored window: columns run backwards
            flipped += 1
            assert torch.equal(row, torch.arange(left, left - 24, -1).float())
        else:
            assert torch.equal(row, torch.arange(left, left + 24).float())
        top = out[i, 1, 0, 0].item()
        assert torch.equal(out[i, 1, :, 0], torch.arange(top, top + 24).float())  # rows never flip
        assert 0 <= top <= 8
    assert 10 < flipped < 54


def test_random_resized_crop_and_small_presets():
    spec = TransformSpec.from_config({"preset": "imagenet", "resize": 32, "crop": 16, "random_resized_crop": True})
    out = BatchTransform(spec, RGB, 3, "cpu")(gradient_images(8), train=True)
    assert out.shape == (8, 3, 16, 16) and out.min() >= 0 and out[:, :2].max() <= 31
    for preset, size, shift in (("28px", 28, 2), ("8px", 8, 1)):
        spec = TransformSpec.from_config({"preset": preset})
        gray = {"mean": (0.0,), "std": (1.0,), "value_range": 255.0}
        x = torch.full((16, 1, size, size), 200, dtype=torch.uint8)
        t = BatchTransform(spec, gray, 1, "cpu")
        assert torch.equal(t(x, train=False), x.float())
        shifted = t(x, train=True)
        assert shifted.shape == x.shape
        # zero padding enters from at most `shift` pixels at the border
        assert (shifted[:, :, shift:-shift, shift:-shift] == 200).all()
        assert (shifted == 0).any()


def test_normalisation_follows_the_input_spec():
    x = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    x[:, 0], x[:, 1], x[:, 2] = 255, 128, 0  # R, G, B
    spec = TransformSpec.from_config({"preset": "imagenet", "resize": 4, "crop": 4})
    imagenet = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "channel_order": "RGB", "value_range": 1.0}
    out = BatchTransform(spec, imagenet, 3, "cpu")(x, train=False)
    expected = [(1.0 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (0.0 - 0.406) / 0.225]
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor(expected))
    bgr = {"mean": (104.0, 117.0, 128.0), "std": (1.0, 1.0, 1.0), "channel_order": "BGR", "value_range": 255.0}
    out = BatchTransform(spec, bgr, 3, "cpu")(x, train=False)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0 - 104.0, 128 - 117.0, 255 - 128.0]))


def test_grayscale_expands_for_rgb_backbones():
    spec = TransformSpec.from_config({"preset": "28px"})
    x = torch.randint(0, 255, (2, 1, 28, 28), dtype=torch.uint8)
    out = BatchTransform(spec, RGB, 3, "cpu")(x, train=False)
    assert out.shape == (2, 3, 28, 28) and torch.equal(out[:, 0], out[:, 2])


def test_transform_randomness_is_seeded_and_restorable():
    spec = TransformSpec.from_config({"preset": "imagenet", "resize": 32, "crop": 24})
    a, b = BatchTransform(spec, RGB, 3, "cpu", seed=3), BatchTransform(spec, RGB, 3, "cpu", seed=3)
    x = gradient_images(8)
    state = a.state_dict()
    first = a(x, train=True)
    assert torch.equal(first, b(x, train=True))
    a.load_state_dict(state)
    assert torch.equal(first, a(x, train=True))


# --- decoding, cache and loader -------------------------------------------------------------------


def test_decode_resizes_shorter_side_and_centre_crops(tmp_path):
    img = np.zeros((20, 40, 3), dtype=np.uint8)
    img[:, 10:30] = 255  # a white band in the middle of a wide image
    Image.fromarray(img).save(tmp_path / "wide.png")
    out = decode_image(str(tmp_path / "wide.png"), 10)
    assert out.shape == (3, 10, 10)
    assert out[:, :, 1:-1].min() > 200  # the centre crop is the white band (edges blend)


@pytest.mark.parametrize("mode", ["device", "loader"])
def test_cache_and_loader_give_the_same_batches(tmp_path, mode):
    for c in range(6):
        for j in range(3):
            write_image(tmp_path / f"c{c}" / f"{j}.png", colour_of(c, j), size=(20, 16))
    splits = load_dataset("folder", root=str(tmp_path), val_fraction=0.0)
    source = ImageSource(splits.test, 8, "cpu", mode=mode, workers=0)
    assert source.mode == mode
    reference = np.stack([decode_image(p, 8) for p in splits.test.paths])
    got = torch.cat([images for images, _ in source.sequential(batch_size=4)])
    assert torch.equal(got, torch.from_numpy(reference))
    idx = np.array([5, 0, 3])
    assert torch.equal(source.batch(idx), torch.from_numpy(reference[idx]))


def test_cache_falls_back_to_loader_above_the_budget(tmp_path):
    for c in range(4):
        write_image(tmp_path / f"c{c}" / "0.png", colour_of(c, 0))
    splits = load_dataset("folder", root=str(tmp_path), val_fraction=0.0, train_fraction=0.5)
    assert ImageSource(splits.train, 8, "cpu", budget_bytes=10).mode == "loader"
    assert ImageSource(splits.train, 8, "cpu", budget_bytes=1e6).mode == "device"
    in_memory = load_dataset("digits", val_fraction=0.0)
    assert ImageSource(in_memory.train, 8, "cpu", budget_bytes=10).mode == "device"


def test_undecodable_image_names_its_path(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(RuntimeError, match="cannot decode image .*broken.jpg"):
        decode_image(str(bad), 8)


def test_digits_read_from_scikit_learns_file_equal_load_digits():
    from sklearn.datasets import load_digits

    from dmltune.data.datasets import digits_arrays

    pixels, labels = digits_arrays()
    reference = load_digits()
    assert np.array_equal(pixels, reference.images) and np.array_equal(labels, reference.target)
    assert labels.dtype == np.int64
