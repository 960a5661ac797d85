"""hpo.study: every check that needs more than the study file runs before the study exists
(study.prepare), and each process that samples a study gets a sampler seed of its own."""

from __future__ import annotations

import re

import pytest

from hpo import study
from hpo.config import parse_spec
from hpo.errors import ConfigError
from hpo.study import connect
from tests.conftest import tiny_mask_study, tiny_study


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


def test_a_head_that_does_not_fit_its_backbone_is_refused_before_the_study(mask_archive, tmp_path, monkeypatch):
    """Every (backbone, head) pair the space allows runs once at start-up, as a trial builds it."""
    from hpo.study import prepare
    from hpo.train import models

    raw = tiny_mask_study(mask_archive.root, tmp_path)
    raw["search"]["backbone"] = {"choices": ["test_resnet", "mobilenetv3_small_050"]}
    spec = parse_spec(raw)
    prepare(spec)  # both backbones, both heads
    monkeypatch.setattr(models, "pooled_width", lambda body: body.num_features)  # the old sizing
    with pytest.raises(ConfigError, match="search.backbone: mobilenetv3_small_050 with the factorized head does not"
                                          " run on 32 px images .*mat1 and mat2 shapes cannot be multiplied"):
        prepare(spec)


def test_every_process_on_a_study_gets_its_own_sampler_seed(image_root, tmp_path):
    spec = parse_spec(tiny_study(image_root, tmp_path, seed=7))
    url = f"sqlite:///{tmp_path / 's.db'}"
    seeds = [study.seed_sampler(connect(spec, url)) for _ in range(3)]
    assert seeds[0] == 7 and len(set(seeds)) == 3
    assert seeds == [study.session_seed(7, session) for session in range(3)]  # reproducible in turn
