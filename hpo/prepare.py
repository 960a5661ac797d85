"""`hpo data prepare`: build a study's decoded-image caches ahead of the search."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpo.data import cache
from hpo.data.formats import load_table
from hpo.space import Fixed, Range, candidates


@dataclass(frozen=True)
class Prepared:
    size: int
    images: int
    path: Path | None  # None: the cache is off (HPO_CACHE=off)
    built: bool  # False: it was already there
    seconds: float
    megabytes: float


def image_sizes(spec: Any) -> list[int]:
    """Every image size the study can sample (a range: every size its step allows)."""
    param = spec.search.image_size or Fixed(spec.data.image_size)
    if isinstance(param, Range):
        step = int(param.step or 1)
        return list(range(int(param.low), int(param.high) + 1, step))
    return sorted({int(size) for size in candidates(param)})


def prepare_cache(spec: Any, progress: bool | None = None) -> list[Prepared]:
    """Decode the study's data once per image size (``spec``: a StudySpec)."""
    table = load_table(spec.data.format, spec.data.options)
    crop = tuple(spec.data.crop) if spec.data.crop else None
    done = []
    for size in image_sizes(spec):
        path = cache.cache_path(table, size, crop)
        existed = path is not None and path.is_file()
        started = time.perf_counter()
        images = cache.decoded(table, size, crop, progress=progress)
        done.append(Prepared(size, len(images), path, not existed, time.perf_counter() - started,
                             images.nbytes / 2**20))
    return done
