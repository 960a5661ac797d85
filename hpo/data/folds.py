"""The fold plan: group-aware stratified K-fold, computed once per study."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from hpo.data.table import ImageTable
from hpo.errors import DataError


def make_fold_plan(table: ImageTable, folds: int, seed: int) -> np.ndarray:
    """The validation fold of every sample; no group is split across folds."""
    present, counts = np.unique(table.labels, return_counts=True)
    if len(present) < 2:
        only = table.classes[present[0]] if len(table.classes) > present[0] else present[0]
        raise DataError(f"the data holds one class only ({only!r}); a classifier needs two or more, check data.root")
    n_groups = len(np.unique(table.groups))
    if n_groups < folds:
        raise DataError(f"cv.folds={folds} but the data has only {n_groups} group(s); lower cv.folds")
    if counts.max() < folds:
        raise DataError(f"cv.folds={folds} but no class has {folds} samples (largest: {counts.max()}); lower cv.folds")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    plan = np.full(len(table), -1, dtype=np.int64)
    with warnings.catch_warnings():
        # sklearn warns when a class has fewer members than folds; the plan is still valid.
        warnings.simplefilter("ignore", UserWarning)
        for fold, (_, val) in enumerate(splitter.split(np.zeros(len(table)), table.labels, table.groups)):
            plan[val] = fold
    return plan


def fold_indices(plan: np.ndarray, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices) of one fold."""
    return np.flatnonzero(plan != fold), np.flatnonzero(plan == fold)


def iter_folds(plan: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    for fold in range(int(plan.max()) + 1):
        yield (fold, *fold_indices(plan, fold))


def plan_digest(plan: np.ndarray) -> str:
    """A short digest of a fold plan: an export names the exact folds its F1 was measured on."""
    return hashlib.sha256(np.asarray(plan, dtype=np.int64).tobytes()).hexdigest()[:16]
