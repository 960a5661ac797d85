"""What an augmentation is, whatever library applies it: the op a trial asks for, each op's
strength at a magnitude, and the named presets. Pure Python: the study file is checked against it
without importing albumentations or torch.

``hpo.data.augment`` builds these ops with albumentations (image by image, in the loader's
workers), ``hpo.data.batch_augment`` with torch (a whole batch on the GPU); both take their
strengths from here, so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpo.errors import ConfigError


@dataclass(frozen=True)
class AugmentOp:
    """One op: applied with probability ``p`` at strength ``magnitude`` in [0, 1]."""

    name: str
    magnitude: float
    p: float


# Each op's strength at a magnitude.
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
