"""The decoded-image cache: every image decoded, centre-cropped and resized once per machine.

One uint8 ``.npy`` file of shape (N, size, size, 3) per data set x image size x crop, under
``$HPO_CACHE/decoded`` (default ``~/.cache/hpo``). Every trial, fold and worker process on the
machine memory-maps the same file, so the page cache holds one copy and no trial decodes a JPEG.
The file name is a digest of the data's content key (fingerprint + file modification times), the
size, the crop and :data:`PREPROCESS_VERSION`: changed data gets a new file, never a stale one.

A file is built once, in parallel threads (PIL and OpenCV release the GIL), under a file lock
(concurrent workers wait for the first one instead of decoding the same images), into a
``.partial`` file renamed when complete: a killed build leaves nothing a reader would trust.
``HPO_CACHE=off`` decodes into memory instead, once per process.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from hpo.data.table import ImageTable, resize_image
from hpo.errors import DataError
from hpo.settings import CACHE as ENV_CACHE
from hpo.settings import settings
from hpo.system import available_cpus

log = logging.getLogger(__name__)
# Bump when resize_image (or anything else that shapes the cached pixels) changes.
# 2: 16-bit, 32-bit and floating-point grey images scaled to 8 bits, not clipped (formats.to_rgb8).
PREPROCESS_VERSION = 2

_opened: dict[str, np.ndarray] = {}  # this process's open arrays, by cache key


def cache_root() -> Path | None:
    """The cache folder (``$HPO_CACHE``, default ``~/.cache/hpo``), or None when set to off."""
    return settings().cache


def check_cache_root() -> None:
    """``$HPO_CACHE`` must name a folder (or one that can be made), not a file."""
    root = cache_root()
    if root is not None and root.exists() and not root.is_dir():
        raise DataError(f"cannot write the decoded-image cache in {ENV_CACHE}={root}: that is a file, not a folder;"
                        f" point {ENV_CACHE} at a folder, or set {ENV_CACHE}=off to decode in memory")


def _fix(error: OSError) -> str:
    """What to do when the cache cannot be written, by what the system said."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"free disk space, point {ENV_CACHE} at a larger disk, or set {ENV_CACHE}=off to decode in memory"
    if error.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"a file stands where a folder of the cache should be; point {ENV_CACHE} at a folder"
    return f"set {ENV_CACHE} to a writable folder, or {ENV_CACHE}=off to decode in memory"


def cache_key(table: ImageTable, size: int, crop: tuple[int, int] | None) -> str:
    text = f"v{PREPROCESS_VERSION}|{table.content_key()}|{size}|{list(crop) if crop else None}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def cache_path(table: ImageTable, size: int, crop: tuple[int, int] | None = None) -> Path | None:
    root = cache_root()
    return None if root is None else root / "decoded" / f"{cache_key(table, size, crop)}.npy"


def decoded(table: ImageTable, size: int, crop: tuple[int, int] | None = None,
            progress: bool | None = None) -> np.ndarray:
    """All images of ``table``, centre-cropped to ``crop`` and resized to ``size`` x ``size``, as
    a read-only uint8 array (N, size, size, 3): memory-mapped from the cache (built on first use)
    or, with the cache off, decoded into memory. Opened once per process.

    ``progress``: show a progress bar while building (default: when stderr is a terminal).
    """
    key = cache_key(table, size, crop)
    if key not in _opened:
        path = cache_path(table, size, crop)
        if path is None:
            images = np.empty((len(table), size, size, 3), dtype=np.uint8)
            decode_into(images, table, size, crop, progress)
            images.flags.writeable = False
        else:
            images = _open_or_build(path, table, size, crop, progress)
        _opened[key] = images
    return _opened[key]


def _open(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached array, or None when absent or not what this data needs (a stray file)."""
    if not path.is_file():
        return None
    try:
        images = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    return images if images.shape == shape and images.dtype == np.uint8 else None


def _open_or_build(path: Path, table: ImageTable, size: int, crop: tuple[int, int] | None,
                   progress: bool | None) -> np.ndarray:
    shape = (len(table), size, size, 3)
    if (images := _open(path, shape)) is not None:
        return images
    check_cache_root()
    lock = path.with_suffix(".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock)):
            if (images := _open(path, shape)) is not None:  # another process built it meanwhile
                return images
            # Named per process: a builder that took a lock file another process had just removed
            # (below) writes its own partial file, never one being written.
            partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
            try:
                out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
                started = time.perf_counter()
                decode_into(out, table, size, crop, progress)
                out.flush()
                del out
                os.replace(partial, path)
            finally:
                partial.unlink(missing_ok=True)
            megabytes = path.stat().st_size / 2**20
            log.info("decoded %d images at %d px into %s (%.0f MB) in %.1f s", len(table), size, path,
                     megabytes, time.perf_counter() - started)
    except OSError as e:
        raise DataError(f"cannot write the decoded-image cache {path} ({e.strerror or e}); {_fix(e)}") from e
    finally:
        lock.unlink(missing_ok=True)  # no empty lock files left behind, built or failed
    images = _open(path, shape)
    if images is None:
        raise DataError(f"the decoded-image cache {path} is unreadable; delete it and run again")
    return images


def decode_into(out: np.ndarray, table: ImageTable, size: int, crop: tuple[int, int] | None,
                progress: bool | None = None) -> None:
    """Decode, crop and resize every image of ``table`` into ``out``, in parallel threads.
    A file that cannot be read is a DataError naming it."""

    def one(i: int) -> None:
        out[i] = resize_image(table.read_checked(i), size, crop)

    with ThreadPoolExecutor(available_cpus()) as pool, \
            image_progress(f"decoding at {size} px", len(table), progress) as advance:
        for _ in pool.map(one, range(len(table))):
            advance()


@contextmanager
def image_progress(what: str, total: int, show: bool | None) -> Iterator[Callable[[], None]]:
    """A pass over a data set's images: yields ``advance()``, drawing a rich progress bar on
    stderr when ``show`` (default: when stderr is a terminal); elsewhere (worker logs) nothing."""
    if show is None:
        show = sys.stderr.isatty()
    if not show:
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(what, total=total)
        yield lambda: bar.advance(task)


def remembered(name: str, key: Any, compute: Callable[[], Any]) -> Any:
    """``compute()``, remembered in the cache folder under ``name`` and a digest of ``key``
    (JSON values only): a slow check of the same files is not redone by every process."""
    root = cache_root()
    if root is None:
        return compute()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    path = root / "checks" / f"{name}-{digest}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    value = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(value))
        os.replace(partial, path)
    except OSError as e:  # remembering is an optimisation; the check itself succeeded
        log.warning("could not remember %s in %s: %s", name, path, e)
    return value


__all__ = ["ENV_CACHE", "cache_path", "cache_root", "decoded", "image_progress", "remembered"]
