"""The mask-classification competition's archive as it is distributed (``format: mask``)::

    train/train.csv         id,gender,race,age,path     (one row per person)
    train/images/<path>/    mask1..mask5, incorrect_mask, normal   (any image extension)
    eval/info.csv           ImageID,ans    (hpo predict fills ans)
    eval/images/<ImageID>

Label = mask * 6 + gender * 3 + age: mask worn 0 / incorrect 1 / not worn 2, male 0 / female 1,
age < 30 0 / 30-59 1 / >= 60 2. Every photo's group is its person, so folds never split a person.
"""

from __future__ import annotations

import csv
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from hpo.data.cache import remembered
from hpo.data.formats.registry import FORMATS, existing_dir
from hpo.data.images import IMAGE_EXTENSIONS, read_rgb
from hpo.data.table import CORRUPT, ImageTable
from hpo.errors import ConfigError, DataError
from hpo.system import available_cpus

PHOTOS = {"mask1": 0, "mask2": 0, "mask3": 0, "mask4": 0, "mask5": 0, "incorrect_mask": 1, "normal": 2}
MASK_NAMES, GENDER_NAMES, AGE_NAMES = ("wear", "incorrect", "not_worn"), ("male", "female"), ("<30", "30-59", ">=60")
GENDERS = {name: i for i, name in enumerate(GENDER_NAMES)}
FACTORS = (("mask", 3), ("gender", 2), ("age", 3))
CLASSES = tuple(f"{m}/{g}/{a}" for m in MASK_NAMES for g in GENDER_NAMES for a in AGE_NAMES)
YOUNG_BELOW, OLD_FROM = 30, 60


def age_class(age: np.ndarray | int, old_from: int = OLD_FROM) -> np.ndarray:
    return np.where(np.asarray(age) < YOUNG_BELOW, 0, np.where(np.asarray(age) < old_from, 1, 2))


def encode(mask: np.ndarray, gender: np.ndarray, age: np.ndarray) -> np.ndarray:
    return np.asarray(mask) * 6 + np.asarray(gender) * 3 + np.asarray(age)


@dataclass
class Person:
    id: str
    gender: int
    age: int
    folder: str
    photos: dict[str, Path]  # photo stem -> file


def _read_people(listing: Path) -> list[dict[str, str]]:
    if not listing.is_file():
        raise DataError(f"data.root: {listing} does not exist; set data.root to the folder holding train/ (and eval/)")
    with listing.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    needed = {"id", "gender", "age", "path"}
    if not rows or needed - set(rows[0]):
        raise DataError(f"{listing}: expected columns {sorted(needed)} and one row per person")
    return rows


def _load_relabel(relabel: str | list | None) -> list[dict[str, Any]]:
    """Corrections: a list in the study file or a YAML/CSV file of {id, gender?, age?, swap?}."""
    if relabel is None:
        return []
    if isinstance(relabel, str):
        path = Path(relabel).expanduser()
        if not path.is_file():
            raise DataError(f"data.relabel: {path} does not exist; give a YAML/CSV file or a list")
        if path.suffix.lower() == ".csv":
            with path.open(newline="") as handle:
                entries = [{k: v for k, v in row.items() if v} for row in csv.DictReader(handle)]
            for e in entries:
                if "swap" in e:
                    e["swap"] = e["swap"].replace(";", " ").split()
        else:
            entries = yaml.safe_load(path.read_text()) or []
    else:
        entries = relabel
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "id" in e for e in entries):
        raise ConfigError("data.relabel: expected a list of {id: ..., gender: male|female, age: N, swap: [a, b]}")
    return entries


def _apply_relabel(people: dict[str, Person], entries: list[dict[str, Any]]) -> None:
    for entry in entries:
        pid = str(entry["id"]).zfill(6) if str(entry["id"]).isdigit() else str(entry["id"])
        person = people.get(pid)
        if person is None:
            raise DataError(f"data.relabel: person {entry['id']!r} is not in train.csv; fix or remove the entry")
        if "gender" in entry:
            if entry["gender"] not in GENDERS:
                raise ConfigError(f"data.relabel: person {pid}: gender must be male or female")
            person.gender = GENDERS[entry["gender"]]
        if "age" in entry:
            person.age = int(entry["age"])
        if "swap" in entry:
            a, b = entry["swap"]
            if a not in PHOTOS or b not in PHOTOS:
                raise ConfigError(f"data.relabel: person {pid}: swap names two of {', '.join(PHOTOS)}")
            photos = person.photos
            photos[a], photos[b] = photos.get(b), photos.get(a)


def _find_corrupt(files: list[Path], base: Path) -> list[str | None]:
    """Why each photo cannot be read, or None. Verifying reads every file, so the answer is
    remembered in the cache folder by file, size and modification time: every worker process
    loads the table, and only the first one on a machine pays for the reads."""

    def verify() -> list[str | None]:
        with ThreadPoolExecutor(available_cpus()) as pool:
            return list(pool.map(_is_corrupt, files))

    stats = [f.stat() for f in files]  # one stat per photo: size and time
    stamps = [(str(f.relative_to(base)), st.st_size, st.st_mtime_ns) for f, st in zip(files, stats, strict=True)]
    return remembered("mask-verify", [str(base.resolve()), stamps], verify)


def _is_corrupt(path: Path) -> str | None:
    try:
        with Image.open(path) as image:
            image.verify()
        return None
    except Exception as e:  # PIL raises several types for broken files
        return f"{type(e).__name__}: {e}"


def _read_person(images: Path, row: dict[str, str], skipped: Counter[str]) -> Person | None:
    """A train.csv row and the photos in its folder; what is left out is counted in ``skipped``."""
    folder = images / row["path"]
    if not folder.is_dir():
        skipped["person folder missing"] += 1
        return None
    photos: dict[str, Path] = {}
    for file in sorted(folder.iterdir()):
        if file.name.startswith("."):
            skipped["hidden file (._* and the like)"] += 1
        elif file.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped["not an image"] += 1
        elif file.stem not in PHOTOS:
            skipped["unknown photo name"] += 1
        else:
            photos[file.stem] = file
    skipped["photo missing"] += len(PHOTOS) - len(photos)
    gender = row["gender"].strip().lower()
    if gender not in GENDERS:
        raise DataError(f"train.csv: person {row['id']}: gender {row['gender']!r}; expected male or female")
    return Person(row["id"], GENDERS[gender], int(row["age"]), row["path"], photos)


def _count_unlisted(images: Path, listed: set[str], skipped: Counter[str]) -> None:
    for entry in images.iterdir() if images.is_dir() else []:
        if entry.name.startswith("."):
            skipped["hidden file (._* and the like)"] += 1
        elif entry.name not in listed:
            skipped["not in train.csv"] += 1


def _corrupt_files(files: list[Path], base: Path, corrupt: str) -> dict[Path, str]:
    """The files that do not open, and why; with ``corrupt: fail``, the first is an error."""
    broken = {file: why for file, why in zip(files, _find_corrupt(files, base), strict=True) if why}
    if broken and corrupt == "fail":
        path, why = next(iter(broken.items()))
        raise DataError(f"corrupt image {path} ({why}){f' and {len(broken) - 1} more' if len(broken) > 1 else ''};"
                        " replace it, or set data.corrupt=skip to leave it out")
    return broken


@FORMATS.register("mask")
def mask(*, root: str | None = None, corrupt: str = "fail", relabel: str | list | None = None) -> ImageTable:
    """The competition archive under ``root`` (``root/train/train.csv``). ``corrupt``: fail (the
    default) or skip unreadable photos; ``relabel``: corrections for known mislabeled people."""
    if corrupt not in ("fail", "skip"):
        raise ConfigError(f"data.corrupt: {corrupt!r}; use fail or skip")
    base = existing_dir(root) / "train"
    skipped: Counter[str] = Counter()
    people: dict[str, Person] = {}
    for row in _read_people(base / "train.csv"):
        person = _read_person(base / "images", row, skipped)
        if person is not None:
            people[person.id] = person
    _count_unlisted(base / "images", {p.folder for p in people.values()}, skipped)
    if not people:
        raise DataError(f"data.root: no person folders under {base / 'images'}; expected train/images/<path>/")
    _apply_relabel(people, _load_relabel(relabel))

    samples = [(p, stem, file) for p in people.values() for stem, file in sorted(p.photos.items()) if file]
    bad = _corrupt_files([file for _, _, file in samples], base, corrupt)
    skipped[CORRUPT] += len(bad)
    samples = [s for s in samples if s[2] not in bad]

    masks = np.array([PHOTOS[stem] for _, stem, _ in samples])
    genders = np.array([p.gender for p, _, _ in samples])
    ages = np.array([p.age for p, _, _ in samples])
    paths = [file for _, _, file in samples]

    def training_labels(*, age_boundary: int = OLD_FROM) -> np.ndarray:
        """Labels with "60 and over" starting at ``age_boundary`` (a lower bound such as 58
        counters the class's rarity); only for training, never for scoring."""
        if not YOUNG_BELOW < int(age_boundary) <= 100:
            raise ConfigError(f"search.labels.age_boundary: {age_boundary}; give an age in ({YOUNG_BELOW}, 100]")
        return encode(masks, genders, age_class(ages, int(age_boundary)))

    return ImageTable(
        classes=CLASSES,
        labels=encode(masks, genders, age_class(ages)),
        groups=np.array([p.id for p, _, _ in samples]),
        identity=[f"{f.relative_to(base)}:{f.stat().st_size}:{m}{g}{a}"
                  for f, m, g, a in zip(paths, masks, genders, ages, strict=True)],
        read=lambda i: read_rgb(paths[i]),
        describe=lambda i: str(paths[i]),
        factors=FACTORS,
        relabel_for_training=training_labels,
        skipped={k: v for k, v in skipped.items() if v},
        corrupt=tuple((str(file), why) for file, why in bad.items()),
        files=paths,
        meta={"age": ages},
    )
