"""Data formats produce real tables; missing or corrupt data is one clear DataError."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from hpo.data.cache import decoded
from hpo.data.formats import load_table
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
