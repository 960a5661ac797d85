"""Formats of image files: scikit-learn's bundled digits, a folder per class, a CSV listing."""

from __future__ import annotations

import csv as csvlib
import hashlib
from pathlib import Path

import numpy as np

from hpo.data.formats.registry import FORMATS, existing_dir
from hpo.data.images import IMAGE_EXTENSIONS, read_rgb
from hpo.data.table import ImageTable
from hpo.errors import DataError

# What spreadsheets and pandas write for a missing value (pandas' default na_values): such a
# label is no class of its own.
MISSING = {"", "nan", "NaN", "NAN", "-nan", "-NaN", "None", "none", "null", "NULL", "NA", "N/A", "n/a",
           "#N/A", "#NA", "<NA>"}

def _file_table(root: Path, classes: list[str], rows: list[tuple[Path, int, str]]) -> ImageTable:
    paths = [path for path, _, _ in rows]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} image file(s) listed but missing, e.g. {missing[0]}; fix the listing"
            " or restore the files"
        )
    identity = [f"{p.relative_to(root) if p.is_relative_to(root) else p}:{p.stat().st_size}" for p in paths]
    return ImageTable(
        classes=tuple(classes),
        labels=np.array([label for _, label, _ in rows]),
        groups=np.array([group for _, _, group in rows]),
        identity=identity,
        read=lambda i: read_rgb(paths[i]),
        describe=lambda i: str(paths[i]),
        files=paths,
    )


@FORMATS.register("digits")
def digits() -> ImageTable:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes): no download."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = (bunch.images * (255.0 / 16.0)).round().astype(np.uint8)
    rgb = np.repeat(pixels[..., None], 3, axis=-1)
    return ImageTable(
        classes=tuple(str(c) for c in bunch.target_names),
        labels=bunch.target,
        groups=np.arange(len(bunch.target)),
        identity=[hashlib.sha1(image.tobytes()).hexdigest()[:12] for image in pixels],
        read=lambda i: rgb[i],
    )


@FORMATS.register("imagefolder")
def imagefolder(*, root: str | None = None) -> ImageTable:
    """One sub-folder per class; every image is its own group. Hidden files are skipped."""
    base = existing_dir(root)
    classes = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    rows = [
        (path, label, str(path.relative_to(base)))
        for label, name in enumerate(classes)
        for path in sorted((base / name).rglob("*"))
        if path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")
    ]
    if not rows:
        raise DataError(f"data.root: no images in class sub-folders of {base}; expected root/<class>/<image>")
    return _file_table(base, classes, rows)


@FORMATS.register("csv")
def csv(
    *,
    root: str | None = None,
    file: str = "labels.csv",
    path_column: str = "path",
    label_column: str = "label",
    group_column: str | None = None,
) -> ImageTable:
    """A CSV listing (path relative to root, label, optional group); labels sorted as classes."""
    base = existing_dir(root)
    listing = base / file
    if not listing.is_file():
        raise DataError(f"data.file: {listing} does not exist; set data.file to the CSV listing")
    try:
        with listing.open(newline="", encoding="utf-8-sig") as handle:
            records = list(csvlib.DictReader(handle))
    except UnicodeDecodeError as e:
        raise DataError(f"data.file: {listing} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    needed = [c for c in (path_column, label_column, group_column) if c]
    absent = [c for c in needed if records and c not in records[0]]
    if absent or not records:
        raise DataError(
            f"data.file: {listing} lacks column(s) {absent or needed} (or has no rows); set"
            " data.path_column / label_column / group_column to its header names"
        )
    def missing(record: dict[str, str | None]) -> str | None:
        return next((c for c in needed if record[c] is None or record[c].strip() in MISSING), None)

    short = [(line, column) for line, r in enumerate(records, start=2) if (column := missing(r))]
    if short:
        line, column = short[0]
        raise DataError(f"data.file: {listing} line {line} (and {len(short) - 1} more) leaves {', '.join(needed)} empty"
                        f" or missing (its {column} is {records[line - 2][column] or ''!r}); fill or remove those rows")
    classes = sorted({r[label_column] for r in records})
    index = {name: i for i, name in enumerate(classes)}
    rows = [
        (base / r[path_column], index[r[label_column]], r[group_column] if group_column else r[path_column])
        for r in records
    ]
    return _file_table(base, classes, rows)
