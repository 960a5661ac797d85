"""Albumentations ops and named presets, one registry entry each.

An op factory takes (magnitude in [0, 1], probability p) and returns an albumentations transform.
Magnitude 0 is the mildest useful setting, 1 the strongest we consider sane for photos.
``hpo.data.batch_augment`` holds a torch twin of most ops, run in batch on the GPU when the
study says ``train.augment_on: gpu``; an op without a twin always runs here.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A

from hpo.errors import ConfigError
from hpo.registry import Registry
from hpo.train.config import AugmentOp

OPS: Registry = Registry("augmentation")


# Each op's strength at a magnitude, shared by the albumentations op here and its batch twin in
# hpo.data.batch_augment, so that the two cannot drift apart.
def affine_extent(magnitude: float) -> float:
    """Shift within ± half of it (a share of the side), scale within 1 ± it, rotation within ± 90 x it degrees."""
    return 0.05 + 0.25 * magnitude


def crop_smallest_area(magnitude: float) -> float:
    return 1 - 0.6 * magnitude


def brightness_contrast_limit(magnitude: float) -> float:
    return 0.05 + 0.35 * magnitude


def hsv_limits(magnitude: float) -> tuple[float, float, float]:
    """Hue (OpenCV's units: 180 a turn), saturation and value (of 255) shifts, each within ± it."""
    return 5 + 25 * magnitude, 5 + 35 * magnitude, 5 + 25 * magnitude


def blur_sigma_range(magnitude: float) -> tuple[float, float]:
    return 0.1, 0.5 + 2.0 * magnitude


def noise_std_range(magnitude: float) -> tuple[float, float]:
    """The noise's standard deviation, a share of the full scale."""
    return 0.01, 0.02 + 0.15 * magnitude


def dropout_holes(magnitude: float) -> tuple[float, int]:
    """The largest hole's side (a share of the image's; the smallest is half of it), and the most holes."""
    return 0.05 + 0.25 * magnitude, 1 + round(4 * magnitude)


@OPS.register("hflip")
def hflip(magnitude: float, p: float) -> A.BasicTransform:
    return A.HorizontalFlip(p=p)


@OPS.register("vflip")
def vflip(magnitude: float, p: float) -> A.BasicTransform:
    return A.VerticalFlip(p=p)


@OPS.register("shift_scale_rotate")
def shift_scale_rotate(magnitude: float, p: float) -> A.BasicTransform:
    m = affine_extent(magnitude)
    return A.Affine(translate_percent=(-m / 2, m / 2), scale=(1 - m, 1 + m), rotate=(-90 * m, 90 * m), p=p)


@OPS.register("random_resized_crop")
def random_resized_crop(magnitude: float, p: float) -> A.BasicTransform:
    # Crops a share of the area then resizes back; the output size is fixed when composed.
    return A.RandomResizedCrop(size=(1, 1), scale=(crop_smallest_area(magnitude), 1.0), p=p)


@OPS.register("brightness_contrast")
def brightness_contrast(magnitude: float, p: float) -> A.BasicTransform:
    m = brightness_contrast_limit(magnitude)
    return A.RandomBrightnessContrast(brightness_limit=m, contrast_limit=m, p=p)


@OPS.register("hue_saturation")
def hue_saturation(magnitude: float, p: float) -> A.BasicTransform:
    hue, saturation, value = hsv_limits(magnitude)
    return A.HueSaturationValue(hue_shift_limit=hue, sat_shift_limit=saturation, val_shift_limit=value, p=p)


@OPS.register("blur")
def blur(magnitude: float, p: float) -> A.BasicTransform:
    return A.GaussianBlur(sigma_limit=blur_sigma_range(magnitude), p=p)


@OPS.register("noise")
def noise(magnitude: float, p: float) -> A.BasicTransform:
    return A.GaussNoise(std_range=noise_std_range(magnitude), p=p)


@OPS.register("coarse_dropout")
def coarse_dropout(magnitude: float, p: float) -> A.BasicTransform:
    side, most = dropout_holes(magnitude)
    return A.CoarseDropout(
        num_holes_range=(1, most),
        hole_height_range=(side / 2, side),
        hole_width_range=(side / 2, side),
        p=p,
    )


@OPS.register("clahe")
def clahe(magnitude: float, p: float) -> A.BasicTransform:
    return A.CLAHE(clip_limit=(1.0, 1.0 + 5.0 * magnitude), p=p)


# Presets: op -> (magnitude, p). Explicit ops in the study file add to or override these.
PRESETS: dict[str, dict[str, tuple[float, float]]] = {
    "none": {},
    "light": {"hflip": (0.0, 0.5), "shift_scale_rotate": (0.2, 0.5), "brightness_contrast": (0.2, 0.5)},
    "medium": {
        "hflip": (0.0, 0.5),
        "shift_scale_rotate": (0.4, 0.6),
        "brightness_contrast": (0.4, 0.5),
        "hue_saturation": (0.3, 0.3),
        "coarse_dropout": (0.3, 0.3),
    },
    "heavy": {
        "hflip": (0.0, 0.5),
        "random_resized_crop": (0.5, 0.5),
        "shift_scale_rotate": (0.6, 0.7),
        "brightness_contrast": (0.6, 0.6),
        "hue_saturation": (0.5, 0.5),
        "blur": (0.5, 0.2),
        "noise": (0.5, 0.2),
        "coarse_dropout": (0.6, 0.5),
        "clahe": (0.5, 0.2),
    },
}


def check_preset(name: object, key: str) -> None:
    if name not in PRESETS:
        raise ConfigError(f"{key}: unknown augmentation preset {name!r}; use one of: {', '.join(PRESETS)}")


def preset_ops(name: str) -> dict[str, tuple[float, float]]:
    return dict(PRESETS[name])


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
