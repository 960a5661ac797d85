"""A harder synthetic mask archive, in the competition's layout, with people held out.

Every person has a look of their own (skin, face size and place, hair style and greyness), and
the cues overlap as on real photos: a mask worn low looks like one worn incorrectly, some men
have long hair and some women short, greyness rises with age with a spread of its own, so ages
near 30 and 60 are ambiguous. Backgrounds, light and noise vary by photo. The 18 classes are as
imbalanced as the competition's: five mask photos per person, and fewer people of 60 and over.

``write_people(root, study_people, held_out_people)`` writes ``root/study`` (train/train.csv and
train/images/, the mask format) and ``root/held_out`` (an eval folder, images/ and info.csv,
whose true classes are returned): a group split by person that the study never sees.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# The training recipe both people benchmarks search (ensemble_flows.py, time_to_quality.py): what
# a plain train.py exposes; each adds its backbones, augmentation and any hpo-only choices.
RECIPE = {
    "pretrained": False,
    "optimizer": "adamw",
    "lr": {"low": 3e-4, "high": 1e-2, "log": True},
    "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
    "scheduler": "cosine",
    "loss": {"choose": {"cross_entropy": {}, "focal": {"gamma": {"low": 1.0, "high": 3.0}},
                        "label_smoothing": {"epsilon": {"low": 0.05, "high": 0.2}}}},
    "class_weights": {"choices": ["none", "sqrt_inverse"]},
    "batch_size": 32,
}
PHOTOS = {"mask1": 0, "mask2": 0, "mask3": 0, "mask4": 0, "mask5": 0, "incorrect_mask": 1, "normal": 2}
SIZE = (72, 96)


@dataclass(frozen=True)
class Person:
    gender: int
    age: int
    skin: tuple[int, int, int]
    grey: float  # 0 (dark hair) .. 1 (white)
    long_hair: bool
    scale: float
    shift: tuple[float, float]


def person(rng: random.Random) -> Person:
    gender = rng.random() < 0.6  # more women than men, as in the competition
    age = int(rng.choice([rng.uniform(18, 30), rng.uniform(30, 60), rng.uniform(30, 60), rng.uniform(55, 75)]))
    grey = min(1.0, max(0.0, (age - 25) / 45 + rng.gauss(0, 0.18)))
    long_hair = rng.random() < (0.8 if gender else 0.2)
    skin = tuple(int(c * rng.uniform(0.6, 1.1)) for c in (225, 185, 150))
    return Person(int(gender), age, skin, grey, long_hair, rng.uniform(0.8, 1.1),
                  (rng.uniform(-0.08, 0.08), rng.uniform(-0.06, 0.06)))


def age_class(age: int) -> int:
    return 0 if age < 30 else 1 if age < 60 else 2


def draw(p: Person, mask: int, rng: random.Random) -> Image.Image:
    w, h = SIZE
    image = Image.new("RGB", SIZE, tuple(rng.randint(60, 220) for _ in range(3)))
    d = ImageDraw.Draw(image)
    for _ in range(rng.randint(0, 4)):  # clutter behind the person
        x, y = rng.randint(0, w), rng.randint(0, h)
        d.rectangle([x, y, x + rng.randint(5, 30), y + rng.randint(5, 30)], fill=tuple(rng.randint(0, 255) for _ in range(3)))
    s, (dx, dy) = p.scale * rng.uniform(0.95, 1.05), p.shift

    def box(x0: float, y0: float, x1: float, y1: float) -> list[float]:
        cx, cy = w * (0.5 + dx), h * (0.5 + dy)
        return [cx + (x0 - 0.5) * w * s, cy + (y0 - 0.5) * h * s, cx + (x1 - 0.5) * w * s, cy + (y1 - 0.5) * h * s]

    hair = tuple(int(30 + 200 * p.grey + rng.gauss(0, 12)) for _ in range(3))
    if p.long_hair:
        d.rectangle(box(0.14, 0.18, 0.86, 0.88), fill=hair)
    d.ellipse(box(0.2, 0.1, 0.8, 0.45), fill=hair)
    d.ellipse(box(0.25, 0.18, 0.75, 0.88), fill=p.skin)
    for x in (0.38, 0.62):
        d.ellipse(box(x - 0.03, 0.4, x + 0.03, 0.45), fill=(20, 20, 20))
    d.line(box(0.42, 0.72, 0.58, 0.72), fill=(170, 40, 40), width=2)
    colour = rng.choice([(60, 120, 220), (235, 235, 240), (30, 30, 30), (120, 190, 120)])
    if mask == 0:  # worn: nose and mouth covered, sometimes a little low
        top = rng.uniform(0.48, 0.58)
        d.rectangle(box(0.25, top, 0.75, 0.85), fill=colour)
    elif mask == 1:  # incorrect: under the nose, or on the chin
        top = rng.uniform(0.6, 0.76)
        d.rectangle(box(0.27, top, 0.73, top + 0.14), fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    pixels = np.asarray(image, dtype=np.float32) * rng.uniform(0.7, 1.2) + np.random.default_rng(rng.getrandbits(32)).normal(0, 10, (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def label(p: Person, mask: int) -> int:
    return mask * 6 + p.gender * 3 + age_class(p.age)


def write_people(root: Path, study_people: int, held_out_people: int, seed: int = 0) -> list[int]:
    """The two archives; returns the held-out images' true classes, in info.csv's order."""
    root = Path(root)
    if (root / "done").is_file():
        return [int(x) for x in (root / "done").read_text().split()]
    rng = random.Random(seed)
    images = root / "study" / "train" / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for number in range(study_people):
        p = person(rng)
        pid, folder = f"{number:06d}", f"{number:06d}_{('male', 'female')[p.gender]}_Asian_{p.age}"
        rows.append({"id": pid, "gender": ("male", "female")[p.gender], "race": "Asian", "age": p.age, "path": folder})
        (images / folder).mkdir(exist_ok=True)
        for stem, mask in PHOTOS.items():
            draw(p, mask, rng).save(images / folder / f"{stem}.jpg", quality=90)
    with (root / "study" / "train" / "train.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "gender", "race", "age", "path"])
        writer.writeheader()
        writer.writerows(rows)
    held = root / "held_out" / "images"
    held.mkdir(parents=True, exist_ok=True)
    ids, truth = [], []
    for number in range(held_out_people):
        p = person(rng)
        for stem, mask in PHOTOS.items():
            image_id = f"{number:05d}_{stem}.jpg"
            draw(p, mask, rng).save(held / image_id, quality=90)
            ids.append(image_id)
            truth.append(label(p, mask))
    (root / "held_out" / "info.csv").write_text("ImageID,ans\n" + "".join(f"{i},0\n" for i in ids))
    (root / "done").write_text(" ".join(map(str, truth)))
    return truth
