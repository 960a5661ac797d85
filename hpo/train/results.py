"""What training a fold takes and gives: the fold's data, each epoch's scores, the fold's result.
Read by the objective, the trackers, the review artifacts and the final models."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class FoldData:
    """Decoded uint8 NHWC images and labels of the whole set, and one fold's two sides.

    ``train_labels`` (default: ``labels``) are what the model trains on, e.g. with the mask
    format's lowered age boundary; validation always scores against the true ``labels``.
    ``held_out_idx``: samples no fold trains on (cv.holdout), predicted once by the best epoch.
    """

    images: np.ndarray
    labels: np.ndarray
    train_idx: np.ndarray
    val_idx: np.ndarray
    num_classes: int
    train_labels: np.ndarray | None = None
    factors: tuple[tuple[str, int], ...] = ()
    held_out_idx: np.ndarray | None = None

    @property
    def fit_labels(self) -> np.ndarray:
        return self.labels if self.train_labels is None else self.train_labels

    @property
    def val_labels(self) -> np.ndarray:
        return self.labels[self.val_idx]


@dataclass(frozen=True)
class EpochResult:
    fold: int
    epoch: int
    train_loss: float
    val_loss: float
    macro_f1: float
    accuracy: float
    lr: float
    images_per_second: float
    frozen: bool = False  # the backbone was frozen this epoch (freeze: backbone / unfreeze)
    stale_epochs: int = 0  # epochs since the best one, against the patience
    data_wait: float = 0.0  # share of the epoch's training time spent waiting for the loader (the
    # first epoch's includes starting its workers)


@dataclass
class FoldResult:
    fold: int
    best_f1: float = -1.0
    best_epoch: int = -1
    best_accuracy: float = 0.0
    per_class_f1: list[float] = field(default_factory=list)
    history: list[EpochResult] = field(default_factory=list)
    best_state: dict[str, Any] | None = None  # the best epoch's weights (on the CPU)
    best_predictions: np.ndarray | None = None  # validation predictions of the best epoch
    best_probabilities: np.ndarray | None = None  # and their class probabilities (float32)
    val_labels: np.ndarray | None = None
    val_index: np.ndarray | None = None  # the validation samples' indices in the data set
    held_out_probabilities: np.ndarray | None = None  # (2, held-out samples, classes): the best
    # epoch's probabilities of the samples no fold trains on, as they are and flipped (hpo predict --tta)
    stopped_early: int | None = None  # the epoch after which patience ran out

    @property
    def images_per_second(self) -> float:
        return float(np.mean([e.images_per_second for e in self.history])) if self.history else 0.0

    @property
    def data_wait(self) -> float:
        return float(np.mean([e.data_wait for e in self.history])) if self.history else 0.0
