"""Fold plans: stable for a seed, stratified, and never splitting a group."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hpo.data.folds import HELD_OUT, held_out, iter_folds, make_fold_plan
from hpo.data.formats import load_table
from hpo.errors import DataError
from hpo.review.data_stats import fold_split


def test_plan_is_stable_and_seeded(image_root):
    table = load_table("csv", {"root": str(image_root), "group_column": "group"})
    first = make_fold_plan(table, 4, seed=7)
    assert np.array_equal(first, make_fold_plan(table, 4, seed=7))
    assert not np.array_equal(first, make_fold_plan(table, 4, seed=8))
    assert set(first.tolist()) == {0, 1, 2, 3}


def test_no_group_on_both_sides_of_a_fold(image_root):
    table = load_table("csv", {"root": str(image_root), "group_column": "group"})
    plan = make_fold_plan(table, 3, seed=0)
    for _, train, val in iter_folds(plan):
        assert not set(table.groups[train]) & set(table.groups[val])
        assert len(train) + len(val) == len(table)
    # Each group lies in exactly one validation fold.
    for group in set(table.groups):
        assert len(set(plan[table.groups == group])) == 1


def test_folds_are_stratified():
    table = load_table("digits", {})
    plan = make_fold_plan(table, 5, seed=0)
    overall = table.class_counts() / len(table)
    for _, _, val in iter_folds(plan):
        share = table.class_counts(val) / len(val)
        assert np.abs(share - overall).max() < 0.01


def test_one_class_or_too_few_samples_for_the_folds_is_a_data_error(image_root):
    table = load_table("csv", {"root": str(image_root), "group_column": "group"})
    one_class = dataclasses.replace(table, labels=np.zeros(len(table), dtype=np.int64))
    with pytest.raises(DataError, match="the data holds one class only \\('c0_red'\\); a classifier needs two"):
        make_fold_plan(one_class, 2, seed=0)
    few = np.flatnonzero(table.labels != 2)[::13]  # 3 + 4 samples of two classes, each its own group
    small = dataclasses.replace(table, labels=table.labels[few], groups=np.arange(len(few)),
                                identity=[table.identity[i] for i in few])
    with pytest.raises(DataError, match="cv.folds=5 but no class has 5 samples \\(largest: 4\\); lower cv.folds"):
        make_fold_plan(small, 5, seed=0)
    assert set(make_fold_plan(small, 3, seed=0).tolist()) == {0, 1, 2}


def test_a_holdout_keeps_whole_groups_out_of_every_fold():
    """cv.holdout: about that share of the groups, stratified, in no fold's training or validation
    side; the folds split the rest as before; no holdout gives the plan it always gave."""
    table = load_table("digits", {})
    table = dataclasses.replace(table, groups=np.arange(len(table)) // 5)  # groups of 5 images
    plain = make_fold_plan(table, 3, seed=0)
    assert (plain >= 0).all() and np.array_equal(plain, make_fold_plan(table, 3, seed=0, holdout=0.0))
    plan = make_fold_plan(table, 3, seed=0, holdout=0.2)
    held = held_out(plan)
    assert abs(len(held) / len(table) - 0.2) < 0.02
    assert not set(table.groups[held]) & set(table.groups[plan != HELD_OUT])
    share = table.class_counts(held) / len(held)
    assert np.abs(share - table.class_counts() / len(table)).max() < 0.03
    for _, train, val in iter_folds(plan):
        assert not set(held) & (set(train) | set(val))
        assert len(train) + len(val) + len(held) == len(table)
    assert set(plan.tolist()) == {HELD_OUT, 0, 1, 2}
    split = fold_split(table, plan)  # the data page counts the folds' samples only
    assert split.class_counts.sum() == (plan != HELD_OUT).sum() and split.groups_crossing == 0


def test_a_holdout_that_leaves_too_few_groups_is_a_data_error(image_root):
    table = load_table("csv", {"root": str(image_root), "group_column": "group"})
    groups = len(set(table.groups))
    with pytest.raises(DataError, match=f"cv.holdout=0.01 needs at least 100 groups; the data has {groups}"):
        make_fold_plan(table, 2, seed=0, holdout=0.01)
