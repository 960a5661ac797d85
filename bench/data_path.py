"""What the data path costs per image on one core: the albumentations presets on uint8 images
(op by op, with each op's batch version on the GPU, or the CPU where there is none),
fetching batches from the decoded array whole (hpo) or image by image with a collate, and
handing batches over from one loader worker process through hpo's shared ring of slots or as a
fresh tensor per batch (DataLoader's usual way: a new shared-memory segment each time).

    python bench/data_path.py --image-size 224
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import augment_rate, pipeline_rate, sync  # noqa: E402

from hpo.data.augment import build_pipeline, preset_ops  # noqa: E402
from hpo.data.batch_augment import BATCH_OPS, Draws  # noqa: E402
from hpo.data.loader import AugmentedImages, _whole_batch, train_loader  # noqa: E402
from hpo.system import pick_device  # noqa: E402
from hpo.train.config import AugmentOp  # noqa: E402


class PerImage(AugmentedImages):
    """The usual Dataset: one tensor per image; the default collate stacks them."""

    __getitems__ = None  # type: ignore[assignment]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        index = self.indices[i]
        return torch.from_numpy(np.ascontiguousarray(self.images[index])), int(self.labels[index])


def op_costs(images: np.ndarray, preset: str, device: torch.device, seconds: float = 1.0) -> None:
    """Milliseconds per image of each op of the preset, applied always (p = 1), and what it costs
    on average at the preset's probability: what would be gained by moving it elsewhere; and
    its batch version's (train.augment_on: gpu) on ``device``, in batches of 128."""
    batch = torch.from_numpy(images[:128]).to(device).permute(0, 3, 1, 2).float() / 255
    for name, (magnitude, p) in preset_ops(preset).items():
        pipeline = build_pipeline([AugmentOp(name, magnitude, 1.0)], images.shape[1], seed=0)
        ms = 1e3 / pipeline_rate(pipeline, images, seconds)
        line = f"  {name:<20} {ms:.3f} ms per image, {p * ms:.3f} ms at p={p}"
        if name in BATCH_OPS:
            always, at_p = (batch_op_ms(BATCH_OPS.get(name)(magnitude, share), batch) for share in (1.0, p))
            line += f"; in batch on {device.type}: {always:.4f} ms, {at_p:.4f} ms at p"
        print(line, flush=True)


def batch_op_ms(op, batch: torch.Tensor, repeats: int = 5) -> float:
    """Milliseconds per image of a batch op (waiting for the device to finish)."""
    draws = Draws.seeded(batch.device, 0)
    op(batch, draws)
    sync(batch.device)
    started = time.perf_counter()
    for _ in range(repeats):
        op(batch, draws)
    sync(batch.device)
    return (time.perf_counter() - started) * 1e3 / (repeats * len(batch))


def rate(loader: DataLoader, epochs: int = 5) -> float:
    for _ in loader:  # one epoch to start any worker processes
        pass
    done, started = 0, time.perf_counter()
    for _ in range(epochs):
        for images, _ in loader:
            done += len(images)
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (args.images, args.image_size, args.image_size, 3), dtype=np.uint8)
    labels = np.arange(args.images) % 6
    everything = np.arange(args.images)
    print(f"one core, {args.image_size} px uint8 images", flush=True)
    for preset in ("light", "medium", "heavy"):
        print(f"augmentation {preset}: {augment_rate(images, preset, 4.0):.0f} images/s", flush=True)
    op_costs(images, "heavy", pick_device())
    per_image = DataLoader(PerImage(images, labels, everything, None), batch_size=args.batch_size, shuffle=True)
    print(f"batches image by image + collate: {rate(per_image):.0f} images/s", flush=True)
    whole = train_loader(images, labels, everything, None, args.batch_size, 0, torch.device("cpu"))
    print(f"batches gathered whole (hpo):     {rate(whole):.0f} images/s", flush=True)
    os.environ["HPO_LOADER_WORKERS"] = "1"
    ring = train_loader(images, labels, everything, None, args.batch_size, 0, torch.device("cpu"))
    print(f"1 worker, through the ring (hpo): {rate(ring):.0f} images/s", flush=True)
    fresh = DataLoader(AugmentedImages(images, labels, everything, None), batch_size=args.batch_size, shuffle=True,
                       collate_fn=_whole_batch, num_workers=1, persistent_workers=True, prefetch_factor=4)
    print(f"1 worker, a fresh tensor a batch: {rate(fresh):.0f} images/s", flush=True)


if __name__ == "__main__":
    main()
