"""Folds as a fidelity: successive halving with rungs on fold boundaries (``pruner: fold_halving``).

A complete trial trains every fold, so it costs K times one training; a pruner that judges only
epochs lets every trial past its first rung train all K folds. Here, after each fold but the last,
a trial is promoted to its next fold only when the mean of its finished folds' best F1 is among
the top ``1/eta`` of every trial that finished as many folds (asynchronous successive halving,
ASHA, with folds as the resource: the folds are the same for every trial, so the means compare).
Within a fold, another pruner (median by default) judges the epochs as before.

A floor comes first: a trial whose finished folds score no more than ``floor`` times chance
(1 / classes, the macro F1 of guessing by class frequency) is not promoted, even when it is the
best of a bad start (measured: from-scratch trials that learnt nothing in a full fold trained
their other folds for ~20 s each, BENCHMARKS.md "Time to quality"); more folds do not make it learn.
With ``floor_after`` (off by default) the first rung's floor is also applied early: a trial whose
first fold is still no better than ``floor`` times chance after that share of its epochs stops
there (measured at 0.5: from-scratch trials that went on to learn were at 2.3-4.3 x chance by then,
those that did not below 1.3 x; the first learning trial completed 10-35 s sooner, but the
held-out F1 at equal time was lower in two of three seeds; BENCHMARKS.md "The floor within the first fold").

The objective tells the pruner what it needs through the trial itself: each finished fold's best
F1 in the ``keys.FINISHED_FOLDS`` user attribute, set before it asks after the fold. A trial that
has finished more folds than the fold of its last epoch report is being asked at a fold boundary.
"""

from __future__ import annotations

import math

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo import keys


class FoldHalvingPruner(optuna.pruners.BasePruner):
    """Fold rungs (promote the top ``1/eta``) over ``within_fold`` for the epochs of a fold.

    ``min_trials``: below this many trials at a rung every trial above the floor is promoted
    (the first trials of a study have no one to be compared with fairly). ``floor``: the
    multiple of chance a trial must beat to be promoted at all (0: no floor). ``floor_after``: the
    share of the first fold's epochs after which a trial whose best F1 there is still at or below
    the floor stops (0: only at the end of the fold)."""

    def __init__(self, steps_per_fold: int, within_fold: optuna.pruners.BasePruner | None = None,
                 eta: float = 3.0, min_trials: int = 1, floor: float = 1.5, floor_after: float = 0.0) -> None:
        if eta <= 1:
            raise ValueError(f"eta must be above 1, got {eta}")
        if min_trials < 1:
            raise ValueError(f"min_trials must be at least 1, got {min_trials}")
        if floor < 0:
            raise ValueError(f"floor must be 0 or more (a multiple of chance), got {floor}")
        if not 0 <= floor_after <= 1:
            raise ValueError(f"floor_after must be from 0 to 1 (a share of the first fold's epochs), got {floor_after}")
        self.steps_per_fold, self.within_fold = steps_per_fold, within_fold
        self.eta, self.min_trials, self.floor, self.floor_after = eta, min_trials, floor, floor_after
        # The epochs of the first fold after which the floor applies (0: at the fold's end only).
        self.floor_epochs = math.ceil(floor_after * steps_per_fold) if floor else 0

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        finished = finished_folds(trial)
        if trial.last_step is None:
            return False
        if len(finished) <= trial.last_step // self.steps_per_fold:  # asked after an epoch
            if self.floor_epochs and self.at_floor_early(trial, self.floor * chance(study)):
                return True
            return self.within_fold is not None and self.within_fold.prune(study, trial)
        return not self.promoted(study, trial, finished)

    def at_floor_early(self, trial: FrozenTrial, bar: float) -> bool:
        """Whether the trial is ``floor_epochs`` into its first fold and no epoch of it has yet
        beaten ``bar`` (the floor)."""
        if not self.floor_epochs or trial.last_step is None:
            return False
        if not self.floor_epochs <= trial.last_step + 1 <= self.steps_per_fold:
            return False
        return self.best_of_first_fold(trial) <= bar

    def best_of_first_fold(self, trial: FrozenTrial) -> float:
        return max(v for step, v in trial.intermediate_values.items() if step < self.steps_per_fold)

    def promoted(self, study: optuna.Study, trial: FrozenTrial, finished: list[float]) -> bool:
        rung, bar = len(finished), self.floor * chance(study)
        score = rung_score(finished, rung)
        if score <= bar:
            return False
        rivals = [rung_score(folds, rung) for t in study.get_trials(deepcopy=False)
                  if t.number != trial.number and t.state != TrialState.FAIL
                  and len(folds := self.judged_folds(t, bar)) >= rung]
        scores = sorted([*rivals, score], reverse=True)
        if len(scores) < self.min_trials:
            return True
        kept = max(1, math.ceil(len(scores) / self.eta))
        return score >= scores[kept - 1]

    def judged_folds(self, trial: FrozenTrial, bar: float) -> list[float]:
        """A rival's finished folds' best F1s. One the floor stopped early in its first fold counts
        as having finished it at its best F1 there, as it would have without ``floor_after``: the
        early stop makes chance trials cheaper without shrinking the first rung's quota of the
        others (measured: without this, fewer trials reached the rung, and only its best went on)."""
        finished = finished_folds(trial)
        if not finished and trial.state == TrialState.PRUNED and self.at_floor_early(trial, bar):
            return [self.best_of_first_fold(trial)]
        return finished


def chance(study: optuna.Study) -> float:
    """The macro F1 of guessing by class frequency, in expectation: 1 / classes (each class's F1
    is its frequency). 0 for a study that does not list its classes."""
    classes = study.user_attrs.get(keys.CLASSES)
    return 1 / len(classes) if classes else 0.0


def finished_folds(trial: FrozenTrial) -> list[float]:
    """The best F1 of each fold the trial finished, in fold order."""
    return list(trial.user_attrs.get(keys.FINISHED_FOLDS, []))


def rung_score(finished: list[float], rung: int) -> float:
    """A trial's score at a rung: the mean best F1 of its first ``rung`` folds."""
    return sum(finished[:rung]) / rung
