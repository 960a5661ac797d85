"""Folds as a fidelity (pruner: fold_halving): after each fold only the top 1/eta of the trials
that reached it go on; within a fold the epoch pruner judges as before."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from hpo import keys
from hpo.config import parse_spec
from hpo.errors import ConfigError
from hpo.pruning import FoldHalvingPruner
from tests.conftest import tiny_study
from tests.test_objective import objective_for, study_for

FOLDS, EPOCHS = 3, 2


def run_trial(trial: optuna.Trial, quality: float | tuple[float, ...]) -> float:
    """Reports and asks as the objective does with a fold-rung pruner (``quality``: one for
    every fold, or each fold's)."""
    per_fold = quality if isinstance(quality, tuple) else (quality,) * FOLDS
    finished = []
    for fold in range(FOLDS):
        for epoch in range(EPOCHS):
            trial.report(per_fold[fold] + 0.01 * epoch, fold * EPOCHS + epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {fold}/{epoch}")
        finished.append(per_fold[fold] + 0.01 * (EPOCHS - 1))
        trial.set_user_attr(keys.FINISHED_FOLDS, finished)
        if fold < FOLDS - 1 and trial.should_prune():
            raise optuna.TrialPruned(f"after fold {fold}")
    return float(np.mean(finished))


def run(qualities, classes: int | None = None, **args) -> optuna.Study:
    study = optuna.create_study(direction="maximize", pruner=FoldHalvingPruner(EPOCHS, **args))
    if classes:
        study.set_user_attr(keys.CLASSES, [str(c) for c in range(classes)])
    for quality in qualities:
        study.optimize(lambda trial, q=quality: run_trial(trial, q), n_trials=1)
    return study


def test_a_trial_goes_on_only_in_the_top_of_those_that_reached_its_fold():
    qualities = [0.80, 0.90, 0.70, 0.85, 0.60, 0.95, 0.82]
    study = run(qualities, eta=2)
    for trial, quality in zip(study.trials, qualities, strict=True):
        earlier = study.trials[: trial.number]
        reached = [q for t, q in zip(earlier, qualities, strict=False) if len(t.user_attrs[keys.FINISHED_FOLDS]) >= 1]
        ranked = sorted([*reached, quality], reverse=True)
        promoted = quality >= ranked[math.ceil(len(ranked) / 2) - 1]
        finished = trial.user_attrs[keys.FINISHED_FOLDS]
        if not promoted:
            assert trial.state == TrialState.PRUNED and len(finished) == 1, trial.number
            assert trial.last_step == EPOCHS - 1  # stopped at the end of its first fold, not later
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE,
                      TrialState.PRUNED, TrialState.COMPLETE, TrialState.PRUNED]


def test_the_second_rung_compares_the_mean_of_two_folds():
    """A trial promoted after fold 0 is judged again after fold 1, against those with two folds."""
    study = run([0.8, (0.9, 0.5, 0.9), (0.9, 0.75, 0.9)], eta=2)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]
    assert len(study.trials[1].user_attrs[keys.FINISHED_FOLDS]) == 2  # best after fold 0, not after fold 1
    assert study.trials[1].last_step == 2 * EPOCHS - 1
    study = run([0.9, 0.8], eta=2)  # the top 1 of 2 only: the worse one stops after fold 0
    assert [len(t.user_attrs[keys.FINISHED_FOLDS]) for t in study.trials] == [3, 1]


def test_below_min_trials_every_trial_is_promoted():
    study = run([0.9, 0.5, 0.4], eta=3, min_trials=4)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3


def test_a_trial_no_better_than_chance_is_not_promoted_even_first():
    """10 classes: chance is 0.1 and the floor 1.5 x 0.1. A trial finishing fold 0 at 0.13 (or at
    the floor itself) stops there although min_trials would promote anything; floor 0 lets it on."""
    study = run([0.12, 0.9, 0.14, 0.16], classes=10, eta=3, min_trials=5, floor_after=0)
    assert [len(t.user_attrs[keys.FINISHED_FOLDS]) for t in study.trials] == [1, 3, 1, 3]
    assert [t.state for t in study.trials] == [TrialState.PRUNED, TrialState.COMPLETE, TrialState.PRUNED,
                                               TrialState.COMPLETE]
    study = run([0.12, 0.9, 0.14], classes=10, eta=3, min_trials=5, floor=0, floor_after=0)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    study = run([0.12], eta=3)  # a study that lists no classes has no floor
    assert study.trials[0].state == TrialState.COMPLETE


def test_a_first_fold_still_at_chance_after_floor_after_of_it_stops_the_trial_there():
    """10 classes, floor 0.15; a fold's epochs score quality, quality + 0.01. floor_after 0.5 (one
    of two epochs): 0.12 stops after its first epoch; 1.0: after its second (0.13), and 0.135
    (0.145) too, while 0.145 reaches 0.155 and goes on. Only the first fold is judged early: a
    trial that learnt there and sits at 0.1 in fold 1 finishes that fold (then the rung judges)."""
    study = run([0.12, 0.9, (0.9, 0.1, 0.9)], classes=10, eta=100, min_trials=10, floor_after=0.5)
    assert [t.state for t in study.trials] == [TrialState.PRUNED, TrialState.COMPLETE, TrialState.COMPLETE]
    assert [t.last_step for t in study.trials] == [0, FOLDS * EPOCHS - 1, FOLDS * EPOCHS - 1]
    assert keys.FINISHED_FOLDS not in study.trials[0].user_attrs  # stopped within fold 0, not at its end
    study = run([0.12, 0.135, 0.145], classes=10, eta=100, min_trials=10, floor_after=1.0)
    assert [t.last_step for t in study.trials] == [1, 1, FOLDS * EPOCHS - 1]
    assert [t.state for t in study.trials] == [TrialState.PRUNED, TrialState.PRUNED, TrialState.COMPLETE]
    assert keys.FINISHED_FOLDS not in study.trials[1].user_attrs
    study = run([0.12], classes=10, eta=100, min_trials=10, floor=0)  # no floor: nothing early either
    assert study.trials[0].state == TrialState.COMPLETE
    study = run([0.12], classes=10, eta=100, min_trials=10, floor_after=0)  # the floor at the fold's end only
    assert study.trials[0].last_step == EPOCHS - 1 and study.trials[0].user_attrs[keys.FINISHED_FOLDS]
    assert FoldHalvingPruner(6, floor_after=0.5).floor_epochs == 3 and FoldHalvingPruner(4, floor_after=0.3).floor_epochs == 2
    with pytest.raises(ValueError, match="floor_after must be from 0 to 1"):
        FoldHalvingPruner(EPOCHS, floor_after=1.5)


def test_trials_the_floor_stopped_early_count_at_the_first_rung_as_if_they_had_reached_it():
    """eta 2, 10 classes: two chance trials, then 0.9 (0.5 in its later folds) and 0.8. With or
    without floor_after, the chance trials are rivals at the first rung (4 trials: the top 2 go
    on; counted without them, 0.8 would be 1 of 2 and stop), so 0.8 goes on and, ahead at the
    second rung, completes; floor_after only stops them sooner (after one epoch, not two)."""
    for floor_after, chance_steps in [(0.5, 0), (0, EPOCHS - 1)]:
        study = run([0.12, 0.12, (0.9, 0.5, 0.5), 0.8], classes=10, eta=2, floor_after=floor_after)
        assert [t.state for t in study.trials] == [TrialState.PRUNED] * 2 + [TrialState.COMPLETE] * 2, floor_after
        assert [t.last_step for t in study.trials[:2]] == [chance_steps] * 2


def test_within_fold_the_epoch_pruner_judges():
    """A trial bad at its first epoch is stopped there by the epoch pruner, before any fold rung."""
    inner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    study = run([0.9, 0.2], eta=100, within_fold=inner)
    bad = study.trials[1]
    assert bad.state == TrialState.PRUNED and bad.last_step == 0 and keys.FINISHED_FOLDS not in bad.user_attrs


def test_study_file_builds_it_and_refuses_what_cannot_work(image_root, tmp_path):
    spec = parse_spec(tiny_study(image_root, tmp_path, cv__folds=3, budget__max_epochs=4, pruner={
        "type": "fold_halving", "eta": 2, "within_fold_args": {"n_warmup_steps": 2}}))
    pruner = spec.build_pruner()
    assert isinstance(pruner, FoldHalvingPruner) and pruner.steps_per_fold == 4 and pruner.eta == 2
    assert isinstance(pruner.within_fold, optuna.pruners.MedianPruner)
    assert pruner.floor == 1.5 and pruner.floor_after == 0 and pruner.floor_epochs == 0
    for bad, message in [({"eta": 1}, "eta must be above 1"), ({"within_fold": "wilcoxon"}, "must judge epochs"),
                         ({"floor": -1}, "floor must be 0 or more"),
                         ({"floor_after": 2}, "floor_after must be from 0 to 1"),
                         ({"within_fold": "medain"}, "medain")]:
        with pytest.raises(ConfigError, match=message):
            parse_spec(tiny_study(image_root, tmp_path, pruner={"type": "fold_halving", **bad}))


def test_real_trials_stop_after_a_fold_worse_than_the_best_that_reached_it(image_root, tmp_path):
    """eta 100: only the best of each rung goes on, if above the floor (1.5 x chance); the
    objective stores each finished fold's F1 and asks after every fold but the last."""
    spec = parse_spec(tiny_study(image_root, tmp_path, cv__folds=3, budget__max_epochs=2, sampler={"type": "random"},
                                 search__lr={"low": 1e-6, "high": 3e-2, "log": True},
                                 pruner={"type": "fold_halving", "eta": 100, "within_fold": "none",
                                         "floor_after": 0}))
    study = study_for(spec)
    objective = objective_for(spec)
    study.set_user_attr(keys.CLASSES, list(objective.table.classes))  # as hpo.study does
    study.optimize(objective, n_trials=5)
    best_first_fold, floor = -1.0, 1.5 / len(study.user_attrs[keys.CLASSES])
    for trial in study.trials:
        finished = trial.user_attrs[keys.FINISHED_FOLDS]
        first = finished[0]
        if first < best_first_fold or first <= floor:
            assert trial.state == TrialState.PRUNED and len(finished) == 1
            assert trial.user_attrs[keys.PRUNE_REASON].startswith("fold_halving pruner after fold 0")
            assert trial.user_attrs[keys.FOLD_F1] == finished  # it trained no further
        else:
            assert len(finished) >= 2  # promoted past fold 0
        best_first_fold = max(best_first_fold, first)
    assert {t.state for t in study.trials} == {TrialState.COMPLETE, TrialState.PRUNED}


@pytest.mark.parametrize("floor_after", [0.5, 0])
def test_real_trials_at_the_floor_stop_in_their_first_fold_or_at_its_end(image_root, tmp_path, floor_after):
    """A floor no trial can beat (3 x chance with 3 classes: an F1 of 1): with floor_after 0.5
    each trial stops after its first epoch, with 0 after its first fold."""
    spec = parse_spec(tiny_study(image_root, tmp_path, cv__folds=2, budget__max_epochs=2, budget__n_trials=2,
                                 pruner={"type": "fold_halving", "within_fold": "none", "floor": 3.0,
                                         "floor_after": floor_after}))
    study = study_for(spec)
    objective = objective_for(spec)
    study.set_user_attr(keys.CLASSES, list(objective.table.classes))
    study.optimize(objective, n_trials=2)
    for trial in study.trials:
        assert trial.state == TrialState.PRUNED
        if floor_after:
            assert trial.last_step == 0 and keys.FINISHED_FOLDS not in trial.user_attrs
            assert trial.user_attrs[keys.PRUNE_REASON].startswith("fold_halving pruner at step 0 (fold 0 epoch 0")
        else:
            assert trial.last_step == 1 and len(trial.user_attrs[keys.FINISHED_FOLDS]) == 1
            assert trial.user_attrs[keys.PRUNE_REASON].startswith("fold_halving pruner after fold 0")
