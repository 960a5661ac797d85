"""What the benchmarks share: synthetic photo folders (JPEGs the size of the mask competition's,
384 x 512, so decoding costs what it costs on real data, with a learnable but not trivial class:
the colour and position of a blurred disc on a noisy, randomly lit background) and the plain
training recipe they time."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from hpo.train.config import Component, TrainConfig

COLOURS = [(200, 60, 60), (60, 170, 60), (60, 80, 200), (200, 180, 50), (150, 60, 170), (60, 170, 170)]


def photo(label: int, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    width, height = size
    light = rng.integers(60, 200)
    pixels = np.clip(rng.normal(light, 35, (height, width, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    colour = tuple(int(np.clip(c + rng.integers(-50, 50), 0, 255)) for c in COLOURS[label % len(COLOURS)])
    radius = int(rng.integers(width // 8, width // 4))
    # Even classes sit in the upper half, odd ones in the lower: colour alone is not enough.
    cx = int(rng.integers(radius, width - radius))
    cy = int(rng.integers(radius, height // 2) if (label // len(COLOURS)) % 2 == 0 else rng.integers(height // 2, height - radius))
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)
    return image.filter(ImageFilter.GaussianBlur(2))


def write_photos(root: Path, classes: int, per_class: int, size: tuple[int, int] = (384, 512), seed: int = 0) -> Path:
    """An imagefolder of ``classes`` x ``per_class`` JPEGs under ``root`` (reused if complete)."""
    root = Path(root)
    expected = classes * per_class
    if root.is_dir() and len(list(root.glob("*/*.jpg"))) == expected:
        return root
    rng = np.random.default_rng(seed)
    for label in range(classes):
        folder = root / f"class{label:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            photo(label, rng, size).save(folder / f"{i:04d}.jpg", quality=90)
    return root


def recipe(backbone: str, image_size: int, batch_size: int, epochs: int, **changes) -> TrainConfig:
    """AdamW at a constant 1e-3, cross-entropy, no augmentation or mixup, no early stopping."""
    values = dict(
        backbone=backbone, pretrained=False, freeze=Component("none"), optimizer=Component("adamw"),
        lr=1e-3, weight_decay=0.01, scheduler=Component("constant"), loss=Component("cross_entropy"),
        class_weights="none", batch_size=batch_size, image_size=image_size, augment=(), mixup=0.0,
        cutmix=0.0, max_epochs=epochs, patience=None, seed=0, mean=(0.5,) * 3, std=(0.5,) * 3,
    )
    return TrainConfig(**{**values, **changes})


def tiled(images: np.ndarray, labels: np.ndarray, repeat: int, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The decoded photos and their labels ``repeat`` times over, the images in one memory-mapped
    file under ``folder`` (built once, shared by processes): a GPU epoch long enough to time
    (real data sets have ~100 batches per epoch) without generating thousands more JPEGs. A
    trial reads it exactly as it reads the cache."""
    if repeat <= 1:
        return images, labels
    path = folder / f"tiled-{len(images)}x{repeat}-{images.shape[1]}.npy"
    shape = (len(images) * repeat, *images.shape[1:])
    if not path.exists() or np.load(path, mmap_mode="r").shape != shape:
        partial = path.with_name(path.name + ".partial.npy")
        out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
        for r in range(repeat):
            out[r * len(images) : (r + 1) * len(images)] = images
        out.flush()
        del out
        os.replace(partial, path)
    return np.load(path, mmap_mode="r"), np.tile(labels, repeat)
