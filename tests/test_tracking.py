"""TensorBoard tracking: one run per trial and fold, with the scalars, hparams and outcome."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hpo.config import parse_spec
from hpo.data.folds import make_fold_plan
from hpo.data.formats import load_table
from hpo.objective import Objective
from hpo.tracking import TRACKERS, Tracker, build_trackers
from hpo.train.config import TrainConfig
from hpo.train.results import EpochResult, FoldResult
from tests.conftest import tiny_study

SCALARS = {"loss/train", "loss/val", "macro_f1/val", "accuracy/val", "lr", "images_per_second", "data_wait",
           "schedule/backbone_frozen", "schedule/epochs_without_improvement"}


def events(folder):
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def text(accumulator, tag):
    return [e.tensor_proto.string_val[0].decode() for e in accumulator.Tensors(f"{tag}/text_summary")]


def run_trials(spec, pruner, n_trials):
    table = load_table(spec.data.format, spec.data.options)
    objective = Objective(spec, table, make_fold_plan(table, spec.cv.folds, spec.cv.seed))
    study = optuna.create_study(direction="maximize", sampler=spec.build_sampler(), pruner=pruner)
    study.optimize(objective, n_trials=n_trials)
    return study


def test_every_fold_of_every_trial_is_a_run_with_its_curves(image_root, tmp_path):
    board = tmp_path / "tb"
    spec = parse_spec(tiny_study(image_root, tmp_path, budget__max_epochs=3, budget__patience=1,
                                 search__freeze={"name": "unfreeze", "after": 1},
                                 tracking={"tensorboard": str(board)}))
    study = run_trials(spec, optuna.pruners.NopPruner(), 2)
    for trial in study.trials:
        run = board / "tiny" / f"trial-{trial.number:04d}"
        for fold in range(spec.cv.folds):
            fold_events = events(run / f"fold-{fold}")
            assert SCALARS <= set(fold_events.Tags()["scalars"])
            f1 = [(s.step, round(s.value, 5)) for s in fold_events.Scalars("macro_f1/val")]
            epochs = [0, 1, 2][: len(f1)]
            assert [step for step, _ in f1] == epochs and f1  # one point per trained epoch
            frozen = [s.value for s in fold_events.Scalars("schedule/backbone_frozen")]
            assert frozen[0] == 1.0 and all(v == 0.0 for v in frozen[1:])
            if len(f1) < 3:  # patience 1 ended this fold early: said in an event
                assert any("early stop after epoch" in t for t in text(fold_events, "events"))
        trial_events = events(run)
        assert text(trial_events, "outcome") == ["COMPLETE"]
        value = trial_events.Scalars("hparam/macro_f1")[0].value
        assert value == pytest.approx(trial.value, abs=1e-6)
        assert trial_events.summary_metadata  # the hparams plugin's session data
        assert any("hparams" in m.plugin_data.plugin_name for m in trial_events.summary_metadata.values())


def test_pruned_trial_shows_where_it_stopped(image_root, tmp_path):
    board = tmp_path / "tb"
    spec = parse_spec(tiny_study(image_root, tmp_path, budget__max_epochs=3,
                                 tracking={"tensorboard": str(board)}))
    # Every F1 is below 2: the first report prunes.
    study = run_trials(spec, optuna.pruners.ThresholdPruner(lower=2.0), 1)
    assert study.trials[0].state == TrialState.PRUNED
    run = board / "tiny" / "trial-0000"
    assert [s.step for s in events(run / "fold-0").Scalars("macro_f1/val")] == [0]
    assert not (run / "fold-1").exists()  # fold 1 never started
    (outcome,) = text(events(run), "outcome")
    assert outcome.startswith("PRUNED: ") and "pruner at step 0 (fold 0 epoch 0" in outcome


def test_trackers_are_a_registry(image_root, tmp_path):
    spec = parse_spec(tiny_study(image_root, tmp_path))
    assert build_trackers(spec) == []  # nothing asked for, nothing written
    asked = parse_spec(tiny_study(image_root, tmp_path, tracking={"tensorboard": str(tmp_path / "tb")}))
    [tracker] = build_trackers(asked)  # the study file's tracking.<name> is the registry's entry
    assert type(tracker) is type(TRACKERS.get("tensorboard")("tiny", folder=str(tmp_path / "tb")))

    calls = []

    class Recorder(Tracker):  # a tracker is a few optional hooks: the shape an MLflow one would have
        def trial_started(self, trial: int, params: dict, config: TrainConfig) -> None:
            calls.append(("start", trial))

        def epoch(self, trial: int, result: EpochResult) -> None:
            calls.append(("epoch", result.fold, result.epoch))

        def fold_ended(self, trial: int, result: FoldResult, patience) -> None:
            calls.append(("fold", result.fold))

        def trial_ended(self, trial: int, state: str, value, reason) -> None:
            calls.append(("end", state))

    table = load_table(spec.data.format, spec.data.options)
    objective = Objective(spec, table, make_fold_plan(table, 2, 0))
    objective.trackers = [Recorder()]
    optuna.create_study(direction="maximize").optimize(objective, n_trials=1)
    assert calls == [("start", 0), ("epoch", 0, 0), ("epoch", 0, 1), ("fold", 0),
                     ("epoch", 1, 0), ("epoch", 1, 1), ("fold", 1), ("end", "COMPLETE")]
