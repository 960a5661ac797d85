"""`hpo data describe`: exploratory data analysis of a study's data, before a search.

One pass over the images (in threads: PIL releases the GIL) keeps running sums, never the images,
and yields a :class:`DataDescription`: class balance and the class weights each weighting would
give, label factors (the mask format's mask / gender / age), image sizes and pixel statistics,
sample images, unreadable files and the fold split. :func:`render_html` turns it into one
self-contained page (figures and images embedded as base64 PNG, no external URL).
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image
from rich.table import Table

from hpo.data.cache import image_progress
from hpo.data.folds import make_fold_plan
from hpo.data.formats import FORMATS, load_table
from hpo.data.formats.mask import OLD_FROM, YOUNG_BELOW
from hpo.data.table import CORRUPT, ImageTable
from hpo.files import write_whole
from hpo.space import candidates
from hpo.system import available_cpus
from hpo.train.losses import CLASS_WEIGHTS

if TYPE_CHECKING:
    from hpo.config import StudySpec

SAMPLES_PER_CLASS = 6
THUMBNAIL = 96  # px: longest side of an embedded sample image; smaller images stay native
MAX_SIZES_SHOWN = 20


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
    plan = make_fold_plan(table, spec.cv.folds, spec.cv.seed)  # first: a bad cv fails before the pass
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
    folds = int(plan.max()) + 1
    group_codes = np.unique(table.groups, return_inverse=True)[1].ravel()
    pairs = np.unique(group_codes * folds + plan)  # each (group, fold) that occurs, once
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


def describe_data(spec: StudySpec, output: Path, progress: bool) -> DataDescription:
    """Load the study's data, describe it and write the page to ``output`` (atomically). A
    format that can stop at corrupt files (``data.corrupt: fail``) skips them here, so the page
    lists them all."""
    options = dict(spec.data.options)
    if "corrupt" in FORMATS.arguments(spec.data.format):
        options["corrupt"] = "skip"
    description = describe_table(spec, load_table(spec.data.format, options), progress)
    write_whole(output, render_html(description))
    return description


def summary_table(d: DataDescription) -> Table:
    """The console's short version of the page."""
    table = Table(title=f"data of study {d.study} ({d.format})", show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    rows = {
        "samples": str(d.samples),
        "groups": str(d.groups),
        "classes": f"{len(d.classes)}: " + ", ".join(f"{c} {n}" for c, n in zip(d.classes, d.class_counts, strict=True)),
        "imbalance ratio": f"{d.imbalance:.2f} (largest / smallest non-empty class)",
        "pixel mean / std": d.normalization,
        "unreadable files": str(len(d.pixels.unreadable)),
        "groups in more than one fold": str(d.folds.groups_crossing),
    }
    for key, value in rows.items():
        table.add_row(key, value)
    return table


# ---------------------------------------------------------------------------------------------
# Rendering

STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}
th{background:#f2f2f2}.n{text-align:right}pre{background:#f6f6f6;padding:.5em}
img.sample{min-height:64px;max-height:96px;margin:2px;vertical-align:middle;image-rendering:pixelated}
.ok{color:#176117}.bad{color:#b00020;font-weight:bold}.note{color:#666}"""


def render_html(d: DataDescription) -> str:
    sections = [_summary(d), _classes(d), _factors(d), _images(d), _samples(d), _problems(d), _folds(d)]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>hpo data describe: {html.escape(d.study)}</title>
<style>{STYLE}</style></head><body>
<h1>Data of study {html.escape(d.study)} ({html.escape(d.format)})</h1>
{chr(10).join(s for s in sections if s)}
</body></html>
"""


def _table(header: Sequence[str] | None, rows: Iterable[Sequence[Any]], id: str) -> str:
    rows = [[str(c) for c in row] for row in rows]
    # Right-align the columns (but the first, the row names) that hold only numbers: digits line up.
    numeric = [j > 0 and all(_is_number(row[j]) for row in rows) for j in range(len(rows[0]))] if rows else []
    align = ['class="n"' if n else "" for n in numeric] or [""] * len(header or ())
    head = "".join(f"<th {a}>{html.escape(h)}</th>" for a, h in zip(align, header or (), strict=False))
    body = "".join("<tr>" + "".join(f"<td {a}>{html.escape(c)}</td>" for a, c in zip(align, row, strict=True))
                   + "</tr>\n" for row in rows)
    thead = f"<thead><tr>{head}</tr></thead>" if header else ""
    return f'<table id="{id}">{thead}<tbody>\n{body}</tbody></table>'


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text == "n/a"
    return True


def _section(title: str, *body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>\n" + "\n".join(body) + "\n</section>"


def _figure(fig: Figure, alt: str) -> str:
    # A bare Figure, not pyplot: no global state, no display backend, nothing to close.
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")  # tight: keeps an outside legend
    return f'<img class="figure" alt="{html.escape(alt)}" src="{_data_uri(buffer.getvalue())}">'


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _number(value: float, digits: int = 3) -> str:
    return "n/a" if np.isnan(value) else f"{value:.{digits}f}"


def _weights(weights: dict[str, np.ndarray | None], i: int) -> list[str]:
    return [_number(1.0 if w is None else float(w[i])) for w in weights.values()]  # None: unweighted


def _summary(d: DataDescription) -> str:
    rows = [("samples", d.samples), ("groups", d.groups), ("classes", len(d.classes)),
            ("imbalance ratio (largest / smallest non-empty class)", f"{d.imbalance:.2f}"),
            ("skipped files", sum(d.skipped.values())), ("unreadable files", len(d.pixels.unreadable)),
            ("folds", len(d.folds.group_counts)), ("groups in more than one fold", d.folds.groups_crossing)]
    return _section("Summary", _table(None, rows, "summary"))


def _classes(d: DataDescription) -> str:
    header = ("class", "count", "share %", "mean brightness", *(f"weight: {w}" for w in d.class_weights))
    rows = [(name, n, f"{100 * n / d.samples:.1f}", _number(d.pixels.class_brightness[i]), *_weights(d.class_weights, i))
            for i, (name, n) in enumerate(zip(d.classes, d.class_counts.tolist(), strict=True))]
    fig = Figure(figsize=(8, max(2.5, 0.28 * len(d.classes) + 1)))
    ax = fig.subplots()
    ax.barh(range(len(d.classes)), d.class_counts, color="#4c78a8")
    ax.set_yticks(range(len(d.classes)), d.classes)
    ax.invert_yaxis()
    ax.bar_label(ax.containers[0], fontsize=8)
    ax.set_xlabel("samples")
    note = ('<p class="note">weight columns: the per-class loss weights each <code>search.class_weights</code>'
            " choice gives these counts (none: every class weighs 1). Brightness: mean pixel value in [0, 1].</p>")
    return _section("Classes", f"<p>imbalance ratio {d.imbalance:.2f} (largest / smallest non-empty class)</p>",
                    _table(header, rows, "classes"), note, _figure(fig, "class counts"))


def _factors(d: DataDescription) -> str:
    if not d.factors:
        return ""
    parts = []
    for f in d.factors:
        header = (f.name, "count", "share %", *(f"weight: {w}" for w in f.weights))
        rows = [(value, n, f"{100 * n / d.samples:.1f}", *_weights(f.weights, i))
                for i, (value, n) in enumerate(zip(f.values, f.counts.tolist(), strict=True))]
        parts.append(f"<h3>{html.escape(f.name)}</h3>" + _table(header, rows, f"factor-{f.name}"))
    note = ('<p class="note">Each label is a code of these factors; a factorized head trains one output per'
            " factor, with the weights shown.</p>")
    return _section("Label factors", note, *parts, _ages(d))


def _ages(d: DataDescription) -> str:
    if d.ages is None:
        return ""
    fig = Figure(figsize=(8, 3))
    ax = fig.subplots()
    ax.hist(d.ages, bins=np.arange(d.ages.min(), d.ages.max() + 2) - 0.5, color="#72b7b2")
    for age in d.age_boundaries:
        ax.axvline(age - 0.5, color="#b00020", label=f"class boundary {age}")
    for age in d.searched_boundaries:
        ax.axvline(age - 0.5, color="#f58518", linestyle="--", label=f"searched age_boundary {age:g}")
    ax.set_xlabel("age")
    ax.set_ylabel("images")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: bars fill the plot
    searched = ", ".join(f"{a:g}" for a in d.searched_boundaries) or "none"
    caption = (f"<p>age classes start at {', '.join(map(str, d.age_boundaries))} (solid lines); searched"
               f" age_boundary values: {searched} (dashed)</p>")
    return "<h3>age histogram</h3>" + caption + _figure(fig, "age histogram")


def _images(d: DataDescription) -> str:
    sizes = list(d.pixels.sizes.items())
    rows = [(f"{h} x {w}", n) for (h, w), n in sizes[:MAX_SIZES_SHOWN]]
    if len(sizes) > MAX_SIZES_SHOWN:
        rows.append((f"{len(sizes) - MAX_SIZES_SHOWN} other sizes", sum(n for _, n in sizes[MAX_SIZES_SHOWN:])))
    stats = [(c, _number(m, 4), _number(s, 4)) for c, m, s in zip("RGB", d.pixels.mean, d.pixels.std, strict=True)]
    return _section(
        "Images",
        "<h3>native size (height x width)</h3>", _table(("size", "images"), rows, "sizes"),
        "<h3>file types</h3>", _table(("type", "files"), d.file_types.items(), "file-types"),
        "<h3>pixel statistics (values in [0, 1], readable images)</h3>",
        _table(("channel", "mean", "std"), stats, "pixel-stats"),
        f"<p>to normalize with them, put this under <code>data:</code> in the study file:</p><pre>{d.normalization}</pre>",
    )


def _samples(d: DataDescription) -> str:
    rows = []
    for i, name in enumerate(d.classes):
        images = "".join(f'<img class="sample" src="{_data_uri(png)}" alt="{html.escape(name)}">'
                         for png in d.pixels.samples.get(i, []))
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{images or 'no readable image'}</td></tr>")
    return _section(f"Sample images (up to {SAMPLES_PER_CLASS} per class, same choice every run)",
                    '<table class="samples">' + "\n".join(rows) + "</table>")


def _problems(d: DataDescription) -> str:
    skipped = (_table(("reason", "files"), d.skipped.items(), "skipped") if d.skipped
               else "<p>none</p>")
    unreadable = (_table(("file", "error"), ((u.name, u.error) for u in d.pixels.unreadable), "unreadable")
                  if d.pixels.unreadable else "<p>none: every image was read</p>")
    return _section("Skipped and unreadable files", "<h3>skipped by the data format</h3>", skipped,
                    f"<h3>unreadable ({len(d.pixels.unreadable)})</h3>", unreadable)


def _folds(d: DataDescription) -> str:
    folds = d.folds
    header = ("class", *(f"fold {f}" for f in range(len(folds.group_counts))))
    rows = [(name, *folds.class_counts[:, i].tolist()) for i, name in enumerate(d.classes)]
    rows += [("samples", *folds.class_counts.sum(1).tolist()), ("groups", *folds.group_counts.tolist())]
    verdict = "ok" if folds.groups_crossing == 0 else "bad"
    return _section(
        "Folds (validation samples per fold)", _table(header, rows, "folds"),
        f'<p class="{verdict}">groups in more than one fold: {folds.groups_crossing}'
        f"{' (no group is split across folds)' if verdict == 'ok' else ' (the split leaks between folds)'}</p>",
    )
