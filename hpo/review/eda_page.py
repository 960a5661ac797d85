"""The page of `hpo data describe`: a :class:`~hpo.review.data_stats.DataDescription` as one
self-contained HTML page."""

from __future__ import annotations

import html

import numpy as np
from matplotlib.figure import Figure

from hpo.review.data_stats import SAMPLES_PER_CLASS, DataDescription
from hpo.review.html import data_uri as _data_uri
from hpo.review.html import figure as _figure
from hpo.review.html import section as _section
from hpo.review.html import table as _table

MAX_SIZES_SHOWN = 20  # image sizes listed, the most common first

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
