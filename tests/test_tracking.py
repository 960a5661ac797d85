"""Trackers: TensorBoard's runs per trial and fold, with the scalars, hparams and outcome; the
registry; a failing tracker never failing a trial; a tracker's missing package; --tracker.
MLflow and W&B have their own files (test_tracking_mlflow.py, test_tracking_wandb.py)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from hpo.cli import app
from hpo.cli.app import _overrides
from hpo.config import parse_spec
from hpo.data.folds import make_fold_plan
from hpo.data.formats import load_table
from hpo.errors import ConfigError
from hpo.objective import Objective
from hpo.tracking import TRACKERS, GuardedTracker, Tracker, build_trackers
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


class PruneSecondTrial(optuna.pruners.BasePruner):
    """Prunes trial 1 at its first report (fold 0, epoch 0); lets the others run."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number == 1


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
    [tracker] = build_trackers(asked)  # the study file's tracking.<name> is the registry's entry, guarded
    assert isinstance(tracker, GuardedTracker) and tracker.name == "tensorboard"
    assert type(tracker.tracker) is type(TRACKERS.get("tensorboard")("tiny", folder=str(tmp_path / "tb")))

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


class Broken(Tracker):
    """A tracker whose every hook fails, as one whose server is down would."""

    def __init__(self) -> None:
        self.calls = 0

    def trial_started(self, trial: int, params: dict, config: TrainConfig) -> None:
        pass

    def epoch(self, trial: int, result: EpochResult) -> None:
        self.calls += 1
        raise OSError("No space left on device")


def test_a_failing_tracker_is_one_warning_and_never_fails_the_trial(image_root, tmp_path, caplog):
    spec = parse_spec(tiny_study(image_root, tmp_path, tracking={"tensorboard": str(tmp_path / "tb")}))
    table = load_table(spec.data.format, spec.data.options)
    objective = Objective(spec, table, make_fold_plan(table, 2, 0))
    broken = Broken()
    objective.trackers = [GuardedTracker("broken", broken), *objective.trackers]
    with caplog.at_level(logging.WARNING):
        study = optuna.create_study(direction="maximize")
        study.optimize(objective, n_trials=2)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    [warning] = [r for r in caplog.records if "tracking." in r.getMessage()]  # one, not one per epoch
    assert warning.levelno == logging.WARNING
    assert "tracking.broken failed in epoch (OSError: No space left on device)" in warning.getMessage()
    assert broken.calls == 1  # off after its failure
    # The other tracker went on: every epoch of both trials is in TensorBoard.
    for trial in (0, 1):
        steps = [s.step for s in events(tmp_path / "tb" / "tiny" / f"trial-{trial:04d}" / "fold-1").Scalars("macro_f1/val")]
        assert steps == [0, 1]


@pytest.mark.parametrize("name", ["mlflow", "wandb"])
def test_a_tracker_without_its_package_is_one_line_naming_the_extra(image_root, tmp_path, monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)  # as if not installed: importing it fails
    message = f'tracking.{name}: the {name} package is not installed; pip install -e ".[{name}]"'
    with pytest.raises(ConfigError) as raised:  # when the study file is read, before any trial
        parse_spec(tiny_study(image_root, tmp_path, tracking={name: True}))
    assert str(raised.value) == f"study file: {message}"
    with pytest.raises(ConfigError) as raised:  # and when the tracker is made, should it be found but broken
        TRACKERS.get(name)("tiny")
    assert str(raised.value) == message


@pytest.mark.parametrize("options, overrides", [
    (["mlflow"], ["tracking.mlflow=true"]),
    (["mlflow:tracking_uri=http://127.0.0.1:5000"], ["tracking.mlflow.tracking_uri=http://127.0.0.1:5000"]),
    (["wandb:project=p, mode=offline", "mlflow"],
     ["tracking.wandb.project=p", "tracking.wandb.mode=offline", "tracking.mlflow=true"]),
])
def test_tracker_option_is_set_overrides(options, overrides, image_root, tmp_path):
    assert _overrides(["cv.folds=3"], Path("tb"), options) == ["cv.folds=3", "tracking.tensorboard=tb", *overrides]
    spec = parse_spec(tiny_study(image_root, tmp_path), overrides=_overrides(None, None, options))
    assert set(spec.tracking) == {option.split(":")[0] for option in options}
    assert spec.tracking.get("wandb", {}).get("mode", "offline") == "offline"


@pytest.mark.parametrize("option, message", [
    ("mlflow:tracking_uri", "--tracker 'mlflow:tracking_uri': expected NAME or NAME:arg=value"),
    (":a=1", "expected NAME or NAME:arg=value"),
    ("mlflwo", "tracking.mlflwo: unknown key (did you mean 'mlflow'?)"),
    ("mlflow:uri=x", "tracking.mlflow: unknown argument(s) ['uri']; it takes: tracking_uri"),
    ("wandb:mode=online2", "tracking.wandb.mode: 'online2' is not one of offline, online, disabled"),
])
def test_a_bad_tracker_option_exits_2_with_one_line(option, message, study_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    done = CliRunner().invoke(app, ["run", "--study", str(study_file), "--tracker", option])
    assert done.exit_code == 2, done.output
    assert done.stderr.startswith("error: ") and message in done.stderr and done.stderr.count("\n") == 1
    assert not (tmp_path / "runs").exists()  # refused before anything ran


def test_a_missing_tracker_package_exits_2_through_the_cli(study_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "wandb", None)
    done = CliRunner().invoke(app, ["worker", "--study", str(study_file), "--tracker", "wandb"])
    assert done.exit_code == 2
    assert done.stderr == f'error: {study_file}: tracking.wandb: the wandb package is not installed; pip install -e ".[wandb]"\n'
