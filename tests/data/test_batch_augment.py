"""The GPU's batch versions of the augmentation ops: each acts like its albumentations twin,
draws per image with probability p, is seeded, and runs where the study says. Device-agnostic
torch code: checked here on CPU tensors."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from hpo.data.augment import OPS, build_pipeline
from hpo.data.batch_augment import (
    BATCH_OPS,
    BatchAugment,
    Draws,
    _warp,
    _with_probability,
    affine_theta,
    hsv_to_rgb,
    rgb_to_hsv,
    split_ops,
)
from hpo.data.loader import on_device, to_input
from hpo.train.config import AugmentOp

CPU = torch.device("cpu")


def seeded() -> Draws:
    return Draws.seeded(CPU, 0)


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """64 smooth colour images (64 px, uint8 HWC): upscaled noise, no two alike, none symmetric."""
    rng = np.random.default_rng(0)
    return np.stack([cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (64, 64), interpolation=cv2.INTER_CUBIC)
                     for _ in range(64)])


def as_batch(photos: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(photos).permute(0, 3, 1, 2).float() / 255


@pytest.mark.parametrize("name", sorted(BATCH_OPS))
@pytest.mark.parametrize("magnitude", [0.5, 1.0])
def test_each_op_changes_images_as_much_as_its_albumentations_twin(photos, name, magnitude):
    """Mean absolute change of the pixels, over 64 images, within a quarter of the twin's: the
    same magnitude means the same strength on either side."""
    twin = build_pipeline([AugmentOp(name, magnitude, 1.0)], photos.shape[1], seed=0)
    by_albumentations = np.stack([twin(image=image)["image"] for image in photos]).astype(np.float32) / 255
    x = as_batch(photos)
    by_batch = BATCH_OPS.get(name)(magnitude, 1.0)(x, seeded())
    assert by_batch.shape == x.shape and by_batch.dtype == x.dtype
    assert 0 <= by_batch.min() and by_batch.max() <= 1
    expected = np.abs(by_albumentations - photos / 255).mean()
    assert float((by_batch - x).abs().mean()) == pytest.approx(expected, rel=0.25)


@pytest.mark.parametrize("name", sorted(BATCH_OPS))
def test_p_is_drawn_per_image(photos, name):
    x = as_batch(photos)
    op = BATCH_OPS.get(name)
    assert torch.equal(op(0.5, 0.0)(x, seeded()), x)
    changed = (op(0.5, 1.0)(x, seeded()) != x).flatten(1).any(1)
    assert changed.all()
    some = (op(0.5, 0.5)(x, seeded()) != x).flatten(1).any(1)
    assert 16 <= int(some.sum()) <= 48  # about half of 64


@pytest.mark.parametrize("costly", [True, False])
def test_a_costly_change_is_computed_only_for_the_images_it_changes(costly):
    sizes = []
    op = _with_probability(0.25, lambda x, gen: sizes.append(len(x)) or x + 0.1, costly=costly)
    x = torch.rand(64, 3, 8, 8)
    changed = int((op(x, seeded()) != x).flatten(1).any(1).sum())
    assert 4 <= changed <= 28  # about a quarter of 64
    assert sizes == ([changed] if costly else [64])


def test_hsv_conversion_matches_opencv(photos):
    x = as_batch(photos)
    hsv = rgb_to_hsv(x).permute(0, 2, 3, 1).numpy()
    expected = np.stack([cv2.cvtColor(image.astype(np.float32) / 255, cv2.COLOR_RGB2HSV) for image in photos])
    assert np.abs(hsv[..., 0] * 360 - expected[..., 0]).max() < 0.01  # degrees
    assert np.abs(hsv[..., 1:] - expected[..., 1:]).max() < 1e-4
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5)


def test_affine_draws_within_albumentations_ranges_and_fills_them():
    """Rotation within ±90m degrees, each axis scaled apart within 1±m, shifts within ±m/2 of
    the side, and the draws reach the ends of those ranges."""
    m = 0.2
    theta = affine_theta(m, 4000, 32, 32, torch.Generator().manual_seed(0), CPU)
    rows = theta[:, :, :2]  # S^-1 R^-1: row i is axis i's (cos, sin) / its scale
    scale = 1 / rows.norm(dim=2)
    angle = torch.rad2deg(torch.atan2(rows[:, 0, 1], rows[:, 0, 0]))
    assert angle.abs().max() <= 90 * m + 1e-3 and angle.abs().max() > 0.98 * 90 * m
    assert scale.min() >= 1 - m - 1e-5 and scale.max() <= 1 + m + 1e-5
    assert (scale[:, 0] - scale[:, 1]).abs().max() > 0.5 * m  # not one scale for both axes
    shift = -torch.linalg.solve(rows, theta[:, :, 2])  # back to the forward shift, in [-1, 1] units
    assert shift.abs().max() <= m + 1e-4 and shift.abs().max() > 0.98 * m


def test_hue_shifts_in_opencv_units_and_grey_stays_grey(photos):
    op = BATCH_OPS.get("hue_saturation")(0.5, 1.0)
    hue_limit = (5 + 25 * 0.5) / 180  # albumentations' hue units on uint8: 180 a turn
    pure = torch.zeros(2000, 3, 4, 4)
    pure[:, 0] = 1.0  # red: hue 0, fully saturated, full value
    hue = rgb_to_hsv(op(pure, seeded()))[:, 0, 0, 0]
    shift = torch.minimum(hue, 1 - hue)  # distance from red around the circle
    assert shift.max() <= hue_limit + 1e-4 and shift.max() > 0.95 * hue_limit
    grey = as_batch(photos).mean(1, keepdim=True).expand(-1, 3, -1, -1)
    out = op(grey, seeded())
    assert (out.max(1).values - out.min(1).values).max() < 1e-6  # still grey, brighter or darker


def test_noise_is_drawn_for_each_channel():
    flat = torch.full((64, 3, 32, 32), 0.5)
    grain = BATCH_OPS.get("noise")(1.0, 1.0)(flat, seeded()) - flat
    channels = grain.permute(1, 0, 2, 3).reshape(3, -1)
    assert torch.corrcoef(channels)[0, 1:].abs().max() < 0.05 and grain.std() > 0.02


def test_warp_maps_output_to_input_coordinates(photos):
    """theta takes an output pixel to where it is read: a shift of one pixel (2 / width in [-1, 1]
    units) to the right reads one pixel to the right, so the image moves left."""
    x = as_batch(photos[:4])
    width = x.shape[3]
    theta = torch.tensor([[1.0, 0.0, 2 / width], [0.0, 1.0, 0.0]]).repeat(4, 1, 1)
    moved = _warp(x, theta)
    assert torch.allclose(moved[..., :-1], x[..., 1:], atol=1e-5)
    assert moved[..., -1].abs().max() < 0.51  # half a pixel of black border blended in


def test_coarse_dropout_blacks_out_one_to_five_holes_of_the_given_size(photos):
    x = as_batch(photos) * 0.5 + 0.25  # nothing black before
    out = BATCH_OPS.get("coarse_dropout")(1.0, 1.0)(x, seeded())
    black = (out == 0).all(1).float().mean((1, 2))  # share of each image
    side = 0.3  # at magnitude 1: holes of 0.15-0.3 of the side, 1-5 of them, overlapping maybe
    assert black.min() >= (side / 2) ** 2 * 0.8 and black.max() <= 5 * side**2 * 1.05


def test_seeded_like_the_rest_of_a_trial(photos):
    ops = [AugmentOp("hflip", 0.0, 0.5), AugmentOp("shift_scale_rotate", 0.5, 0.7), AugmentOp("noise", 0.5, 0.5)]
    x = as_batch(photos)
    first, again, other = (BatchAugment(ops, CPU, seed)(x) for seed in (3, 3, 4))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_ops_go_to_the_gpu_only_when_asked_and_there_is_one():
    ops = (AugmentOp("hflip", 0.0, 0.5), AugmentOp("clahe", 0.5, 0.2), AugmentOp("noise", 0.5, 0.2))
    cuda = torch.device("cuda")  # only named: nothing runs on it
    assert split_ops(ops, "gpu", cuda) == ((ops[1],), (ops[0], ops[2]))  # CLAHE has no batch version
    assert split_ops(ops, "workers", cuda) == (ops, ())
    assert split_ops(ops, "gpu", CPU) == (ops, ())  # on the CPU albumentations' uint8 ops are faster
    assert set(BATCH_OPS) < set(OPS)  # every batch op has its albumentations twin


def test_batches_are_augmented_before_normalisation(photos):
    mean = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    images = torch.from_numpy(photos)
    labels = torch.arange(len(photos))
    flip = BatchAugment([AugmentOp("hflip", 0.0, 1.0)], CPU, 0)
    (x, y), = on_device([(images, labels)], CPU, mean, std, None, flip)
    assert torch.equal(x, to_input(images.flip(2), CPU, mean, std)) and torch.equal(y, labels)


def test_albumentations_twins_are_what_build_pipeline_builds():
    """The twin test above compares against the trial's own pipeline, not a copy of it."""
    pipeline = build_pipeline([AugmentOp("random_resized_crop", 0.5, 1.0)], 64)
    assert isinstance(pipeline.transforms[0], A.RandomResizedCrop) and pipeline.transforms[0].size == (64, 64)
