"""Trials: value = mean of fold F1s, pruning stops a trial at once, divergence is pruned."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from hpo.config import parse_spec
from hpo.data.folds import make_fold_plan
from hpo.data.formats import load_table
from hpo.objective import Objective
from hpo.train import loop
from tests.conftest import tiny_study


def objective_for(spec):
    table = load_table(spec.data.format, spec.data.options)
    return Objective(spec, table, make_fold_plan(table, spec.cv.folds, spec.cv.seed))


def study_for(spec):
    return optuna.create_study(direction="maximize", sampler=spec.build_sampler(), pruner=spec.build_pruner())


def test_value_is_the_mean_of_fold_f1s(image_root, tmp_path):
    spec = parse_spec(tiny_study(image_root, tmp_path, cv__folds=3))
    study = study_for(spec)
    study.optimize(objective_for(spec), n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.COMPLETE
    fold_f1 = trial.user_attrs["fold_f1"]
    assert len(fold_f1) == 3
    assert trial.value == pytest.approx(np.mean(fold_f1), abs=1e-5)
    assert trial.user_attrs["f1_std"] == pytest.approx(np.std(fold_f1), abs=1e-4)
    assert len(trial.user_attrs["best_epochs"]) == 3 and len(trial.user_attrs["per_class_f1"]) == 3
    assert trial.user_attrs["images_per_second"] > 0 and trial.user_attrs["device"] == "cpu"
    assert 0 < trial.user_attrs["data_wait"] < 1
    # One global step axis: fold * max_epochs + epoch, every epoch of every fold reported.
    assert sorted(trial.intermediate_values) == list(range(3 * spec.budget.max_epochs))


def test_pruner_stops_a_bad_trial_at_once(image_root, tmp_path):
    spec = parse_spec(
        tiny_study(
            image_root,
            tmp_path,
            budget__max_epochs=3,
            pruner={"type": "percentile", "percentile": 90.0, "n_startup_trials": 1, "n_warmup_steps": 0},
            search__lr={"low": 1e-12, "high": 1e-2, "log": True},
        )
    )
    study = study_for(spec)
    study.enqueue_trial({"lr": 1e-2, "loss": "cross_entropy"})  # a good reference
    study.enqueue_trial({"lr": 1e-12, "loss": "cross_entropy"})  # learns nothing
    study.optimize(objective_for(spec), n_trials=2)
    good, bad = study.trials
    assert good.state == TrialState.COMPLETE
    assert bad.state == TrialState.PRUNED
    # Stopped right after the report that pruned it: no later step was trained or reported.
    last = max(bad.intermediate_values)
    assert sorted(bad.intermediate_values) == list(range(last + 1))
    assert last < spec.cv.folds * spec.budget.max_epochs - 1
    assert bad.user_attrs["prune_reason"].startswith(f"percentile pruner at step {last} (fold 0")


@pytest.mark.parametrize(("startup", "bad_state"), [(2, TrialState.PRUNED), (3, TrialState.COMPLETE)])
def test_wilcoxon_judges_folds_and_never_prunes_after_the_last(image_root, tmp_path, startup, bad_state):
    pruner = {"type": "wilcoxon", "p_threshold": 0.3, "n_startup_steps": startup}
    spec = parse_spec(tiny_study(image_root, tmp_path, cv__folds=3, pruner=pruner,
                                 search__lr={"low": 1e-12, "high": 1e-2, "log": True}))
    study = study_for(spec)
    study.enqueue_trial({"lr": 1e-2, "loss": "cross_entropy"})  # a good reference
    study.enqueue_trial({"lr": 1e-12, "loss": "cross_entropy"})  # learns nothing
    study.optimize(objective_for(spec), n_trials=2)
    good, bad = study.trials
    assert good.state == TrialState.COMPLETE
    for trial in (good, bad):  # one report per fold: its best F1
        assert trial.intermediate_values == {
            i: pytest.approx(f, abs=1e-5) for i, f in enumerate(trial.user_attrs["fold_f1"])
        }
    # Two folds all worse than the reference give p = 1/4 < 0.3: pruned before its third fold;
    # allowed to judge only from the third (last) fold on, it completes with its value.
    assert bad.state == bad_state
    if bad_state == TrialState.PRUNED:
        assert sorted(bad.intermediate_values) == [0, 1]
        assert bad.user_attrs["prune_reason"].startswith("wilcoxon pruner after fold 1 (F1 ")
    else:
        assert len(bad.intermediate_values) == 3 and bad.value < good.value


def test_diverging_trial_is_pruned_with_its_reason(image_root, tmp_path, monkeypatch):
    class NanLoss:
        def __call__(self, logits, target):
            return logits.sum() * float("nan")

    monkeypatch.setattr(loop, "build_criterion", lambda *a, **k: NanLoss())
    spec = parse_spec(tiny_study(image_root, tmp_path))
    study = study_for(spec)
    study.optimize(objective_for(spec), n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["prune_reason"].startswith("diverged: training loss became nan")


def test_trials_are_reproducible_from_params_and_seed(image_root, tmp_path):
    spec = parse_spec(tiny_study(image_root, tmp_path))
    values = []
    for _ in range(2):
        study = study_for(spec)
        study.enqueue_trial({"lr": 3e-3, "loss": "focal"})
        study.optimize(objective_for(spec), n_trials=1)
        values.append(study.trials[0].value)
    assert values[0] == values[1]


def test_mask_trial_trains_three_heads_on_lowered_ages_and_scores_true_labels(mask_archive, tmp_path):
    from tests.conftest import tiny_mask_study

    spec = parse_spec(tiny_mask_study(mask_archive.root, tmp_path))
    table = load_table(spec.data.format, spec.data.options)
    study = study_for(spec)
    study.enqueue_trial({"head": "factorized", "labels.age_boundary": 58, "loss": "focal"})
    study.optimize(Objective(spec, table, make_fold_plan(table, spec.cv.folds, spec.cv.seed)), n_trials=1)
    [trial] = study.trials
    assert trial.state == TrialState.COMPLETE, trial.user_attrs
    assert trial.user_attrs["config"]["head"] == "factorized"
    assert trial.user_attrs["config"]["label_options"] == {"age_boundary": 58}
    matrix = np.array(trial.user_attrs["confusion_matrix"])
    # 18-class predictions, scored against the true labels (age boundary 60), not the lowered ones.
    assert matrix.shape == (18, 18)
    assert matrix.sum(axis=1).tolist() == table.class_counts().tolist()
    assert len(trial.user_attrs["per_class_f1"]) == 18


def test_next_trial_reads_no_image_again(image_root, tmp_path, monkeypatch):
    """Decoded once per machine: after the first trial (or `hpo data prepare`), trials of any
    worker process map the cache and decode nothing."""
    from hpo.data import cache

    monkeypatch.setenv(cache.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "_opened", {})
    spec = parse_spec(tiny_study(image_root, tmp_path, budget__max_epochs=1))
    objective = objective_for(spec)
    reads = []
    original = objective.table.read
    objective.table.read = lambda i: (reads.append(i), original(i))[1]
    study = study_for(spec)
    study.optimize(objective, n_trials=1)
    assert len(reads) == len(objective.table)
    cache._opened.clear()  # as a fresh worker process would start
    study.optimize(objective, n_trials=2)
    assert len(reads) == len(objective.table)  # nothing decoded again
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
