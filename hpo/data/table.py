"""ImageTable: what every data format produces, an index of (image, label, group)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from hpo.errors import ConfigError, DataError

CORRUPT = "corrupt"  # the skipped-files reason of files that do not open


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
    # Labels that are a mixed-radix code of several factors (the mask format: mask x gender x
    # age), most significant first; lets a model use one head per factor.
    factors: tuple[tuple[str, int], ...] = ()
    # Training-time labels under options such as the mask format's age_boundary; None: no options.
    relabel_for_training: Callable[..., np.ndarray] | None = None
    skipped: dict[str, int] = field(default_factory=dict)  # files left out, by reason
    # Files left out because they do not open (``data.corrupt: skip``): (file, why), also
    # counted in ``skipped`` under CORRUPT.
    corrupt: tuple[tuple[str, str], ...] = ()
    # The image files, for formats that read files: their modification times key the decoded
    # cache (a file rewritten in place is decoded again) and ``hpo data describe`` names types.
    files: Sequence[Path] | None = None
    # Per-sample numbers a format knows beyond the label, shown by ``hpo data describe``
    # (the mask format's ages).
    meta: dict[str, np.ndarray] = field(default_factory=dict)

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

    def skipped_summary(self) -> str:
        """'skipped: reason n, ...' for the files the format left out, or ''."""
        return "skipped: " + ", ".join(f"{why} {n}" for why, n in self.skipped.items()) if self.skipped else ""

    def training_labels(self, options: dict[str, Any]) -> np.ndarray:
        """The labels a model trains on; evaluation always uses the true ``labels``."""
        if not options:
            return self.labels
        if self.relabel_for_training is None:
            raise ConfigError(f"search.labels: {sorted(options)} are not options of this data format; remove them")
        return self.relabel_for_training(**options)

    def class_counts(self, indices: np.ndarray | None = None) -> np.ndarray:
        labels = self.labels if indices is None else self.labels[indices]
        return np.bincount(labels, minlength=self.num_classes)

    def fingerprint(self) -> str:
        """A digest of classes, labels, groups and sample identities: detects changed data.

        The same on every machine that holds the same data (no paths or times in it)."""
        if not hasattr(self, "_fingerprint"):
            digest = hashlib.sha256()
            for part in (self.classes, self.labels.tolist(), self.groups.tolist(), list(self.identity)):
                digest.update(repr(part).encode())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def content_key(self) -> str:
        """The fingerprint plus the files' modification times: keys this machine's decoded cache,
        so an image replaced by one of the same size is still decoded again. Read once per
        table: a study's data must not change under it (its fingerprint is checked on resume)."""
        if not hasattr(self, "_content_key"):
            digest = hashlib.sha256(self.fingerprint().encode())
            if self.files is not None:
                digest.update(repr([path.stat().st_mtime_ns for path in self.files]).encode())
            self._content_key = digest.hexdigest()[:16]
        return self._content_key

    def read_checked(self, i: int) -> np.ndarray:
        """``read(i)``, with any failure (PIL raises several types) as a DataError naming the file."""
        try:
            return self.read(i)
        except Exception as e:
            raise DataError(f"cannot read {self.describe(i)} ({e}); replace or remove the file") from e


def resize_image(image: np.ndarray, size: int, crop: tuple[int, int] | None = None) -> np.ndarray:
    """The one preprocessing every image goes through, in training and in prediction: an optional
    centred crop (height, width) of the original, then a resize to ``size`` x ``size``."""
    if crop is not None:
        h, w = image.shape[:2]
        ch, cw = min(crop[0], h), min(crop[1], w)
        top, left = (h - ch) // 2, (w - cw) // 2
        image = image[top : top + ch, left : left + cw]
    interpolation = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)

