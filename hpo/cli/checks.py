"""Commands that look before a search: validate, list, data describe, data prepare."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from hpo.cli.app import (
    SetOpt,
    StudyOpt,
    app,
    console,
    data_app,
    user_errors,
)


@app.command()
@user_errors
def validate(study: StudyOpt, set_: SetOpt = None) -> None:
    """Check a study file and its data without touching any storage."""
    from hpo.config import load_spec

    spec = load_spec(study, set_ or [])
    from hpo.study import prepare

    table, plan = prepare(spec)
    sizes = [int((plan == f).sum()) for f in range(spec.cv.folds)]
    held = len(table) - sum(sizes)
    console.print(f"{spec.name}: valid; {len(table)} images, {table.num_classes} classes, fold sizes {sizes}"
                  + (f"; {held} held out of every fold (cv.holdout)" if held else ""))
    if table.skipped:
        console.print(table.skipped_summary(), soft_wrap=True, highlight=False)


@app.command("list")
@user_errors
def list_(kind: Annotated[str | None, typer.Argument(help="One kind: formats, losses, schedulers, pruners...")] = None) -> None:
    """What the study file can name: every registry's entries, with their arguments and defaults."""
    from hpo.catalog import render_all

    Console(width=None if sys.stdout.isatty() else 120).print(render_all(kind), markup=False, highlight=False)


@data_app.command("describe")
@user_errors
def data_describe(
    study: StudyOpt,
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML file to write")] = Path("eda.html"),
    set_: SetOpt = None,
) -> None:
    """Describe the study's data before a search, as one HTML page: class balance and weights,
    label factors, image sizes and pixel statistics, sample images, unreadable files, the folds."""
    from hpo.config import load_spec
    from hpo.review.eda import describe_data, summary_table

    description = describe_data(load_spec(study, set_ or []), output, progress=console.is_terminal)
    Console(width=None if sys.stdout.isatty() else 120).print(summary_table(description))
    console.print(f"wrote {output}", soft_wrap=True, highlight=False)


@data_app.command("prepare")
@user_errors
def data_prepare(study: StudyOpt, set_: SetOpt = None) -> None:
    """Decode, crop and resize every image once, at every image size the study can sample, into
    the cache every trial and worker on this machine reads ($HPO_CACHE, default ~/.cache/hpo)."""
    from hpo.config import load_spec
    from hpo.prepare import prepare_cache

    spec = load_spec(study, set_ or [])
    for entry in prepare_cache(spec, progress=console.is_terminal):
        where = entry.path or "memory (HPO_CACHE=off)"
        console.print(f"{entry.size} px: {entry.images} images, {entry.megabytes:.0f} MB"
                      f" {'built' if entry.built else 'already cached'} in {entry.seconds:.1f} s -> {where}",
                      soft_wrap=True, highlight=False)
