"""Albumentations ops, one registry entry each (their strengths and the presets: hpo.data.ops).

An op factory takes (magnitude in [0, 1], probability p) and returns an albumentations transform.
Magnitude 0 is the mildest useful setting, 1 the strongest we consider sane for photos.
``hpo.data.batch_augment`` holds a torch twin of most ops, run in batch on the GPU when the
study says ``train.augment_on: gpu``; an op without a twin always runs here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import albumentations as A

from hpo.data.ops import (  # noqa: F401 - PRESETS, check_preset and preset_ops re-exported
    PRESETS,
    AugmentOp,
    affine_extent,
    blur_sigma_range,
    brightness_contrast_limit,
    check_preset,
    crop_smallest_area,
    dropout_holes,
    hsv_limits,
    noise_std_range,
    preset_ops,
)
from hpo.registry import Registry

# (magnitude in [0, 1], probability) -> the albumentations transform.
OPS: Registry[Callable[[float, float], A.BasicTransform]] = Registry("augmentation")


@OPS.register("hflip")
def hflip(magnitude: float, p: float) -> A.BasicTransform:
    """Horizontal flip."""
    return A.HorizontalFlip(p=p)


@OPS.register("vflip")
def vflip(magnitude: float, p: float) -> A.BasicTransform:
    """Vertical flip."""
    return A.VerticalFlip(p=p)


@OPS.register("shift_scale_rotate")
def shift_scale_rotate(magnitude: float, p: float) -> A.BasicTransform:
    """Shift, scale and rotate (affine), wider with the magnitude."""
    m = affine_extent(magnitude)
    return A.Affine(translate_percent=(-m / 2, m / 2), scale=(1 - m, 1 + m), rotate=(-90 * m, 90 * m), p=p)


@OPS.register("random_resized_crop")
def random_resized_crop(magnitude: float, p: float) -> A.BasicTransform:
    """A random crop of at least 1 - 0.6 x magnitude of the area, resized back."""
    # Crops a share of the area then resizes back; the output size is fixed when composed.
    return A.RandomResizedCrop(size=(1, 1), scale=(crop_smallest_area(magnitude), 1.0), p=p)


@OPS.register("brightness_contrast")
def brightness_contrast(magnitude: float, p: float) -> A.BasicTransform:
    """Random brightness and contrast."""
    m = brightness_contrast_limit(magnitude)
    return A.RandomBrightnessContrast(brightness_limit=m, contrast_limit=m, p=p)


@OPS.register("hue_saturation")
def hue_saturation(magnitude: float, p: float) -> A.BasicTransform:
    """Random hue, saturation and value shifts."""
    hue, saturation, value = hsv_limits(magnitude)
    return A.HueSaturationValue(hue_shift_limit=hue, sat_shift_limit=saturation, val_shift_limit=value, p=p)


@OPS.register("blur")
def blur(magnitude: float, p: float) -> A.BasicTransform:
    """Gaussian blur."""
    return A.GaussianBlur(sigma_limit=blur_sigma_range(magnitude), p=p)


@OPS.register("noise")
def noise(magnitude: float, p: float) -> A.BasicTransform:
    """Gaussian noise."""
    return A.GaussNoise(std_range=noise_std_range(magnitude), p=p)


@OPS.register("coarse_dropout")
def coarse_dropout(magnitude: float, p: float) -> A.BasicTransform:
    """Rectangular holes (cutout): up to 1 + 4 x magnitude of them."""
    side, most = dropout_holes(magnitude)
    return A.CoarseDropout(
        num_holes_range=(1, most),
        hole_height_range=(side / 2, side),
        hole_width_range=(side / 2, side),
        p=p,
    )


@OPS.register("clahe")
def clahe(magnitude: float, p: float) -> A.BasicTransform:
    """Local contrast equalisation (CLAHE); no batch twin: always in the loader's workers."""
    return A.CLAHE(clip_limit=(1.0, 1.0 + 5.0 * magnitude), p=p)


def build_pipeline(ops: Sequence[AugmentOp], image_size: int, seed: int = 0) -> A.Compose | None:
    """The albumentations pipeline for a trial, on uint8 HWC images; None when there is none.

    Seeded: albumentations keeps its own random state, so without a seed no two runs of the same
    trial would see the same augmentations.
    """
    transforms = []
    for op in ops:
        transform = OPS.get(op.name)(op.magnitude, op.p)
        if isinstance(transform, A.RandomResizedCrop):
            transform = A.RandomResizedCrop(size=(image_size, image_size), scale=transform.scale, p=op.p)
        transforms.append(transform)
    return A.Compose(transforms, seed=seed) if transforms else None
