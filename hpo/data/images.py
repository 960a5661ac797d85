"""Reading one image file as RGB uint8, whatever its mode and bit depth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
# Modes whose values PIL's convert("RGB") clips to 0-255 instead of scaling: 16-bit and 32-bit
# integer grey, and floating-point grey.
WIDE_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return to_rgb8(image)


def to_rgb8(image: Image.Image) -> np.ndarray:
    """An RGB uint8 array of any image PIL opens. 16-bit grey is scaled to 8 bits (65535 ->
    255), as PIL itself does for 16-bit colour; 32-bit integer grey holding 8- or 16-bit values
    likewise, and other ranges stretched from their minimum to their maximum; floating-point grey
    in [0, 1] scaled by 255, otherwise clipped to [0, 255]. Every other mode goes through PIL's
    own conversion (palette, CMYK, YCbCr, alpha dropped)."""
    if image.mode not in WIDE_MODES:
        return np.asarray(image.convert("RGB"))
    values = np.asarray(image).astype(np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode == "F":
        scaled = values * 255.0 if low >= 0 and high <= 1 else values
    elif image.mode.startswith("I;16") or (low >= 0 and 255 < high <= 65535):
        scaled = values * (255.0 / 65535.0)
    elif low >= 0 and high <= 255:
        scaled = values
    else:
        scaled = (values - low) * (255.0 / max(high - low, 1.0))
    grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
