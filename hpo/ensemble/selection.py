"""Greedy ensemble selection with replacement (Caruana et al., ICML 2004), per-class decision
offsets, and an honest estimate of both on new data. Pure numpy, on out-of-fold probabilities.

- :func:`select`: start from the best-scoring prefix of the ``init`` best members (sorted
  initialisation), then add,
  with replacement, the member whose addition gives the highest macro F1 of the averaged
  probabilities, up to ``max_members`` picks; the weights are how often each was picked, at the
  pick count that scored best.
- :func:`fit_offsets`: per-class offsets added to the log of the averaged probabilities, fitted
  by coordinate ascent on macro F1 (imbalanced classes gain most).
- :func:`nested_estimate`: members, weights and offsets chosen on K-1 folds' out-of-fold rows
  and scored on the left-out fold, averaged over folds: the selection score itself is optimistic.
- :func:`resampled_spread`: how much a score on a few people would move on other people.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

OFFSET_GRID = np.linspace(-3.0, 3.0, 61)
OFFSET_ROUNDS = 3
EPSILON = 1e-7  # the log of a probability of zero


def macro_f1(labels: np.ndarray, predicted: np.ndarray, classes: int) -> float:
    """Macro F1 over all ``classes`` (0 for a class neither present nor predicted), as the study
    scores its folds (scikit-learn's ``f1_score(average="macro", labels=range(classes),
    zero_division=0)``), from one confusion matrix."""
    confusion = np.bincount(labels * classes + predicted, minlength=classes * classes).reshape(classes, classes)
    true_positive = np.diag(confusion).astype(np.float64)
    denominator = confusion.sum(0) + confusion.sum(1)
    f1 = np.divide(2 * true_positive, denominator, out=np.zeros(classes), where=denominator > 0)
    return float(f1.mean())


def decide(probabilities: np.ndarray, offsets: np.ndarray | None = None) -> np.ndarray:
    """The class of each row: argmax of the log-probabilities plus the offsets."""
    if offsets is None or not np.any(offsets):
        return probabilities.argmax(1)
    return (np.log(probabilities + EPSILON) + offsets).argmax(1)


@dataclass(frozen=True)
class Selection:
    """Members (indices into the candidates) and how often each was picked."""

    counts: dict[int, int]
    score: float  # macro F1 of the weighted average on the rows it was chosen on

    @property
    def weights(self) -> dict[int, float]:
        total = sum(self.counts.values())
        return {member: n / total for member, n in sorted(self.counts.items())}

    def average(self, candidates: list[np.ndarray]) -> np.ndarray:
        return sum(w * candidates[m] for m, w in self.weights.items())


def select(candidates: list[np.ndarray], labels: np.ndarray, max_members: int = 20, init: int = 3) -> Selection:
    """Greedy forward selection with replacement over ``candidates`` (each (rows, classes)
    probabilities of one trial), maximizing macro F1 against ``labels``."""
    if not candidates:
        raise ValueError("no candidates to select from")
    classes = candidates[0].shape[1]
    singles = [macro_f1(labels, p.argmax(1), classes) for p in candidates]
    order = sorted(range(len(candidates)), key=lambda i: (-singles[i], i))
    # Sorted initialisation: the best prefix of the best ``init`` (a weak third trial is not forced in).
    prefixes = [order[:n] for n in range(1, max(1, min(init, len(candidates), max_members)) + 1)]
    scored = [(macro_f1(labels, sum(candidates[i] for i in bag).argmax(1), classes), -len(bag)) for bag in prefixes]
    bag = list(prefixes[max(range(len(prefixes)), key=lambda n: scored[n])])
    total = sum(candidates[i] for i in bag)
    best = Selection(dict(Counter(bag)), scored[len(bag) - 1][0])
    while len(bag) < max_members:
        scores = [macro_f1(labels, (total + p).argmax(1), classes) for p in candidates]
        pick = max(range(len(candidates)), key=lambda i: (scores[i], singles[i], -i))
        bag.append(pick)
        total = total + candidates[pick]
        if scores[pick] > best.score:
            best = Selection(dict(Counter(bag)), scores[pick])
    return best


def fit_offsets(probabilities: np.ndarray, labels: np.ndarray, grid: np.ndarray = OFFSET_GRID,
                rounds: int = OFFSET_ROUNDS) -> tuple[np.ndarray, float]:
    """Per-class offsets to the log-probabilities, by coordinate ascent on macro F1 (a class's
    offset changes only where it raises the score), and the score they reach."""
    classes = probabilities.shape[1]
    logs = np.log(probabilities + EPSILON)
    offsets = np.zeros(classes)
    best = macro_f1(labels, logs.argmax(1), classes)
    for _ in range(rounds):
        improved = False
        for c in range(classes):
            # Moving class c's offset changes a row's decision only between c and the best other
            # class: one pass over the rows per value, not an argmax over every class.
            others = logs + offsets
            others[:, c] = -np.inf
            runner_up = others.argmax(1)
            margin = others[np.arange(len(logs)), runner_up] - logs[:, c]
            for value in grid:
                predicted = np.where(value > margin, c, runner_up)
                score = macro_f1(labels, predicted, classes)
                if score > best + 1e-12:
                    best, offsets[c], improved = score, value, True
        if not improved:
            break
    return offsets, best


@dataclass(frozen=True)
class Estimate:
    """Macro F1 on each left-out fold, of members, weights (and offsets) chosen on the others."""

    per_fold: list[float]
    with_offsets: list[float]

    @property
    def mean(self) -> float:
        return float(np.mean(self.per_fold))

    @property
    def mean_with_offsets(self) -> float:
        return float(np.mean(self.with_offsets))


def nested_estimate(candidates: list[np.ndarray], labels: np.ndarray, folds: np.ndarray,
                    max_members: int = 20, init: int = 3, offsets: bool = True) -> Estimate:
    """The selection (and offsets) repeated with each fold left out, scored on that fold."""
    classes = candidates[0].shape[1]
    plain, offset = [], []
    for fold in np.unique(folds):
        seen, unseen = folds != fold, folds == fold
        chosen = select([p[seen] for p in candidates], labels[seen], max_members, init)
        average = chosen.average([p[unseen] for p in candidates])
        plain.append(macro_f1(labels[unseen], average.argmax(1), classes))
        if offsets:
            fitted, _ = fit_offsets(chosen.average([p[seen] for p in candidates]), labels[seen])
            offset.append(macro_f1(labels[unseen], decide(average, fitted), classes))
    return Estimate(plain, offset or plain)


def resampled_spread(labels: np.ndarray, predicted: np.ndarray, groups: np.ndarray, classes: int,
                     resamples: int = 200, seed: int = 0) -> float:
    """The standard deviation of macro F1 over bootstrap resamples of the groups (people): a
    person's photos are drawn together, as new people come. Each resample is scored over the
    classes it holds or predicts (a rare class a resample misses is not a zero in its mean)."""
    people, rows_of = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(rows_of == i) for i in range(len(people))]
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(resamples):
        rows = np.concatenate([members[i] for i in rng.integers(0, len(people), len(people))])
        present = len(np.union1d(labels[rows], predicted[rows]))
        scores.append(macro_f1(labels[rows], predicted[rows], classes) * classes / present)
    return float(np.std(scores))
