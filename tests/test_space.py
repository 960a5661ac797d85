"""Sampling the search space: conditional parameters, and one function for trials and export."""

from __future__ import annotations

import optuna
import pytest

from hpo.config import parse_spec, trial_config
from hpo.train.config import TrainConfig
from tests.conftest import tiny_study

SEARCH = {
    "backbone": {"choices": ["test_resnet", "test_efficientnet"]},
    "optimizer": {"choose": {"adamw": {}, "sgd": {"momentum": {"low": 0.8, "high": 0.99}}}},
    "lr": {"low": 1.0e-4, "high": 1.0e-1, "log": True},
    "scheduler": {"choose": {"step": {"step_epochs": {"low": 1, "high": 4}}, "cosine": {}}},
    "loss": {"choose": {"cross_entropy": {}, "focal": {"gamma": {"low": 0.5, "high": 3.0}}}},
    "freeze": {"choose": {"none": {}, "unfreeze": {"after": {"low": 1, "high": 2}}}},
    "batch_size": {"choices": [8, 16]},
    "image_size": {"low": 16, "high": 32, "step": 8},
    "augment": {
        "preset": {"choices": ["none", "light"]},
        "ops": {"blur": {"enabled": {"choices": [True, False]}, "magnitude": {"low": 0.0, "high": 1.0},
                         "p": {"low": 0.1, "high": 0.9}}},
    },
}


@pytest.fixture
def spec(image_root, tmp_path):
    return parse_spec(tiny_study(image_root, tmp_path, search=SEARCH))


def sample(spec, n: int = 60) -> list[tuple[dict, TrainConfig]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    out = []
    for _ in range(n):
        trial = study.ask()
        cfg = trial_config(trial, spec)
        out.append((dict(trial.params), cfg))
        study.tell(trial, 0.0)
    return out


def test_conditional_parameters_exist_only_with_their_parent(spec):
    samples = sample(spec)
    for params, cfg in samples:
        assert ("loss.focal.gamma" in params) == (params["loss"] == "focal")
        assert ("optimizer.sgd.momentum" in params) == (params["optimizer"] == "sgd")
        assert ("scheduler.step.step_epochs" in params) == (params["scheduler"] == "step")
        assert ("freeze.unfreeze.after" in params) == (params["freeze"] == "unfreeze")
        assert ("augment.blur.magnitude" in params) == params["augment.blur.enabled"]
        assert cfg.loss.args == ({"gamma": params["loss.focal.gamma"]} if cfg.loss.name == "focal" else {})
        assert cfg.image_size in (16, 24, 32)
    # Both branches of every choice were explored.
    assert {p["loss"] for p, _ in samples} == {"cross_entropy", "focal"}
    assert {p["optimizer"] for p, _ in samples} == {"adamw", "sgd"}


def test_every_sampled_value_lands_in_its_field(spec):
    fields = {"backbone": "backbone", "lr": "lr", "batch_size": "batch_size", "image_size": "image_size",
              "optimizer": "optimizer.name", "scheduler": "scheduler.name", "loss": "loss.name",
              "freeze": "freeze.name"}
    for params, cfg in sample(spec, 30):
        for param, field in fields.items():
            value = cfg
            for part in field.split("."):
                value = getattr(value, part)
            assert value == params[param], param
        for component in ("optimizer", "scheduler", "loss", "freeze"):
            chosen = getattr(cfg, component)
            prefix = f"{component}.{chosen.name}."
            assert chosen.args == {k.removeprefix(prefix): v for k, v in params.items() if k.startswith(prefix)}
        ops = {op.name: (op.magnitude, op.p) for op in cfg.augment}
        if params["augment.blur.enabled"]:
            assert ops["blur"] == (params["augment.blur.magnitude"], params["augment.blur.p"])


def test_augment_preset_and_ops_merge(spec):
    for params, cfg in sample(spec, 30):
        names = [op.name for op in cfg.augment]
        assert ("hflip" in names) == (params["augment.preset"] == "light")
        assert ("blur" in names) == params["augment.blur.enabled"]


def test_fixed_trial_rebuilds_the_same_config(spec):
    for params, cfg in sample(spec, 10):
        rebuilt = trial_config(optuna.trial.FixedTrial(params), spec)
        assert rebuilt == cfg
        assert TrainConfig.from_dict(rebuilt.to_dict()) == rebuilt


def test_fixed_values_are_not_searched(spec):
    params, cfg = sample(spec, 1)[0]
    assert "pretrained" not in params and cfg.pretrained is False
    assert cfg.max_epochs == spec.budget.max_epochs and cfg.seed == spec.seed
