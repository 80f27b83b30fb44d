"""The header-only scan of image datasets: bad files, loops, oversized images and class counts are
refused in one line naming the file, before any trial starts (dmltune.data.scan, study _check_data)."""

import os
import struct
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from dmltune.data import decode_image, load_dataset
from dmltune.data.scan import DEFAULT_MAX_PIXELS, scan_image_files, scan_image_tree
from dmltune.registry import ConfigError
from dmltune.study import parse_study


def write_image(path: Path, colour=(10, 120, 200), size=(12, 10), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt)


def make_tree(root: Path, classes=6, per_class=3, suffix=".png"):
    for c in range(classes):
        for j in range(per_class):
            write_image(root / f"class_{c:02d}" / f"{j}{suffix}", (c * 30 % 256, j * 60 % 256, 90))
    return root


def png_claiming(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose header claims width × height pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def refused(call, *fragments) -> str:
    with pytest.raises(ConfigError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert str(fragment) in message, message
    return message


def test_a_sound_tree_passes_and_reports(tmp_path):
    make_tree(tmp_path, classes=4, per_class=2)
    write_image(tmp_path / "class_00" / "big.jpg", size=(64, 48), fmt="JPEG")
    (tmp_path / "class_01" / "notes.txt").write_text("not an image")
    (tmp_path / "class_01" / "._0.png").write_bytes(b"macOS resource fork, not an image")  # hidden: skipped
    (tmp_path / "class_02" / "nested").mkdir()
    report = scan_image_tree(tmp_path, DEFAULT_MAX_PIXELS)
    assert report.checked and report.classes == ["class_00", "class_01", "class_02", "class_03"]
    assert len(report.paths) == len(report.labels) == 9
    assert report.largest == (str(tmp_path / "class_00" / "big.jpg"), 64 * 48)
    assert str(tmp_path / "class_01" / "notes.txt") in report.ignored
    assert str(tmp_path / "class_02" / "nested") in report.ignored
    assert "9 images in 4 classes (checked)" in report.summary()


@pytest.mark.parametrize("damage, fragment", [
    (lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
    (lambda p: p.write_bytes(b"not an image at all"), "is not an image PIL can read"),
    (lambda p: p.write_bytes(p.read_bytes()[:60]), "is damaged"),  # a PNG cut short: chunk checks fail
    (lambda p: p.write_bytes(png_claiming(20000, 20000)), "pixels"),
])
def test_a_bad_file_is_refused_naming_it(tmp_path, damage, fragment):
    make_tree(tmp_path)
    bad = tmp_path / "class_03" / "1.png"
    damage(bad)
    message = refused(lambda: scan_image_tree(tmp_path), "dataset 'folder'", bad, fragment)
    assert "; " in message  # ... and the fix follows
    refused(lambda: load_dataset("folder", root=str(tmp_path), scan=True), bad, fragment)
    load_dataset("folder", root=str(tmp_path))  # trials do not scan: the listing alone is fine


def test_the_pixel_cap_names_the_size_and_can_be_raised(tmp_path):
    make_tree(tmp_path)
    bomb = tmp_path / "class_00" / "0.png"
    bomb.write_bytes(png_claiming(10000, 6000))  # 60 MP: under PIL's limit, over a dataset cap of 50 MP
    refused(lambda: load_dataset("folder", root=str(tmp_path), scan=True, max_pixels=50_000_000),
            bomb, "10000×6000 = 60,000,000 pixels, over the cap of 50,000,000 pixels", "max_pixels")
    splits = load_dataset("folder", root=str(tmp_path), scan=True, max_pixels=70_000_000)  # raised: accepted
    assert splits.train.max_pixels == splits.test.max_pixels == 70_000_000
    huge = tmp_path / "class_01" / "0.png"
    huge.write_bytes(png_claiming(20000, 20000))  # over twice PIL's own limit: PIL itself raises; still one line
    refused(lambda: scan_image_tree(tmp_path), huge, "over the cap of 89,478,485 pixels", "max_pixels")
    assert scan_image_tree(tmp_path, 500_000_000).largest == (str(huge), 400_000_000)  # header only: no decoding


def test_the_decoder_refuses_a_bomb_with_an_error_not_a_warning(tmp_path):
    import warnings

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(20000, 20000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeError, match=f"cannot decode image {bomb}: is .*400,000,000 pixels, over the cap"):
            decode_image(str(bomb), 8)
        small = tmp_path / "small.png"
        write_image(small)
        with pytest.raises(RuntimeError, match="over the cap of 100 pixels"):
            decode_image(str(small), 8, max_pixels=100)
        assert decode_image(str(small), 8).shape == (3, 8, 8)


def test_a_truncated_jpeg_body_passes_the_header_scan_but_not_the_decoder(tmp_path):
    import numpy as np

    make_tree(tmp_path, suffix=".jpg")
    cut = tmp_path / "class_00" / "0.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)).save(cut)
    cut.write_bytes(cut.read_bytes()[:-2000])  # header intact: only decoding can tell (documented)
    scan_image_tree(tmp_path)
    with pytest.raises(RuntimeError, match=f"cannot decode image {cut}"):
        decode_image(str(cut), 8)


def test_symlink_loops_are_refused_without_hanging(tmp_path):
    make_tree(tmp_path)
    (tmp_path / "class_00" / "loop").symlink_to("..")  # a folder inside a class folder that leads back up
    start = time.perf_counter()
    refused(lambda: scan_image_tree(tmp_path), tmp_path / "class_00" / "loop", "symlink loop", "delete the link")
    assert time.perf_counter() - start < 10
    assert len(scan_image_tree(tmp_path, check_files=False).classes) == 6  # listing only: never entered
    (tmp_path / "class_00" / "loop").unlink()

    (tmp_path / "self.png").symlink_to("self.png")  # a file link to itself, at the root
    refused(lambda: scan_image_tree(tmp_path), tmp_path / "self.png", "symlink loop")
    (tmp_path / "self.png").unlink()
    (tmp_path / "class_01" / "me.png").symlink_to("me.png")  # and among the images
    refused(lambda: scan_image_tree(tmp_path), tmp_path / "class_01" / "me.png", "symlink loop")
    (tmp_path / "class_01" / "me.png").unlink()

    (tmp_path / "up").symlink_to(tmp_path)  # a class folder that is the root itself
    refused(lambda: scan_image_tree(tmp_path), tmp_path / "up", "symlink loop")
    (tmp_path / "up").unlink()

    (tmp_path / "dup").symlink_to(tmp_path / "class_02")  # the same images under two classes
    refused(lambda: scan_image_tree(tmp_path), tmp_path / "dup", "same folder as class folder 'class_02'")


def test_a_root_that_loops_or_is_a_file_is_refused(tmp_path):
    make_tree(tmp_path / "data")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    refused(lambda: load_dataset("folder", root=str(tmp_path / "loop")), "loop", "symlink loop")
    (tmp_path / "image.png").write_bytes(b"")
    refused(lambda: load_dataset("folder", root=str(tmp_path / "image.png")),
            tmp_path / "image.png", "is a file, not a folder", "set dataset.root")
    refused(lambda: load_dataset("folder", root=str(tmp_path / "missing")), tmp_path / "missing", "not found")


def test_a_class_with_one_image_is_refused(tmp_path):
    make_tree(tmp_path)
    lonely = tmp_path / "class_99"
    write_image(lonely / "only.png")
    (lonely / "readme.txt").write_text("one image, one note")
    refused(lambda: load_dataset("folder", root=str(tmp_path), scan=True),
            lonely, "only 1 image (only.png)", "positive pair", "add images or remove the folder")
    assert "class_99" in load_dataset("folder", root=str(tmp_path), train_fraction=0.2).test.classes  # unscanned


def test_listed_datasets_are_scanned_too(tmp_path):
    header = "image_id class_id super_class_id path\n"
    rows = {"train": [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6], "test": [7, 7, 8, 8, 9, 9]}
    for part, classes in rows.items():
        lines = "".join(f"{i} {c} 1 {part}/{c}_{i}.JPG\n" for i, c in enumerate(classes, 1))
        (tmp_path / f"Ebay_{part}.txt").write_text(header + lines)
        for i, c in enumerate(classes, 1):
            write_image(tmp_path / part / f"{c}_{i}.JPG", fmt="JPEG")
    assert len(load_dataset("sop", root=str(tmp_path), scan=True).train) == 8
    (tmp_path / "test" / "8_4.JPG").unlink()
    refused(lambda: load_dataset("sop", root=str(tmp_path), scan=True),
            "dataset 'sop'", tmp_path / "test" / "8_4.JPG", "not found")
    (tmp_path / "test" / "8_4.JPG").write_bytes(b"")
    refused(lambda: load_dataset("sop", root=str(tmp_path), scan=True), "8_4.JPG", "is empty", "dataset's archive")
    assert len(load_dataset("sop", root=str(tmp_path)).test) == 6  # not scanned: the listing is enough


def test_two_thousand_files_scan_quickly_and_name_the_first_bad_one(tmp_path):
    paths = []
    for i in range(2000):
        path = tmp_path / f"c{i % 40:02d}" / f"{i:04d}.png"
        write_image(path, size=(8, 8))
        paths.append(str(path))
    start = time.perf_counter()
    report = scan_image_tree(tmp_path)
    took = time.perf_counter() - start
    assert len(report.paths) == 2000 and len(report.classes) == 40
    print(f"scanned 2,000 files in {took:.2f} s")  # reasonable (about 0.1 s here); no assertion on timing
    (tmp_path / "c05" / "1205.png").write_bytes(b"junk")
    (tmp_path / "c39" / "1999.png").write_bytes(b"")
    refused(lambda: scan_image_files(sorted(paths), dataset="x"), "dataset 'x'", "1205.png", "not an image")


# --- through the study: validate and run scan by default; scan_data=False is --no-data-scan ---------------------

def study(dataset, train=None, eval=None, **arm):
    return {
        "name": "scan", "seeds": [0], "resources": {"cpu": 1},
        "dataset": {"transform": {"preset": "8px", "resize": 8, "crop": 8}, **dataset},
        "model": {"backbone": "small_cnn", "dim": 8},
        "train": {"epochs": 1, "batch_size": 4, "k": 2, **(train or {})},
        "eval": {"metric": "map@r", "nmi": False, **(eval or {})},
        "arms": [{"name": "a", "loss": {"name": "ms"}, **arm}],
    }


def test_validation_scans_unless_told_not_to(tmp_path):
    make_tree(tmp_path, classes=12, per_class=2)
    bad = tmp_path / "class_07" / "1.png"
    bad.write_bytes(b"")
    raw = study({"name": "folder", "root": str(tmp_path), "val_fraction": 0.34})
    message = refused(lambda: parse_study(raw), "study (shared by all arms): dataset: dataset 'folder'", bad, "is empty")
    assert message.count(str(bad)) == 1
    assert parse_study(raw, scan_data=False).arms[0].name == "a"  # what the CLI's --no-data-scan sets
    assert parse_study(raw, check_data=False).arms[0].name == "a"


def test_a_dataset_grid_scans_every_value(tmp_path):
    good, bad = make_tree(tmp_path / "good", classes=12, per_class=2), make_tree(tmp_path / "bad", classes=12, per_class=2)
    (bad / "class_03" / "0.png").write_bytes(b"garbage")
    raw = study({"name": "folder", "root": {"grid": [str(good), str(bad)]}, "val_fraction": 0.34})
    refused(lambda: parse_study(raw), bad / "class_03" / "0.png", f"(with dataset.root '{bad}' from {{grid: [")


# --- class counts for every value a search may take ----------------------------------------------------------

def test_every_grid_value_of_k_is_checked():
    raw = study({"name": "digits", "val_fraction": 0.4}, train={"batch_size": 24, "k": {"grid": [8, 4]}})
    refused(lambda: parse_study(raw), "study (shared by all arms): a batch needs 6 classes (train.batch_size 24 / train.k 4)",
            "digits has 3 training classes", "train.k 4 from {grid: [8, 4]}", "lower dataset.val_fraction")
    raw["train"]["k"] = {"grid": [8, 12]}
    parse_study(raw)


def test_every_val_fraction_is_checked_and_ranges_at_their_bounds():
    dataset = {"name": "synthetic", "classes": 20, "size": 8, "channels": 1}  # 10 training classes
    raw = study({**dataset, "val_fraction": {"grid": [0.2, 0.6]}}, train={"batch_size": 12, "k": 2})
    refused(lambda: parse_study(raw), "a batch needs 6 classes", "synthetic has 4 training classes",
            "dataset.val_fraction 0.6 from {grid: [0.2, 0.6]}")
    raw = study({**dataset, "val_fraction": {"uniform": [0.2, 0.6]}}, train={"batch_size": 12, "k": 2},
                search={"mode": "random", "num_samples": 2})
    refused(lambda: parse_study(raw), "dataset.val_fraction 0.6 (upper bound of {uniform: [0.2, 0.6]})")
    raw["dataset"]["val_fraction"] = {"uniform": [0.2, 0.4]}
    parse_study(raw)


def test_val_fraction_zero_is_refused_when_the_study_validates():
    raw = study({"name": "digits", "val_fraction": 0.0})
    refused(lambda: parse_study(raw), "study (shared by all arms): dataset.val_fraction is 0, so there are no validation classes",
            "eval.every = 1", "val/map@r", "set dataset.val_fraction above 0")
    raw = study({"name": "digits", "val_fraction": {"grid": [0.4, 0.0]}})
    refused(lambda: parse_study(raw), "dataset.val_fraction is 0 (with dataset.val_fraction 0.0 from {grid: [0.4, 0.0]})")


def test_too_few_validation_classes_are_refused(tmp_path):
    make_tree(tmp_path, classes=6, per_class=2)  # 3 training folders: validation would get 1
    raw = study({"name": "folder", "root": str(tmp_path), "val_fraction": 0.25}, train={"batch_size": 2})
    refused(lambda: parse_study(raw), "leaves 1 validation class(es) of folder's 3 training classes", "at least 2")


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_a_looping_root_in_a_study_is_one_line(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    refused(lambda: parse_study(study({"name": "folder", "root": str(tmp_path / "loop")})), "symlink loop")
