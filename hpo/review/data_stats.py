"""The statistics of `hpo data describe`: what a study's data holds, before a search.

One pass over the images (in threads: PIL releases the GIL) keeps running sums, never the images,
and yields a :class:`DataDescription`: class balance and the class weights each weighting would
give, label factors (the mask format's mask / gender / age), image sizes and pixel statistics,
sample images, unreadable files and the fold split. hpo.review.eda_page turns it into one
self-contained page.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from hpo.data.cache import image_progress
from hpo.data.folds import HELD_OUT, make_fold_plan
from hpo.data.formats.mask import OLD_FROM, YOUNG_BELOW
from hpo.data.table import CORRUPT, ImageTable
from hpo.space import candidates
from hpo.system import available_cpus
from hpo.train.losses import CLASS_WEIGHTS

if TYPE_CHECKING:
    from hpo.config import StudySpec

SAMPLES_PER_CLASS = 6
THUMBNAIL = 96  # px: longest side of an embedded sample image; smaller images stay native


@dataclass(frozen=True)
class Factor:
    """One label factor (mask format: mask, gender, age): its values and how often each occurs."""

    name: str
    values: tuple[str, ...]
    counts: np.ndarray
    weights: dict[str, np.ndarray | None]  # what each weighting gives this factor's head


@dataclass(frozen=True)
class Unreadable:
    name: str  # table.describe(i): the file, where there is one
    error: str


@dataclass(frozen=True)
class PixelStats:
    """What the pass over the images found; pixel values scaled to [0, 1]."""

    sizes: dict[tuple[int, int], int]  # (height, width) -> images, most common first
    mean: tuple[float, float, float]  # per channel, over every pixel of every readable image
    std: tuple[float, float, float]
    class_brightness: np.ndarray  # per class, over all channels; NaN where no readable image
    samples: dict[int, list[bytes]]  # class -> PNGs of a few of its images
    unreadable: list[Unreadable]


@dataclass(frozen=True)
class FoldSplit:
    class_counts: np.ndarray  # (folds, classes): validation samples per fold and class
    group_counts: np.ndarray  # (folds,): groups in each fold's validation set
    groups_crossing: int  # groups found in more than one fold: 0 when the plan is sound


@dataclass(frozen=True)
class DataDescription:
    study: str
    format: str
    classes: tuple[str, ...]
    class_counts: np.ndarray
    groups: int
    class_weights: dict[str, np.ndarray | None]  # CLASS_WEIGHTS entry -> weights (None: all 1)
    factors: tuple[Factor, ...]
    file_types: dict[str, int]
    skipped: dict[str, int]
    pixels: PixelStats
    folds: FoldSplit
    ages: np.ndarray | None = None  # per sample, for formats that know it (mask)
    age_boundaries: tuple[int, ...] = ()  # where the age classes start
    searched_boundaries: tuple[float, ...] = ()  # search.labels.age_boundary values

    @property
    def samples(self) -> int:
        return int(self.class_counts.sum())

    @property
    def imbalance(self) -> float:
        """Largest class / smallest non-empty class."""
        return float(self.class_counts.max() / self.class_counts[self.class_counts > 0].min())

    @property
    def normalization(self) -> str:
        """The measured statistics as a study-file line."""
        mean, std = (", ".join(f"{v:.4f}" for v in values) for values in (self.pixels.mean, self.pixels.std))
        return f"normalization: {{mean: [{mean}], std: [{std}]}}"


# ---------------------------------------------------------------------------------------------
# Computing


def describe_table(spec: StudySpec, table: ImageTable, progress: bool = False) -> DataDescription:
    """Everything the page shows, from one pass over the images. Files the format left out as
    corrupt are listed by name with the unreadable ones, not counted again as skipped."""
    plan = make_fold_plan(table, spec.cv.folds, spec.cv.seed, spec.cv.holdout)  # first: a bad cv fails before the pass
    pixels = scan_pixels(table, progress)
    pixels = replace(pixels, unreadable=[*(Unreadable(name, why) for name, why in table.corrupt), *pixels.unreadable])
    counts = table.class_counts()
    ages = table.meta.get("age")
    searched = spec.search.labels.get("age_boundary")
    return DataDescription(
        study=spec.name,
        format=spec.data.format,
        classes=table.classes,
        class_counts=counts,
        groups=len(np.unique(table.groups)),
        class_weights=class_weights(counts),
        factors=factor_counts(table),
        file_types=file_types(table),
        skipped={why: n for why, n in table.skipped.items() if not (why == CORRUPT and table.corrupt)},
        pixels=pixels,
        folds=fold_split(table, plan),
        ages=ages,
        age_boundaries=(YOUNG_BELOW, OLD_FROM) if ages is not None else (),
        searched_boundaries=tuple(sorted(set(candidates(searched)))) if searched is not None else (),
    )


def class_weights(counts: np.ndarray) -> dict[str, np.ndarray | None]:
    # The very functions build_criterion calls, so the page shows what training would use.
    return {name: CLASS_WEIGHTS.get(name)(counts) for name in CLASS_WEIGHTS}


def decode(labels: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
    """Each factor's value of every label: its mixed-radix digits, most significant first."""
    strides = [int(np.prod(sizes[axis + 1 :])) for axis in range(len(sizes))]
    return [(np.asarray(labels) // stride) % size for stride, size in zip(strides, sizes, strict=True)]


def factor_counts(table: ImageTable) -> tuple[Factor, ...]:
    sizes = [size for _, size in table.factors]
    digits = decode(table.labels, sizes)
    names = _value_names(table.classes, sizes)
    counts = [np.bincount(d, minlength=size) for d, size in zip(digits, sizes, strict=True)]
    return tuple(Factor(name, names[axis], counts[axis], class_weights(counts[axis]))
                 for axis, (name, _) in enumerate(table.factors))


def _value_names(classes: Sequence[str], sizes: Sequence[int]) -> list[tuple[str, ...]]:
    """Factor value names taken from class names such as 'wear/male/<30' (one part per factor);
    the digits themselves when the class names are not built that way."""
    parts = [name.split("/") for name in classes]
    if not all(len(p) == len(sizes) for p in parts):
        return [tuple(str(v) for v in range(size)) for size in sizes]
    digits = decode(np.arange(len(classes)), sizes)
    return [tuple(parts[int(np.flatnonzero(digits[axis] == v)[0])][axis] for v in range(size))
            for axis, size in enumerate(sizes)]


def file_types(table: ImageTable) -> dict[str, int]:
    if table.files is None:
        return {"in-memory array": len(table)}
    return dict(Counter(Path(f).suffix.lower() or "(no suffix)" for f in table.files).most_common())


def fold_split(table: ImageTable, plan: np.ndarray) -> FoldSplit:
    """Per-fold class and group counts; held-out samples (cv.holdout) belong to no fold."""
    folds = int(plan.max()) + 1
    in_folds = plan != HELD_OUT
    group_codes = np.unique(table.groups, return_inverse=True)[1].ravel()[in_folds]
    pairs = np.unique(group_codes * folds + plan[in_folds])  # each (group, fold) that occurs, once
    return FoldSplit(
        class_counts=np.stack([table.class_counts(np.flatnonzero(plan == f)) for f in range(folds)]),
        group_counts=np.bincount(pairs % folds, minlength=folds),
        groups_crossing=int((np.bincount(pairs // folds) > 1).sum()),
    )


def sample_indices(labels: np.ndarray, per_class: int = SAMPLES_PER_CLASS, seed: int = 0) -> set[int]:
    """The samples shown, a few per class: a fixed seed makes it the same choice on every run."""
    rng = np.random.default_rng(seed)
    chosen: set[int] = set()
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        chosen.update(int(i) for i in rng.choice(members, min(per_class, len(members)), replace=False))
    return chosen


@dataclass(frozen=True)
class _Measured:
    size: tuple[int, int]
    sums: np.ndarray  # per channel, exact (int64)
    squares: np.ndarray
    png: bytes | None  # a thumbnail, for the chosen samples only


def _measure(table: ImageTable, i: int, keep: bool) -> _Measured | Unreadable:
    try:
        image = table.read(i)
    except Exception as e:  # PIL raises several types; one bad file must not end the pass
        return Unreadable(table.describe(i), f"{type(e).__name__}: {e}")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    flat = image.reshape(-1, image.shape[-1]).astype(np.int64)
    return _Measured(image.shape[:2], flat.sum(0), (flat * flat).sum(0), _thumbnail(image) if keep else None)


def _thumbnail(image: np.ndarray) -> bytes:
    picture = Image.fromarray(image)
    picture.thumbnail((THUMBNAIL, THUMBNAIL))  # only ever shrinks
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def scan_pixels(table: ImageTable, progress: bool = False) -> PixelStats:
    """Read every image once, keeping float64 running sums (and a few thumbnails) only."""
    k = table.num_classes
    sums, squares, pixels = np.zeros((k, 3)), np.zeros(3), np.zeros(k)
    sizes: Counter[tuple[int, int]] = Counter()
    samples: dict[int, list[bytes]] = {}
    unreadable: list[Unreadable] = []
    chosen = sample_indices(table.labels)
    with ThreadPoolExecutor(available_cpus()) as pool, \
            image_progress("reading images", len(table), progress) as advance:
        for i, found in enumerate(pool.map(lambda i: _measure(table, i, i in chosen), range(len(table)))):
            advance()
            if isinstance(found, Unreadable):
                unreadable.append(found)
                continue
            label = table.labels[i]
            sizes[found.size] += 1
            sums[label] += found.sums
            squares += found.squares
            pixels[label] += found.size[0] * found.size[1]
            if found.png is not None:
                samples.setdefault(int(label), []).append(found.png)
    return _pixel_stats(sums, squares, pixels, sizes, samples, unreadable)


def _pixel_stats(sums: np.ndarray, squares: np.ndarray, pixels: np.ndarray, sizes: Counter,
                 samples: dict[int, list[bytes]], unreadable: list[Unreadable]) -> PixelStats:
    with np.errstate(invalid="ignore", divide="ignore"):  # no readable image: NaN, not a crash
        mean = sums.sum(0) / pixels.sum() / 255
        std = np.sqrt(np.maximum(squares / pixels.sum() / 255**2 - mean**2, 0))
        brightness = sums.sum(1) / (3 * pixels) / 255
    return PixelStats(dict(sizes.most_common()), tuple(mean.tolist()), tuple(std.tolist()), brightness,
                      samples, unreadable)


