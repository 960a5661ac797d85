"""Batches for training and evaluation from decoded uint8 images."""

from __future__ import annotations

import albumentations as A
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, WeightedRandomSampler

from hpo.registry import Registry

# How training samples are drawn each epoch: a factory (labels of the training side, seeded
# generator) -> a torch Sampler, or None for a plain shuffle.
SAMPLING: Registry = Registry("sampling")


@SAMPLING.register("uniform")
def uniform(labels: np.ndarray, generator: torch.Generator) -> Sampler | None:
    return None


@SAMPLING.register("weighted")
def weighted(labels: np.ndarray, generator: torch.Generator) -> Sampler:
    """Every class drawn equally often on average (with replacement), against imbalance."""
    counts = np.bincount(labels)
    weights = 1.0 / counts[labels]
    return WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), len(labels),
                                 replacement=True, generator=generator)


class AugmentedImages(Dataset):
    """The ``indices`` of uint8 HWC images, augmented per sample (normalised later, on the device).

    Indexing into the shared array avoids a copy of the training side for every fold.
    """

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, pipeline: A.Compose | None
    ) -> None:
        self.images, self.labels, self.indices, self.pipeline = images, labels, indices, pipeline

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        index = self.indices[i]
        image = self.images[index]
        if self.pipeline is not None:
            image = self.pipeline(image=image)["image"]
        return torch.from_numpy(np.ascontiguousarray(image)), int(self.labels[index])


def _seed_worker(worker_id: int) -> None:
    """Each DataLoader worker holds a copy of the pipeline: give each its own stream, derived
    from the loader's seeded generator, so workers differ and runs repeat."""
    info = torch.utils.data.get_worker_info()
    if info is not None and info.dataset.pipeline is not None:
        info.dataset.pipeline.set_random_seed(info.seed % 2**32)


def train_loader(
    images: np.ndarray,
    labels: np.ndarray,
    indices: np.ndarray,
    pipeline: A.Compose | None,
    batch_size: int,
    seed: int,
    device: torch.device,
    sampling: str = "uniform",
) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    sampler = SAMPLING.get(sampling, "search.sampling")(labels[indices], generator)
    on_gpu = device.type == "cuda"
    workers = min(8, (torch.multiprocessing.cpu_count() or 1)) if on_gpu and pipeline else 0
    return DataLoader(
        AugmentedImages(images, labels, indices, pipeline),
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        # A last batch of one sample breaks BatchNorm; drop the remainder when there is more.
        drop_last=len(indices) > batch_size,
        generator=generator,
        num_workers=workers,
        persistent_workers=workers > 0,
        worker_init_fn=_seed_worker,
        pin_memory=on_gpu,
    )


def to_input(
    images: torch.Tensor, device: torch.device, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """uint8 NHWC on the host -> normalised float NCHW on the device (channels_last on CUDA)."""
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
    x = x.sub_(mean).div_(std)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x.contiguous()
