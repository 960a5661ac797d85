"""Batches for training and evaluation from decoded uint8 images."""

from __future__ import annotations

import os

import albumentations as A
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, WeightedRandomSampler

from hpo.data.cache import available_cpus
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

    Indexing into the shared (memory-mapped) array avoids a copy of the training side for every
    fold. Batches are fetched whole (``__getitems__``): one gather from the array and one tensor
    per batch instead of one per image and a collate that stacks them.
    """

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, pipeline: A.Compose | None
    ) -> None:
        self.images, self.labels, self.indices, self.pipeline = images, labels, indices, pipeline

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        images, labels = self.__getitems__([i])
        return images[0], int(labels[0])

    def __getitems__(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        # Sorted: the memory map reads in file order, and one gather is the batch's only copy.
        # The order inside a batch does not matter to training; labels follow their images.
        index = np.sort(self.indices[positions])
        batch = self.images[index]
        if self.pipeline is not None:
            for k in range(len(batch)):
                batch[k] = self.pipeline(image=batch[k])["image"]
        return torch.from_numpy(batch), torch.from_numpy(self.labels[index])


def _whole_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch ``__getitems__`` built is already collated."""
    return batch


def _seed_worker(worker_id: int) -> None:
    """Each DataLoader worker holds a copy of the pipeline: give each its own stream, derived
    from the loader's seeded generator, so workers differ and runs repeat."""
    info = torch.utils.data.get_worker_info()
    if info is not None and info.dataset.pipeline is not None:
        info.dataset.pipeline.set_random_seed(info.seed % 2**32)


def loader_workers(device: torch.device, augmented: bool) -> int:
    """DataLoader worker processes: on a GPU with augmentations, one per CPU core this worker may
    use (``HPO_THREADS``, set per packed worker by ``hpo run``; else every core), less one for
    the training process; ``HPO_LOADER_WORKERS`` overrides. Without augmentations a batch is
    one gather from the cache, which the training process does faster than a pipe would carry it.
    On the CPU the cores are busy training, so augmentation runs in-process.
    """
    if override := os.environ.get("HPO_LOADER_WORKERS"):
        return max(0, int(override))
    if device.type != "cuda" or not augmented:
        return 0
    cores = int(os.environ.get("HPO_THREADS") or available_cpus())
    return max(1, min(16, cores - 1))


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
    workers = loader_workers(device, pipeline is not None)
    return DataLoader(
        AugmentedImages(images, labels, indices, pipeline),
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        collate_fn=_whole_batch,
        # A last batch of one sample breaks BatchNorm; drop the remainder when there is more.
        drop_last=len(indices) > batch_size,
        generator=generator,
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None,
        worker_init_fn=_seed_worker,
        pin_memory=device.type == "cuda",
    )


def to_input(
    images: torch.Tensor, device: torch.device, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """uint8 NHWC on the host -> normalised float NCHW on the device (channels_last on CUDA)."""
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
    x = x.sub_(mean).div_(std)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x.contiguous()
