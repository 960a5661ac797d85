"""Samplers and pruners by name: each samples the conditional space and each pruner stops a
trial that is worse at every step, on the step axis a trial reports on."""

from __future__ import annotations

import optuna
import pytest

from hpo.config import parse_spec, trial_config
from hpo.errors import ConfigError
from hpo.space import check_params
from hpo.strategy import SAMPLERS, report_step, reports_per_fold
from tests.conftest import tiny_study
from tests.test_space import SEARCH


def sampled(spec, n: int) -> list[dict]:
    study = optuna.create_study(direction="maximize", sampler=spec.build_sampler())
    for _ in range(n):
        trial = study.ask()
        cfg = trial_config(trial, spec)
        study.tell(trial, cfg.lr * (2 if cfg.loss.name == "focal" else 1))  # something to model
    return [t.params for t in study.trials]


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_samples_the_conditional_space_reproducibly(image_root, tmp_path, sampler):
    spec = parse_spec(tiny_study(image_root, tmp_path, search=SEARCH, sampler={"type": sampler}))
    params = sampled(spec, 14)
    for i, p in enumerate(params):
        check_params(spec.search, p, f"trial {i}")  # every value inside the space
        assert ("loss.focal.gamma" in p) == (p["loss"] == "focal")
        assert ("optimizer.sgd.momentum" in p) == (p["optimizer"] == "sgd")
    assert len({p["lr"] for p in params}) == len(params)  # a search, not one point
    assert sampled(spec, 14) == params  # the study's seed fixes the sequence


FOLDS, EPOCHS = 5, 3
ARGS = {"median": {"n_startup_trials": 3}, "percentile": {"n_startup_trials": 3}}


def run_trial(trial: optuna.Trial, pruner: str, quality: float) -> float:
    """Reports as a trial does: every epoch on one axis, or (wilcoxon) each fold's best."""
    for fold in range(FOLDS):
        for epoch in range(EPOCHS):
            f1 = quality + 0.01 * epoch - 0.002 * fold
            if not reports_per_fold(pruner) or epoch == EPOCHS - 1:
                trial.report(f1, report_step(pruner, fold, epoch, EPOCHS))
                if trial.should_prune():
                    raise optuna.TrialPruned()
    return quality


@pytest.mark.parametrize("pruner", ["median", "percentile", "successive_halving", "hyperband", "wilcoxon"])
def test_every_pruner_stops_trials_worse_at_every_step(image_root, tmp_path, pruner, name="pruners"):
    spec = parse_spec(tiny_study(image_root, tmp_path, cv__folds=FOLDS, budget__max_epochs=EPOCHS,
                                 pruner={"type": pruner, **ARGS.get(pruner, {})}))
    # Hyperband compares a trial only with earlier trials of its bracket, drawn from a hash of the
    # study name and trial number: a bad trial first in its bracket has no one to lose to (6% of
    # random names here). The fixed name fixes the draw; under it every bad trial's bracket
    # already holds good trials.
    study = optuna.create_study(study_name=name, direction="maximize", pruner=spec.build_pruner())
    for quality in (0.80, 0.85, 0.90, 0.82, 0.88, 0.86, 0.84, 0.83, 0.87, 0.81, 0.89, 0.85, 0.1, 0.2, 0.15):
        study.optimize(lambda trial, q=quality: run_trial(trial, pruner, q), n_trials=1)
    good, bad = study.trials[:12], study.trials[12:]
    assert good[0].state == optuna.trial.TrialState.COMPLETE
    assert all(t.state == optuna.trial.TrialState.PRUNED for t in bad), [t.state for t in bad]
    last_step = spec.report_steps.total - 1
    assert all(t.last_step < last_step for t in bad)  # stopped early: something was saved


def test_no_pruner_prunes_nothing(image_root, tmp_path):
    spec = parse_spec(tiny_study(image_root, tmp_path, pruner={"type": "none"}))
    study = optuna.create_study(direction="maximize", pruner=spec.build_pruner())
    for quality in (0.9, 0.8, 0.1):
        study.optimize(lambda trial, q=quality: run_trial(trial, "none", q), n_trials=1)
    assert {t.state for t in study.trials} == {optuna.trial.TrialState.COMPLETE}


def test_wilcoxon_with_too_few_folds_to_prune_early_is_refused(image_root, tmp_path):
    with pytest.raises(ConfigError, match=r"pruner: wilcoxon cannot stop a trial before its last fold with"
                                          r" cv.folds 4 .*0.125, not below p_threshold 0.1\); use cv.folds >= 5"):
        parse_spec(tiny_study(image_root, tmp_path, cv__folds=4, pruner={"type": "wilcoxon"}))
    parse_spec(tiny_study(image_root, tmp_path, cv__folds=4, pruner={"type": "wilcoxon", "p_threshold": 0.2}))
