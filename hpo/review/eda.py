"""`hpo data describe`: exploratory data analysis of a study's data, before a search: the
statistics (hpo.review.data_stats), written as one self-contained page (hpo.review.eda_page),
and a short version for the console."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from hpo.data.formats import FORMATS, load_table
from hpo.files import write_whole
from hpo.review.data_stats import DataDescription, describe_table, sample_indices  # noqa: F401 - re-exported
from hpo.review.eda_page import render_html

if TYPE_CHECKING:
    from hpo.config import StudySpec


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
