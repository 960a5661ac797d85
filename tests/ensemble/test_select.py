"""Ensemble selection on synthetic out-of-fold matrices whose best combination is known."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from hpo.ensemble import selection
from hpo.ensemble.selection import decide, fit_offsets, macro_f1, nested_estimate, resampled_spread, select

CLASSES = 4


def one_hot_ish(labels: np.ndarray, right: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Probabilities that put 0.7 on the true class where ``right``, else on a wrong one."""
    wrong = (labels + rng.integers(1, CLASSES, len(labels))) % CLASSES
    chosen = np.where(right, labels, wrong)
    p = np.full((len(labels), CLASSES), 0.1)
    p[np.arange(len(labels)), chosen] = 0.7
    return p


@pytest.fixture
def known():
    """A knows classes 0-1, B knows classes 2-3, C knows nothing: A + B is right everywhere."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, CLASSES, 400)
    a = one_hot_ish(labels, labels < 2, rng)
    b = one_hot_ish(labels, labels >= 2, rng)
    a[labels >= 2] = 0.25  # A has no opinion where it does not know
    b[labels < 2] = 0.25
    c = one_hot_ish(labels, np.zeros(len(labels), bool), rng)
    return labels, [c, a, b]


def test_macro_f1_is_scikit_learns(known):
    labels, candidates = known
    for p in candidates:
        expected = f1_score(labels, p.argmax(1), average="macro", labels=range(CLASSES), zero_division=0)
        assert macro_f1(labels, p.argmax(1), CLASSES) == pytest.approx(expected)


def test_the_known_best_combination_is_found(known):
    labels, candidates = known
    chosen = select(candidates, labels, max_members=10, init=1)
    assert set(chosen.weights) == {1, 2} and chosen.score == 1.0  # A and B; never the noise
    assert macro_f1(labels, chosen.average(candidates).argmax(1), CLASSES) == 1.0


def test_one_trial_is_the_ensemble_of_itself(known):
    labels, candidates = known
    chosen = select(candidates[1:2], labels)
    assert chosen.weights == {0: 1.0}


def test_offsets_lift_a_class_the_probabilities_underrate():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, CLASSES, 600)
    p = np.full((600, CLASSES), 0.2)
    p[np.arange(600), labels] = 0.3
    p[labels == 3, 3] = 0.19  # class 3 always loses by a little
    before = macro_f1(labels, p.argmax(1), CLASSES)
    offsets, after = fit_offsets(p, labels)
    assert after == 1.0 > before and offsets[3] > 0
    assert macro_f1(labels, decide(p, offsets), CLASSES) == after


def test_the_nested_estimate_scores_each_fold_with_what_was_chosen_without_it(known, monkeypatch):
    labels, candidates = known
    folds = np.arange(len(labels)) % 4
    seen_rows = []
    real = selection.select

    def spying(chosen_from, chosen_labels, *args):
        seen_rows.append(len(chosen_labels))
        return real(chosen_from, chosen_labels, *args)

    monkeypatch.setattr(selection, "select", spying)
    estimate = nested_estimate(candidates, labels, folds, max_members=10, init=1)
    assert seen_rows == [300] * 4  # chosen on three folds' rows each time, never the scored fold's
    assert len(estimate.per_fold) == 4 and estimate.mean == 1.0


def test_the_spread_of_a_score_resamples_whole_people():
    """Right on every photo: no spread. One person always wrong: a spread, and a larger one when
    that person's 7 photos move together than when each photo is its own person."""
    labels = np.repeat(np.arange(CLASSES), 14) % CLASSES
    people = np.arange(len(labels)) // 7
    assert resampled_spread(labels, labels, people, CLASSES) == 0.0
    wrong = labels.copy()
    wrong[people == 0] = (labels[people == 0] + 1) % CLASSES
    by_person = resampled_spread(labels, wrong, people, CLASSES)
    by_photo = resampled_spread(labels, wrong, np.arange(len(labels)), CLASSES)
    assert by_person > by_photo > 0
    assert resampled_spread(labels, wrong, people, CLASSES) == by_person  # seeded
