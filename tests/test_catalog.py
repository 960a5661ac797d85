"""Every registry entry passes the same contract: it says what it does, its arguments have
defaults, `hpo list` shows it, and the entries of each kind build and work alike. (Each kind's
behaviour in depth: tests/train/test_registries.py, tests/test_strategy.py, tests/test_tracking.py.)"""

from __future__ import annotations

import inspect

import numpy as np
import optuna
import pytest
import torch
from typer.testing import CliRunner

from hpo.catalog import REGISTRIES, listing, registry
from hpo.cli import app

ENTRIES = [(kind, name) for kind in REGISTRIES for name in sorted(registry(kind))]


@pytest.mark.parametrize(("kind", "name"), ENTRIES)
def test_every_entry_says_what_it_does_and_defaults_its_arguments(kind, name):
    [item] = [i for i in listing(kind) if i.name == name]
    assert item.description and not item.description.endswith(":")
    assert all(default is not inspect.Parameter.empty for default in item.arguments.values()), \
        f"{kind} {name}: every study-file argument needs a default"


def test_hpo_list_shows_every_entry_with_its_arguments():
    done = CliRunner().invoke(app, ["list"])
    assert done.exit_code == 0, done.output
    for kind, name in ENTRIES:
        assert f"\n  {name} " in done.stdout, f"{kind} {name} missing from hpo list"
    one = CliRunner().invoke(app, ["list", "schedulers"]).stdout
    assert one.startswith("schedulers (search.scheduler)") and "min_lr_ratio=0.01, warmup_epochs=0.0" in one
    assert "properties: reports=fold" in CliRunner().invoke(app, ["list", "pruners"]).stdout


@pytest.mark.parametrize("name", sorted(registry("heads")))
def test_every_head_gives_one_score_per_class(name):
    from hpo.data.formats.mask import FACTORS
    from hpo.train.models import create_model

    model = create_model("test_resnet", False, 18, name, FACTORS, 32).eval()
    with torch.inference_mode():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 18)


@pytest.mark.parametrize("name", sorted(registry("samplers")))
def test_every_sampler_samples_a_space(name):
    study = optuna.create_study(sampler=registry("samplers").get(name)(0), direction="maximize")
    for _ in range(3):
        trial = study.ask()
        study.tell(trial, trial.suggest_float("x", 0, 1) + trial.suggest_int("n", 1, 4))
    assert len(study.trials) == 3


@pytest.mark.parametrize("name", sorted(registry("pruners")))
def test_every_pruner_builds_from_its_defaults_and_judges(name):
    from hpo.strategy import ReportSteps

    pruner = registry("pruners").get(name)(ReportSteps(folds=2, per_fold=5))
    study = optuna.create_study(pruner=pruner, direction="maximize")
    for value in (0.9, 0.1):
        trial = study.ask()
        trial.report(value, 0)
        assert isinstance(trial.should_prune(), bool)
        study.tell(trial, value)


@pytest.mark.parametrize("name", sorted(registry("trackers")))
def test_every_tracker_hears_a_trial_through(name, tmp_path, monkeypatch):
    from hpo.train.results import EpochResult, FoldResult
    from tests.train.helpers import BASE

    monkeypatch.chdir(tmp_path)  # a tracker's default folder is relative
    tracker = registry("trackers").get(name)("contract")
    tracker.trial_started(0, {"lr": 0.01}, BASE)
    tracker.epoch(0, EpochResult(0, 0, 1.0, 1.0, 0.5, 0.5, 0.01, 100.0))
    tracker.fold_ended(0, FoldResult(0, best_f1=0.5, best_epoch=0), None)
    tracker.trial_ended(0, "COMPLETE", 0.5, None)
    assert any(tmp_path.rglob("*")), f"{name} recorded nothing"


@pytest.mark.parametrize("name", sorted(registry("storages")))
def test_every_storage_sets_up_engines_to_read_and_to_write(name, tmp_path):
    backend = registry("storages").get(name)()
    url = f"{name}:///{tmp_path / 's.db'}" if name == "sqlite" else f"{name}://user@127.0.0.1/db"
    for read_only in (False, True):
        assert isinstance(backend.engine_kwargs(url, read_only), dict)
    assert backend.max_workers is None or backend.max_workers >= 1


@pytest.mark.parametrize("name", sorted(registry("class-weights")))
def test_every_class_weighting_weighs_every_class_or_none(name):
    weights = registry("class-weights").get(name)(np.array([10, 30, 60]))
    assert weights is None or (weights.shape == (3,) and np.all(weights > 0))
