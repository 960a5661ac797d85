"""ImageTable: what every data format produces, an index of (image, label, group)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np

from hpo.errors import DataError


@dataclass(eq=False)
class ImageTable:
    """Samples of one data set.

    ``read(i)`` returns image ``i`` as an RGB uint8 array at its native size; ``identity`` names
    each sample in the data fingerprint (a relative path and file size, say), so the fingerprint
    is the same on every machine that holds the same data.
    """

    classes: tuple[str, ...]
    labels: np.ndarray
    groups: np.ndarray
    identity: Sequence[str]
    read: Callable[[int], np.ndarray]
    describe: Callable[[int], str] = field(default=lambda i: f"sample {i}")

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.groups = np.asarray([str(g) for g in self.groups])
        if not len(self.labels):
            raise DataError("the data set is empty; check data.root and the format's options")
        if not (len(self.labels) == len(self.groups) == len(self.identity)):
            raise ValueError("labels, groups and identity must have one entry per sample")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_counts(self, indices: np.ndarray | None = None) -> np.ndarray:
        labels = self.labels if indices is None else self.labels[indices]
        return np.bincount(labels, minlength=self.num_classes)

    def fingerprint(self) -> str:
        """A digest of classes, labels, groups and sample identities: detects changed data."""
        digest = hashlib.sha256()
        for part in (self.classes, self.labels.tolist(), self.groups.tolist(), list(self.identity)):
            digest.update(repr(part).encode())
        return digest.hexdigest()[:16]


_decoded: dict[tuple[str, int], np.ndarray] = {}


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """The one resize every image goes through, in training and in prediction."""
    interpolation = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def decoded(table: ImageTable, size: int, threads: int = 8) -> np.ndarray:
    """All images resized to ``size`` x ``size``, as one uint8 array (N, size, size, 3).

    Decoded once per process and image size, then shared by every trial and fold.
    """
    key = (table.fingerprint(), size)
    if key not in _decoded:

        def load(i: int) -> np.ndarray:
            try:
                image = table.read(i)
            except Exception as e:  # PIL raises several types for corrupt files
                raise DataError(f"cannot read {table.describe(i)} ({e}); replace or remove the file") from e
            return resize_image(image, size)

        with ThreadPoolExecutor(threads) as pool:
            _decoded[key] = np.stack(list(pool.map(load, range(len(table)))))
    return _decoded[key]
