"""Study-file validation: every mistake is one ConfigError naming the key and the fix."""

from __future__ import annotations

import re
from pathlib import Path

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
        ({"tracking__wandb": "proj"}, "tracking.wandb: unknown key; use one of: tensorboard"),
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


@pytest.mark.parametrize(("name", "value", "message"), [
    ("HPO_LOADER_WORKERS", "lots", "HPO_LOADER_WORKERS='lots': expected a whole number >= 0"),
    ("HPO_THREADS", "0", "HPO_THREADS='0': expected a whole number >= 1"),
    ("HPO_COMPILE_BACKEND", "nope", "HPO_COMPILE_BACKEND='nope': not a torch.compile backend; use one of"),
])
def test_bad_environment_knobs_fail_before_the_study_starts(image_root, tmp_path, monkeypatch, name, value, message):
    from hpo.study import prepare

    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=re.escape(message)):
        prepare(parse_spec(tiny_study(image_root, tmp_path, train={"compile": "default"})))


def test_augmenting_on_the_gpu_without_one_says_so_before_the_study_starts(image_root, tmp_path, monkeypatch, caplog):
    from hpo.study import prepare

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    prepare(parse_spec(tiny_study(image_root, tmp_path, train={"augment_on": "gpu"})))
    assert "train.augment_on: gpu, and this machine has no GPU" in caplog.text
    caplog.clear()
    prepare(parse_spec(tiny_study(image_root, tmp_path)))
    assert "augment_on" not in caplog.text


@pytest.mark.parametrize(("key", "value", "message"), [
    ("optimizer", {"choose": {"adamw": {}, "sgd": {"momentum": {"low": -5, "high": 0.9}}}},
     "search.optimizer: sgd refuses {'momentum': -5.0} (ValueError: Invalid momentum value: -5.0)"),
    ("loss", {"choose": {"label_smoothing": {"epsilon": {"low": 0.1, "high": 1.5}}}},
     "search.loss: label_smoothing refuses {'epsilon': 1.5} (RuntimeError: label_smoothing must be between 0.0 and 1.0"),
    ("scheduler", {"choose": {"step": {"step_epochs": 0}}}, "search.scheduler: step refuses {'step_epochs': 0}"),
    # ConvNeXt's stem and downsampling need more than the study's 16 px.
    ("backbone", {"choices": ["test_resnet", "test_convnext"]},
     "search.backbone: test_convnext does not run on 16 px images (RuntimeError: Calculated padded input size"),
])
def test_components_torch_refuses_fail_before_the_study_starts(image_root, tmp_path, key, value, message):
    from hpo.study import prepare

    with pytest.raises(ConfigError, match=re.escape(message)):
        prepare(parse_spec(tiny_study(image_root, tmp_path, **{f"search__{key}": value})))


def test_sizes_a_vits_patches_do_not_divide_are_refused_before_the_study_starts(image_root, tmp_path):
    """timm builds some ViTs for 24 px and runs them, on one 16 px patch: the rest is never seen.
    (Others refuse 24 px themselves: test_vit, in one line from check_input_size.)"""
    from hpo.study import prepare

    def vit_at(sizes: list[int]):
        return parse_spec(tiny_study(image_root, tmp_path, search__backbone="test_vit3",
                                     search__image_size={"choices": sizes}))

    message = "search.image_size: test_vit3 cuts images into 16 px patches, and 24 px is not a multiple of 16"
    with pytest.raises(ConfigError, match=re.escape(message)):
        prepare(vit_at([16, 24]))
    table, plan = prepare(vit_at([16, 32]))  # multiples of the patch pass
    assert len(table) > 0 and len(plan) == len(table)
    fixed = tiny_study(image_root, tmp_path, search__backbone="test_vit3", data__image_size=24)
    with pytest.raises(ConfigError, match=re.escape("data.image_size: test_vit3 cuts images into 16 px patches")):
        prepare(parse_spec(fixed))


def test_patch_stems_that_overlap_or_pad_take_any_size():
    from hpo.train.models import check_patches

    check_patches("pit_ti_224", [232])  # patches of 16 px every 8 px: every pixel seen
    check_patches("efficientvit_m0", [232])  # padded stride-2 convolutions
    with pytest.raises(ConfigError, match=r"its last 14 px would never be seen\); use multiples of 16"):
        check_patches("vit_tiny_patch16_224", [30])
