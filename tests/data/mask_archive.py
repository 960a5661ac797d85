"""A generator of small archives in the mask competition's exact layout, for tests.

Faces are drawn so that the label is visible: the mask covers nose and mouth (worn), only the
chin (incorrect) or nothing (not worn); women have long hair down the sides; hair is black
under 30, brown from 30 to 59 and white from 60. Photos use mixed extensions; the archive has
macOS ``._`` files and other junk, and optionally one corrupt photo.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

from hpo.data.formats.mask import PHOTOS

HAIR = {0: (25, 20, 15), 1: (130, 85, 40), 2: (235, 235, 235)}  # by age class
EXTENSIONS = (".jpg", ".jpeg", ".png")
AGES = {0: (19, 22, 25, 28), 1: (30, 41, 52, 57), 2: (58, 60, 63, 70)}  # includes ages near the boundaries


@dataclass
class Archive:
    root: Path
    expected: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # relative path -> (mask, gender, age)
    ages: dict[str, int] = field(default_factory=dict)  # person id -> age
    junk: int = 0
    corrupt: list[Path] = field(default_factory=list)
    eval_ids: list[str] = field(default_factory=list)


def draw_face(mask: int, gender: int, age_class: int, rng: random.Random, size: tuple[int, int] = (48, 64)) -> Image.Image:
    w, h = size
    image = Image.new("RGB", size, tuple(rng.randint(150, 200) for _ in range(3)))
    d = ImageDraw.Draw(image)
    hair = HAIR[age_class]
    if gender == 1:  # long hair down the sides
        d.rectangle([w * 0.12, h * 0.15, w * 0.88, h * 0.85], fill=hair)
    d.ellipse([w * 0.2, h * 0.12, w * 0.8, h * 0.45], fill=hair)  # top of the head
    d.ellipse([w * 0.25, h * 0.2, w * 0.75, h * 0.85], fill=(225, 185, 150))  # face
    for x in (0.38, 0.62):
        d.ellipse([w * x - 2, h * 0.42 - 2, w * x + 2, h * 0.42 + 2], fill=(20, 20, 20))
    d.line([w * 0.42, h * 0.7, w * 0.58, h * 0.7], fill=(170, 30, 30), width=2)  # mouth
    if mask == 0:
        d.rectangle([w * 0.25, h * 0.5, w * 0.75, h * 0.82], fill=(60, 120, 220))
    elif mask == 1:
        d.rectangle([w * 0.27, h * 0.73, w * 0.73, h * 0.86], fill=(60, 120, 220))
    return image


def write_mask_archive(root: Path, people_per_group: int = 4, corrupt: bool = True, seed: int = 0,
                       eval_images: int = 20) -> Archive:
    rng = random.Random(seed)
    archive = Archive(root)
    images = root / "train" / "images"
    images.mkdir(parents=True)
    rows, number = [], 0
    for gender in (0, 1):
        for age_class in (0, 1, 2):
            for k in range(people_per_group):
                number += 1
                pid, age = f"{number:06d}", AGES[age_class][k % 4]
                folder = f"{pid}_{('male', 'female')[gender]}_Asian_{age}"
                rows.append({"id": pid, "gender": ("male", "female")[gender], "race": "Asian", "age": age, "path": folder})
                archive.ages[pid] = age
                (images / folder).mkdir()
                for j, (stem, mask) in enumerate(PHOTOS.items()):
                    name = stem + EXTENSIONS[(number + j) % 3]
                    draw_face(mask, gender, age_class, rng).save(images / folder / name)
                    archive.expected[f"{folder}/{name}"] = (mask, gender, 0 if age < 30 else 1 if age < 60 else 2)
                (images / folder / f"._{stem}.jpg").write_bytes(b"\x00\x05\x16\x07resource fork")
                archive.junk += 1
    (images / "._000001_male_Asian_19").write_bytes(b"\x00\x05\x16\x07")
    (images / ".DS_Store").write_bytes(b"junk")
    archive.junk += 2
    if corrupt:
        victim = images / rows[0]["path"] / "mask3"
        path = next(victim.parent.glob("mask3.*"))
        path.write_bytes(b"\xff\xd8\xff\xe0 truncated, not a real JPEG")
        archive.corrupt.append(path)
    with (root / "train" / "train.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "gender", "race", "age", "path"])
        writer.writeheader()
        writer.writerows(rows)
    eval_dir = root / "eval" / "images"
    eval_dir.mkdir(parents=True)
    for i in range(eval_images):
        image_id = f"{rng.getrandbits(40):010x}.jpg"
        draw_face(i % 3, (i // 3) % 2, (i // 6) % 3, rng).save(eval_dir / image_id)
        archive.eval_ids.append(image_id)
    with (root / "eval" / "info.csv").open("w", newline="") as handle:
        handle.write("ImageID,ans\n" + "".join(f"{i},0\n" for i in archive.eval_ids))
    return archive
