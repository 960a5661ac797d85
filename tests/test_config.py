"""Study-file validation: every mistake is one ConfigError naming the key and the fix."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from pydantic import ValidationError

from hpo.config import apply_override, load_spec, parse_duration, parse_spec
from hpo.errors import ConfigError
from tests.conftest import tiny_study, write_study


def spec_error(image_root: Path, tmp_path: Path, **changes) -> str:
    with pytest.raises(ConfigError) as info:
        parse_spec(tiny_study(image_root, tmp_path, **changes))
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"search__backbone": "resnet_does_not_exist"}, "unknown timm backbone 'resnet_does_not_exist'"),
        ({"search__loss": "hinge"}, "search.loss: unknown loss 'hinge'; use one of: cross_entropy"),
        (
            {"search__optimizer": {"name": "sgd", "betas": 0.9}},
            "search.optimizer.sgd: unknown argument 'betas'; allowed: momentum, nesterov",
        ),
        (
            {"search__scheduler": {"choose": {"cosine": {}, "plateaux": {}}}},
            "search.scheduler: unknown scheduler 'plateaux'",
        ),
        (
            {"search__augment": {"ops": {"sharpen_everything": {}}}},
            "unknown augmentation 'sharpen_everything'",
        ),
        ({"search__augment": {"preset": "extreme"}}, "unknown augmentation preset 'extreme'"),
        (
            {"search__lr": {"low": 0.1, "high": 0.01}},
            "search.lr: inverted range, low 0.1 > high 0.01; swap them",
        ),
        ({"search__lr": {"low": 0.01, "high": 0.01}}, "search.lr: empty range"),
        ({"search__lr": {"low": 0.0, "high": 0.01, "log": True}}, "search.lr: a log range needs low > 0"),
        ({"search__batch_size": {"choices": []}}, "search.batch_size: choices must be a non-empty list"),
        ({"search__batch_size": {"choices": [16, 0]}}, "search.batch_size: 0 is not a positive integer"),
        (
            {"search__batch_size": [16, 32]},
            "search.batch_size: a list is not a distribution; write {choices: [16, 32]}",
        ),
        ({"search__mixup": {"low": 0.0, "high": 1.5}}, "search.mixup: 1.5 is not a probability"),
        (
            {"search__loss": {"choose": {"focal": {"gamma": "big"}}}},
            "search.loss.focal.gamma: 'big' is not a number",
        ),
        ({"search__dropout": 0.1}, "search: unknown key(s) ['dropout']"),
        ({"sampler": {"type": "grid"}}, "sampler.type: unknown sampler 'grid'"),
        ({"pruner": {"type": "median", "patience": 3}}, "pruner: invalid arguments {'patience': 3}"),
        (
            {"data__format": "parquet"},
            "data.format: unknown data format 'parquet'; use one of: csv, digits, imagefolder",
        ),
        ({"data__colour": "rgb"}, "unknown option(s) ['colour'] for format 'csv'"),
        ({"cv__folds": 1}, "cv.folds: Input should be greater than or equal to 2"),
        ({"budget__timeout": "soon"}, "cannot read duration 'soon'"),
        ({"epochs": 3}, "epochs: unknown key; use one of: name, direction, metric, seed"),
        ({"search__accumulate": 0}, "search.accumulate: 0 is not an integer in [1, 1024]"),
        ({"train__compile": "fastest"}, "train.compile: 'fastest' is not a torch.compile mode; use true, false or one of"),
        ({"train__augment_on": "tpu"}, "train.augment_on: Input should be 'workers' or 'gpu'"),
        ({"tracking__comet": "proj"}, "tracking.comet: unknown key; use one of: mlflow, tensorboard, wandb"),
        *[({"data__normalization": bad}, "data.normalization: ") for bad in (
            "imagenet21k", {"mean": [0.5, 0.5]}, {"mean": "a", "std": [1, 1, 1]},
            {"mean": [0.5] * 3, "std": [0, 1, 1]}, {"mean": [0.5] * 3, "std": ["x", 1, 1]})],
    ],
)
def test_invalid_study_is_one_clear_error(image_root, tmp_path, changes, expected):
    assert expected in spec_error(image_root, tmp_path, **changes)


def test_normalization_by_name_or_numbers(image_root, tmp_path):
    spec = parse_spec(tiny_study(image_root, tmp_path, data__normalization={"mean": [0.1, 0.2, 0.3], "std": [1, 2, 3]}))
    assert (spec.data.mean, spec.data.std) == ((0.1, 0.2, 0.3), (1.0, 2.0, 3.0))
    spec = parse_spec(tiny_study(image_root, tmp_path, data__normalization="imagenet"))
    assert spec.data.mean == pytest.approx((0.485, 0.456, 0.406))
    message = spec_error(image_root, tmp_path, data__normalization={"mean": [0.5] * 3, "std": [0, 1, 1]})
    assert message.endswith("use imagenet, half or {mean: [r, g, b], std: [r, g, b]} with numbers, std > 0")


def test_valid_study_is_typed_and_frozen(image_root, tmp_path):
    spec = parse_spec(tiny_study(image_root, tmp_path, budget__timeout="1h30m"))
    assert spec.budget.timeout == 5400.0
    assert spec.data.options == {"root": str(image_root), "group_column": "group"}
    assert spec.data.mean == (0.5, 0.5, 0.5)
    assert spec.raw["search"]["backbone"] == "test_resnet"
    with pytest.raises(ValidationError, match="frozen"):
        spec.seed = 3  # type: ignore[misc]


def test_study_found_by_name_and_overrides_applied():
    spec = load_spec("digits", ["cv.folds=4", "data.image_size=24", "budget={n_trials: 3}"])
    assert (spec.name, spec.cv.folds, spec.data.image_size, spec.budget.n_trials) == ("digits", 4, 24, 3)
    assert spec.raw["cv"]["folds"] == 4


def test_unknown_study_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match="study 'nope' not found.*digits"):
        load_spec("nope")


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nsearch: {backbone: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: line \d+ is not valid YAML"):
        load_spec(path)


def test_override_needs_key_and_value(tmp_path, image_root):
    with pytest.raises(ConfigError, match="expected key.path=value"):
        apply_override({}, "cv.folds")
    raw = {"cv": 3}
    with pytest.raises(ConfigError, match="'cv' is not a section"):
        apply_override(raw, "cv.folds=3")
    path = write_study(tmp_path / "s.yaml", tiny_study(image_root, tmp_path))
    assert load_spec(path, ["search.lr=0.05"]).search.lr.value == 0.05


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), (45, 45), ("30m", 1800), ("8h", 28800), ("1h30m", 5400), ("2d", 172800)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("name", ["digits", "mask"])
def test_the_shipped_studies_validate_and_use_the_pruner_the_benchmark_chose(name):
    """studies/*.yaml pass the whole validation (names included); both use fold_halving
    (BENCHMARKS.md, "Pruners"), and the pruner they build is the fold-rung one."""
    from hpo.pruning import FoldHalvingPruner

    spec = load_spec(Path(__file__).resolve().parent.parent / "studies" / f"{name}.yaml")
    assert spec.name == name
    assert spec.pruner.type == "fold_halving"
    pruner = spec.build_pruner()
    assert isinstance(pruner, FoldHalvingPruner)
    assert pruner.steps_per_fold == spec.budget.max_epochs
    assert isinstance(pruner.within_fold, optuna.pruners.MedianPruner)
