"""`hpo data describe`: the EDA page holds what the data really contains, computed here again."""

from __future__ import annotations

import base64
import io
import re
import shutil
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits
from typer.testing import CliRunner

from hpo.cli import app
from hpo.config import load_spec, parse_spec
from hpo.data.folds import make_fold_plan
from hpo.data.formats import load_table, read_rgb
from hpo.data.formats.mask import CLASSES as MASK_CLASSES
from hpo.review.eda import describe_data, sample_indices
from tests.conftest import CLASSES, tiny_mask_study, tiny_study, write_study

SAMPLE = '<img class="sample" src="data:image/png;base64,'


class Tables(HTMLParser):
    """Every table with an id: its header cells and its body rows' cell texts."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.headers: dict[str, list[str]] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self._id, self._in_head, self._row, self._cell = "", False, [], None
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table":
            self._id = dict(attrs).get("id") or ""
            self.tables[self._id] = []
        elif tag == "thead":
            self._in_head = True
        elif tag == "tr":
            self._row = []
            if self._in_head:
                self.headers[self._id] = self._row
            else:
                self.tables[self._id].append(self._row)
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "thead":
            self._in_head = False
        elif tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell)
            self._cell = None


def column(page: str, table: str, index: int = 1) -> dict[str, str]:
    """First cell -> cell ``index`` of each body row of the table with id ``table``."""
    return {row[0]: row[index] for row in Tables(page).tables[table]}


def normalization(page: str) -> tuple[np.ndarray, np.ndarray]:
    found = re.search(r"normalization: \{mean: \[([^\]]*)\], std: \[([^\]]*)\]\}", page)
    assert found, "no normalization line to paste"
    return tuple(np.array([float(v) for v in part.split(",")]) for part in found.groups())


def assert_fold_table(page: str, table, folds: int, seed: int) -> None:
    """Per-fold class and group counts as make_fold_plan gives them, and no group in two folds."""
    plan = make_fold_plan(table, folds, seed)
    rows = {row[0]: [int(v) for v in row[1:]] for row in Tables(page).tables["folds"]}
    for c, name in enumerate(table.classes):
        assert rows[name] == [int(np.sum((plan == f) & (table.labels == c))) for f in range(folds)], name
    assert rows["samples"] == [int(np.sum(plan == f)) for f in range(folds)]
    assert rows["groups"] == [len(set(table.groups[plan == f])) for f in range(folds)]
    assert all(len(set(plan[table.groups == g])) == 1 for g in np.unique(table.groups))
    assert "groups in more than one fold: 0 (no group is split across folds)" in page


def assert_self_contained(page: str) -> None:
    assert not re.search(r'(src|href)="(?!data:)', page) and "<script" not in page


@pytest.fixture(scope="module")
def digits_page(tmp_path_factory):
    path = tmp_path_factory.mktemp("eda") / "out" / "eda.html"
    description = describe_data(load_spec("digits"), path, progress=False)
    assert not path.with_name("eda.html.partial").exists()
    return description, path.read_text()


def test_digits_page_counts_classes_and_weights(digits_page):
    description, page = digits_page
    target = load_digits().target
    counts = np.bincount(target)
    assert column(page, "classes") == {str(c): str(n) for c, n in enumerate(counts)}
    assert np.array_equal(description.class_counts, counts)
    summary = column(page, "summary")
    assert summary["samples"] == "1797" and summary["groups"] == "1797"
    assert summary["imbalance ratio (largest / smallest non-empty class)"] == f"{counts.max() / counts.min():.2f}"
    header = Tables(page).headers["classes"]
    inverse = column(page, "classes", header.index("weight: inverse"))
    assert inverse == {str(c): f"{len(target) / (10 * n):.3f}" for c, n in enumerate(counts)}
    assert set(column(page, "classes", header.index("weight: none")).values()) == {"1.000"}
    assert_self_contained(page)


def test_digits_page_pixel_statistics_match_numpy(digits_page):
    description, page = digits_page
    table = load_table("digits", {})
    images = np.stack([table.read(i) for i in range(len(table))]).astype(np.float64) / 255
    mean, std = images.mean(axis=(0, 1, 2)), images.std(axis=(0, 1, 2))
    assert np.allclose(description.pixels.mean, mean, atol=1e-12)
    assert np.allclose(description.pixels.std, std, atol=1e-12)
    pasted_mean, pasted_std = normalization(page)
    assert np.allclose(pasted_mean, mean, atol=6e-5) and np.allclose(pasted_std, std, atol=6e-5)
    brightness = [images[table.labels == c].mean() for c in range(10)]
    assert np.allclose(description.pixels.class_brightness, brightness, atol=1e-12)
    assert column(page, "sizes") == {"8 x 8": "1797"}
    assert column(page, "file-types") == {"in-memory array": "1797"}


def test_digits_page_shows_folds_and_sample_images(digits_page):
    _, page = digits_page
    table = load_table("digits", {})
    assert_fold_table(page, table, folds=3, seed=0)
    assert page.count(SAMPLE) == 10 * 6  # six per class
    first = page.split(SAMPLE, 1)[1].split('"', 1)[0]
    with Image.open(io.BytesIO(base64.b64decode(first))) as image:
        assert image.format == "PNG" and image.size == (8, 8)
        pixels = np.asarray(image.convert("RGB"))
    assert any(np.array_equal(pixels, table.read(i)) for i in np.flatnonzero(table.labels == 0))


def test_mask_page_breaks_labels_into_factors_and_ages(mask_archive, tmp_path):
    # corrupt: fail would stop hpo run at the corrupt photo; the page lists it instead.
    spec = parse_spec(tiny_mask_study(mask_archive.root, tmp_path, data___mask={"corrupt": "fail"}))
    description = describe_data(spec, tmp_path / "eda.html", progress=False)
    page = (tmp_path / "eda.html").read_text()
    images = mask_archive.root / "train" / "images"
    corrupt = {str(p.relative_to(images)) for p in mask_archive.corrupt}
    kept = {name: factors for name, factors in mask_archive.expected.items() if name not in corrupt}
    mask, gender, age = np.array(list(kept.values())).T
    mask_names = ("wear", "incorrect", "not_worn")
    counts = np.bincount(mask * 6 + gender * 3 + age, minlength=18)
    assert column(page, "classes") == {name: str(n) for name, n in zip(MASK_CLASSES, counts, strict=True)}
    assert column(page, "factor-mask") == {v: str(n) for v, n in zip(mask_names, np.bincount(mask), strict=True)}
    assert column(page, "factor-gender") == {"male": str(np.sum(gender == 0)), "female": str(np.sum(gender == 1))}
    assert column(page, "factor-age") == {v: str(n) for v, n in zip(("<30", "30-59", ">=60"), np.bincount(age), strict=True)}
    # The factorized head's weights: inverse frequency of each factor value.
    header = Tables(page).headers["factor-mask"]
    inverse = column(page, "factor-mask", header.index("weight: inverse"))
    assert inverse == {v: f"{len(kept) / (3 * n):.3f}" for v, n in zip(mask_names, np.bincount(mask), strict=True)}
    assert "age classes start at 30, 60 (solid lines); searched age_boundary values: 58, 60 (dashed)" in page
    assert 'alt="age histogram"' in page
    assert sorted(description.ages.tolist()) == sorted(mask_archive.ages[name[:6]] for name in kept)
    [photo] = mask_archive.corrupt
    assert list(column(page, "unreadable")) == [str(photo)]
    assert column(page, "unreadable")[str(photo)].startswith("OSError")
    assert column(page, "summary")["unreadable files"] == "1" and "corrupt" not in column(page, "skipped")
    assert column(page, "skipped")["hidden file (._* and the like)"] == str(mask_archive.junk)
    assert column(page, "file-types") == {k: str(n) for k, n in Counter(Path(n).suffix for n in kept).items()}
    assert column(page, "sizes") == {"64 x 48": str(len(kept))}
    assert_fold_table(page, load_table("mask", {**spec.data.options, "corrupt": "skip"}), folds=3, seed=0)
    assert page.count(SAMPLE) == sum(min(6, n) for n in counts)
    assert_self_contained(page)


def test_unreadable_file_is_listed_and_the_rest_described(image_root, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(image_root, copy)
    broken = copy / "c1_green" / "03.png"
    broken.write_bytes(b"not a png")
    raw = tiny_study(copy, tmp_path)
    raw["data"] = {"format": "imagefolder", "root": str(copy), "image_size": 16, "normalization": "half"}
    description = describe_data(parse_spec(raw), tmp_path / "eda.html", progress=False)
    page = (tmp_path / "eda.html").read_text()
    assert column(page, "unreadable") == {str(broken): column(page, "unreadable")[str(broken)]}
    assert column(page, "unreadable")[str(broken)].startswith("UnidentifiedImageError")
    assert column(page, "summary")["unreadable files"] == "1"
    assert column(page, "classes") == {name: "40" for name in CLASSES}
    readable = [p for p in sorted(copy.rglob("*.png")) if p != broken]
    pixels = np.stack([read_rgb(p) for p in readable]).astype(np.float64) / 255
    assert np.allclose(description.pixels.mean, pixels.mean(axis=(0, 1, 2)), atol=1e-12)
    assert np.allclose(description.pixels.std, pixels.std(axis=(0, 1, 2)), atol=1e-12)
    assert column(page, "sizes") == {"16 x 16": "119"} and column(page, "file-types") == {".png": "120"}
    table = load_table("imagefolder", {"root": str(copy)})
    chosen = [i for i in sample_indices(table.labels) if table.describe(i) != str(broken)]
    assert page.count(SAMPLE) == len(chosen) >= 3 * 6 - 1  # a chosen unreadable file only shows fewer


def test_cli_writes_the_page_and_prints_the_table(study_file, tmp_path):
    out = tmp_path / "eda.html"
    result = CliRunner().invoke(app, ["data", "describe", "--study", str(study_file), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "groups in more than one fold: 0" in out.read_text()
    printed = result.stdout
    assert re.search(r"samples\s+│ 120\b", printed) and re.search(r"groups\s+│ 60\b", printed)
    assert "c0_red 40, c1_green 40, c2_blue 40" in printed
    assert re.search(r"groups in more than one fold\s+│ 0\b", printed)
    assert "normalization: {mean: [" in printed
    assert f"wrote {out}" in result.stderr


def test_cli_missing_data_root_is_one_line_and_exit_2(tmp_path):
    study = write_study(tmp_path / "tiny.yaml", tiny_study(tmp_path / "no-such-data", tmp_path))
    out = tmp_path / "eda.html"
    result = CliRunner().invoke(app, ["data", "describe", "--study", str(study), "-o", str(out)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: data.root: folder") and "does not exist" in lines[0]
    assert not out.exists()
