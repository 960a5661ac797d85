"""Data formats, one registry entry each: a factory taking the study file's ``data`` options and
returning an :class:`ImageTable`."""

from __future__ import annotations

import csv as csvlib
import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from hpo.data.table import ImageTable
from hpo.errors import DataError
from hpo.registry import Registry

FORMATS: Registry = Registry("data format")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
# What spreadsheets and pandas write for a missing value (pandas' default na_values): such a
# label is no class of its own.
MISSING = {"", "nan", "NaN", "NAN", "-nan", "-NaN", "None", "none", "null", "NULL", "NA", "N/A", "n/a",
           "#N/A", "#NA", "<NA>"}
# Modes whose values PIL's convert("RGB") clips to 0-255 instead of scaling: 16-bit and 32-bit
# integer grey, and floating-point grey.
WIDE_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return to_rgb8(image)


def to_rgb8(image: Image.Image) -> np.ndarray:
    """An RGB uint8 array of any image PIL opens. 16-bit grey is scaled to 8 bits (65535 ->
    255), as PIL itself does for 16-bit colour; 32-bit integer grey holding 8- or 16-bit values
    likewise, and other ranges stretched from their minimum to their maximum; floating-point grey
    in [0, 1] scaled by 255, otherwise clipped to [0, 255]. Every other mode goes through PIL's
    own conversion (palette, CMYK, YCbCr, alpha dropped)."""
    if image.mode not in WIDE_MODES:
        return np.asarray(image.convert("RGB"))
    values = np.asarray(image).astype(np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode == "F":
        scaled = values * 255.0 if low >= 0 and high <= 1 else values
    elif image.mode.startswith("I;16") or (low >= 0 and 255 < high <= 65535):
        scaled = values * (255.0 / 65535.0)
    elif low >= 0 and high <= 255:
        scaled = values
    else:
        scaled = (values - low) * (255.0 / max(high - low, 1.0))
    grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def _existing_dir(root: str | None, key: str = "data.root") -> Path:
    if not root:
        raise DataError(f"{key} is not set; set it to the data folder (--set {key}=/path)")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"{key}: folder {path} does not exist; set {key} to the data folder")
    return path


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
    base = _existing_dir(root)
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
    base = _existing_dir(root)
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


def load_table(format: str, options: dict) -> ImageTable:
    return FORMATS.get(format, "data.format")(**options)


# Formats with a module of their own register themselves on import.
from hpo.data import mask as _mask  # noqa: E402, F401
