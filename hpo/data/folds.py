"""The fold plan: group-aware stratified K-fold, computed once per study; optionally a slice of
groups (people) held out of every fold, which no fold model trains on (``HELD_OUT`` in the plan):
the models' average is scored there, as it is submitted (hpo.ensemble)."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from hpo.data.table import ImageTable
from hpo.errors import DataError

HELD_OUT = -1  # the plan's mark of a sample in no fold


def make_fold_plan(table: ImageTable, folds: int, seed: int, holdout: float = 0.0) -> np.ndarray:
    """The validation fold of every sample, or ``HELD_OUT`` for about ``holdout`` of the groups
    (stratified); no group is split."""
    present, counts = np.unique(table.labels, return_counts=True)
    if len(present) < 2:
        only = table.classes[present[0]] if len(table.classes) > present[0] else present[0]
        raise DataError(f"the data holds one class only ({only!r}); a classifier needs two or more, check data.root")
    n_groups = len(np.unique(table.groups))
    if n_groups < folds:
        raise DataError(f"cv.folds={folds} but the data has only {n_groups} group(s); lower cv.folds")
    if counts.max() < folds:
        raise DataError(f"cv.folds={folds} but no class has {folds} samples (largest: {counts.max()}); lower cv.folds")
    plan = np.full(len(table), HELD_OUT, dtype=np.int64)
    rows = np.arange(len(table))
    if holdout > 0:
        rows = _held_out_rest(table, holdout, seed)
        if len(np.unique(table.groups[rows])) < folds:
            raise DataError(f"cv.holdout={holdout} leaves fewer than cv.folds={folds} groups to the folds;"
                            " lower cv.holdout or cv.folds")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # sklearn warns when a class has fewer members than folds; the plan is still valid.
        warnings.simplefilter("ignore", UserWarning)
        for fold, (_, val) in enumerate(splitter.split(rows, table.labels[rows], table.groups[rows])):
            plan[rows[val]] = fold
    return plan


def _held_out_rest(table: ImageTable, holdout: float, seed: int) -> np.ndarray:
    """The rows left to the folds once one stratified slice of about ``holdout`` of the groups
    is held out (the first split of round(1 / holdout) group-aware folds)."""
    n_splits = max(2, round(1 / holdout))
    if len(np.unique(table.groups)) < n_splits:
        raise DataError(f"cv.holdout={holdout} needs at least {n_splits} groups; the data has"
                        f" {len(np.unique(table.groups))}: lower cv.holdout, or set it to 0")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed + 7919)  # not the folds' draw
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        rest, _ = next(splitter.split(np.zeros(len(table)), table.labels, table.groups))
    return rest


def fold_indices(plan: np.ndarray, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices) of one fold; held-out samples are in neither."""
    return np.flatnonzero((plan != fold) & (plan != HELD_OUT)), np.flatnonzero(plan == fold)


def held_out(plan: np.ndarray) -> np.ndarray:
    """The indices of the samples held out of every fold (none without cv.holdout)."""
    return np.flatnonzero(plan == HELD_OUT)


def iter_folds(plan: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    for fold in range(int(plan.max()) + 1):
        yield (fold, *fold_indices(plan, fold))


def plan_digest(plan: np.ndarray) -> str:
    """A short digest of a fold plan: an export names the exact folds its F1 was measured on."""
    return hashlib.sha256(np.asarray(plan, dtype=np.int64).tobytes()).hexdigest()[:16]
