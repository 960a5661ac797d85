"""Fold plans: stable for a seed, stratified, and never splitting a group."""

from __future__ import annotations

import numpy as np

from hpo.data.folds import iter_folds, make_fold_plan
from hpo.data.formats import load_table


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
