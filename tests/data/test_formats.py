"""Data formats produce real tables; missing or corrupt data is one clear DataError."""

from __future__ import annotations

import re
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from hpo.data.cache import decoded
from hpo.data.formats import load_table, read_rgb
from hpo.errors import DataError
from tests.conftest import CLASSES, PER_CLASS


def test_digits_is_embedded_and_upsampled():
    table = load_table("digits", {})
    assert len(table) == 1797 and table.num_classes == 10
    assert table.class_counts().sum() == 1797
    images = decoded(table, 24)
    assert images.shape == (1797, 24, 24, 3) and images.dtype == np.uint8
    assert len(set(table.groups)) == 1797  # each sample its own group


def test_imagefolder_reads_classes_and_skips_hidden_files(image_root):
    table = load_table("imagefolder", {"root": str(image_root)})
    assert table.classes == CLASSES
    assert table.class_counts().tolist() == [PER_CLASS] * 3
    images = decoded(table, 16)
    # The dominant channel is the class (see conftest.draw).
    assert (images.mean(axis=(1, 2)).argmax(1) == table.labels).all()


def test_csv_uses_its_group_column(image_root):
    table = load_table("csv", {"root": str(image_root), "group_column": "group"})
    assert len(table) == 3 * PER_CLASS and len(set(table.groups)) == 3 * PER_CLASS // 2


def test_missing_root_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"data.root: folder .*nowhere does not exist; set data.root"):
        load_table("imagefolder", {"root": str(tmp_path / "nowhere")})
    with pytest.raises(DataError, match="data.root is not set"):
        load_table("csv", {})


def test_csv_missing_column_and_missing_files(image_root, tmp_path):
    with pytest.raises(DataError, match=r"lacks column\(s\) \['person'\]"):
        load_table("csv", {"root": str(image_root), "group_column": "person"})
    copy = tmp_path / "copy"
    shutil.copytree(image_root, copy)
    (copy / "c0_red" / "00.png").unlink()
    with pytest.raises(DataError, match="1 image file.* listed but missing"):
        load_table("csv", {"root": str(copy)})


def test_csv_not_utf8_or_with_empty_fields_is_a_data_error(image_root, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(image_root, copy)
    lines = (image_root / "labels.csv").read_text().splitlines()
    (copy / "labels.csv").write_bytes(("\n".join(lines[:3]) + "\nc0_red/02.png,caf\u00e9,x\n").encode("latin-1"))
    with pytest.raises(DataError, match="labels.csv is not UTF-8 text .*; save it as UTF-8"):
        load_table("csv", {"root": str(copy)})
    (copy / "labels.csv").write_text("\n".join([*lines[:5], "c0_red/04.png", "c0_red/05.png,,g"]) + "\n")
    with pytest.raises(DataError, match="labels.csv line 6 \\(and 1 more\\) leaves path, label, group empty"):
        load_table("csv", {"root": str(copy), "group_column": "group"})


def test_corrupt_image_is_named(image_root, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(image_root, copy)
    (copy / "c1_green" / "03.png").write_bytes(b"not a png")
    table = load_table("imagefolder", {"root": str(copy)})
    with pytest.raises(DataError, match=r"cannot read .*c1_green/03.png"):
        decoded(table, 16)


def test_fingerprint_changes_with_the_data(image_root, tmp_path):
    before = load_table("imagefolder", {"root": str(image_root)}).fingerprint()
    assert load_table("imagefolder", {"root": str(image_root)}).fingerprint() == before
    copy = tmp_path / "copy"
    shutil.copytree(image_root, copy)
    assert load_table("imagefolder", {"root": str(copy)}).fingerprint() == before  # location-free
    (copy / "c2_blue" / "05.png").rename(copy / "c0_red" / "99.png")  # a relabelled image
    assert load_table("imagefolder", {"root": str(copy)}).fingerprint() != before


@pytest.mark.parametrize("missing", ["", "NaN", "nan", "None", "NA", "null", "  "])
def test_a_csv_label_that_is_missing_is_refused_with_its_line(image_root, tmp_path, missing):
    copy = tmp_path / "copy"
    shutil.copytree(image_root, copy)
    lines = (image_root / "labels.csv").read_text().splitlines()
    lines[4] = f"c0_red/03.png,{missing},c0_red-1"
    (copy / "labels.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"labels.csv line 5 \(and 0 more\) leaves path, label, group empty or missing"
                                        rf" \(its label is {re.escape(repr(missing))}\); fill or remove those rows"):
        load_table("csv", {"root": str(copy), "group_column": "group"})


def _grey(mean: float) -> np.ndarray:
    """A 16 x 16 grey gradient around ``mean`` (0-1)."""
    return np.clip(np.linspace(mean - 0.2, mean + 0.2, 256).reshape(16, 16), 0, 1)


@pytest.mark.parametrize(("mode", "write"), [
    # 16-bit grey PNG (PIL: I;16) and TIFF, 32-bit integer TIFFs holding 16- and 8-bit values
    # (PIL: I), floating-point TIFF in [0, 1] (PIL: F): PIL's convert("RGB") clips all of them.
    ("I;16", lambda grey, path: Image.fromarray((grey * 65535).round().astype(np.uint16)).save(path.with_suffix(".png"))),
    ("I;16", lambda grey, path: cv2.imwrite(str(path.with_suffix(".tif")), (grey * 65535).round().astype(np.uint16))),
    ("I", lambda grey, path: Image.fromarray((grey * 65535).round().astype(np.int32)).save(path.with_suffix(".tif"))),
    ("I", lambda grey, path: Image.fromarray((grey * 255).round().astype(np.int32)).save(path.with_suffix(".tif"))),
    ("F", lambda grey, path: Image.fromarray(grey.astype(np.float32)).save(path.with_suffix(".tif"))),
    # What PIL converts faithfully itself, kept as it was: 8-bit grey, bilevel, palette, 16-bit colour.
    ("L", lambda grey, path: Image.fromarray((grey * 255).round().astype(np.uint8)).save(path.with_suffix(".png"))),
    ("P", lambda grey, path: Image.fromarray((grey * 255).round().astype(np.uint8)).convert("P").save(path.with_suffix(".png"))),
    ("RGB", lambda grey, path: cv2.imwrite(str(path.with_suffix(".png")), np.repeat((grey * 65535).round().astype(np.uint16)[..., None], 3, -1))),
])
def test_images_of_every_bit_depth_are_read_as_8_bits(tmp_path, mode, write):
    """The same picture saved at another bit depth reads as the same 8-bit picture (within
    rounding), not clipped to white."""
    grey = _grey(0.4)
    write(grey, tmp_path / "image")
    path = next(tmp_path.iterdir())
    with Image.open(path) as image:
        assert image.mode == mode
    rgb = read_rgb(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (16, 16, 3)
    assert np.abs(rgb[..., 0].astype(int) - (grey * 255).round()).max() <= 1
    assert np.array_equal(rgb[..., 0], rgb[..., 2])


def test_wide_images_outside_the_usual_ranges_are_stretched_or_clipped(tmp_path):
    Image.fromarray(np.array([[-1000, 0], [1000, 3000]], dtype=np.int32)).save(tmp_path / "wide.tif")
    assert read_rgb(tmp_path / "wide.tif")[..., 0].tolist() == [[0, 64], [128, 255]]  # min..max -> 0..255
    Image.fromarray(np.array([[-5.0, 12.4], [200.0, 300.0]], dtype=np.float32)).save(tmp_path / "f.tif")
    assert read_rgb(tmp_path / "f.tif")[..., 0].tolist() == [[0, 12], [200, 255]]  # already 0-255: clipped
