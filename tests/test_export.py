"""`hpo export`: the chosen trials as a complete, re-runnable config."""

from __future__ import annotations

import sqlite3

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from hpo.data.folds import plan_digest
from hpo.errors import ConfigError
from hpo.export import export_study, read_export, write_export
from hpo.train.config import TrainConfig


def load(finished_study) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=finished_study.url)


def test_best_trial_exported_with_config_data_and_measured_f1(finished_study, tmp_path):
    study = load(finished_study)
    path = write_export(export_study(study), tmp_path / "best.yaml")
    raw = yaml.safe_load(path.read_text())
    assert raw["study"] == "tiny" and raw["spec"] == study.user_attrs["spec"]
    assert raw["data_fingerprint"] == study.user_attrs["data_fingerprint"]
    assert raw["fold_plan"] == plan_digest(study.user_attrs["fold_plan"])
    [best] = raw["trials"]
    trial = study.best_trial
    assert best["trial"] == trial.number and best["params"] == trial.params
    assert best["f1"] == {"mean": trial.value, "std": trial.user_attrs["f1_std"], "folds": trial.user_attrs["fold_f1"]}
    assert best["best_epochs"] == trial.user_attrs["best_epochs"]
    # The same function the trial used: the config equals the one the trial trained with.
    assert best["config"] == trial.user_attrs["config"]
    assert read_export(path).trials[0].config == TrainConfig.from_dict(trial.user_attrs["config"])


def test_top_k_and_a_chosen_trial(finished_study):
    study = load(finished_study)
    ranked = sorted((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: -t.value)
    assert [t.trial for t in export_study(study, top_k=2).trials] == [t.number for t in ranked[:2]]
    assert [t.trial for t in export_study(study, top_k=10).trials] == [t.number for t in ranked]
    worst = ranked[-1].number
    assert [t.trial for t in export_study(study, trial=worst).trials] == [worst]
    with pytest.raises(ConfigError, match="has no trial 99"):
        export_study(study, trial=99)


def test_a_pruned_trial_can_be_chosen_a_failed_one_cannot(finished_study, tmp_path):
    with sqlite3.connect(finished_study.folder / "tiny.db") as source, sqlite3.connect(tmp_path / "copy.db") as copy:
        source.backup(copy)  # with its write-ahead log
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'copy.db'}")
    best = study.best_trial
    for state in (TrialState.PRUNED, TrialState.FAIL):
        study.add_trial(optuna.trial.create_trial(state=state, params=best.params,
                                                  distributions=best.distributions, user_attrs=best.user_attrs))
    pruned, failed = study.trials[-2:]
    [exported] = export_study(study, trial=pruned.number).trials
    assert exported.trial == pruned.number and exported.config.to_dict() == best.user_attrs["config"]
    with pytest.raises(ConfigError, match=f"trial {failed.number} is FAIL; export a COMPLETE"):
        export_study(study, trial=failed.number)
    assert export_study(study).trials[0].trial == best.number  # the best is still the best complete one
    foreign = optuna.create_study(study_name="foreign", storage=f"sqlite:///{tmp_path / 'copy.db'}")
    foreign.add_trial(optuna.trial.create_trial(value=1.0, params={}, distributions={}))
    with pytest.raises(ConfigError, match="'foreign' was not created by hpo"):
        export_study(foreign)


def test_unreadable_export_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: tiny\n")
    with pytest.raises(ConfigError, match="not an hpo export"):
        read_export(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        read_export(tmp_path / "missing.yaml")
