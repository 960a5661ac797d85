"""The registry of data formats: a factory taking the study file's ``data`` options and
returning an :class:`~hpo.data.table.ImageTable`. Entries live in the modules beside it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpo.data.table import ImageTable
from hpo.errors import DataError
from hpo.registry import Registry

FormatFactory = Callable[..., ImageTable]  # keyword-only options -> the table
FORMATS: Registry[FormatFactory] = Registry("data format")


def load_table(format: str, options: dict[str, Any]) -> ImageTable:
    return FORMATS.get(format, "data.format")(**options)


def existing_dir(root: str | None, key: str = "data.root") -> Path:
    if not root:
        raise DataError(f"{key} is not set; set it to the data folder (--set {key}=/path)")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"{key}: folder {path} does not exist; set {key} to the data folder")
    return path
