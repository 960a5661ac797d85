"""A fold's training batches from decoded uint8 images: sampled (hpo.data.sampling), gathered
whole, augmented in DataLoader workers straight into a shared-memory ring (hpo.data.ring), and
moved to the device by hpo.data.prefetch."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from hpo.data.prefetch import on_device, side_stream, to_input  # noqa: F401 - re-exported
from hpo.data.ring import (  # noqa: F401 - RING_BYTES re-exported
    COPIES_IN_FLIGHT,
    RING_BYTES,
    SlotBatch,
    SlottedBatches,
    page_lock,
    register_ring,
    ring_plan,
)
from hpo.data.sampling import SAMPLING
from hpo.settings import settings
from hpo.system import available_cpus


class AugmentedImages(Dataset):
    """The ``indices`` of uint8 HWC images, augmented per sample (normalised later, on the device).

    Indexing into the shared (memory-mapped) array avoids a copy of the training side for every
    fold. Batches are fetched whole (``__getitems__``): one gather from the array and one tensor
    per batch instead of one per image and a collate that stacks them. With a ``ring`` (loader
    workers), the gather lands straight in a preallocated shared-memory slot: handing a fresh
    tensor to the training process would put every batch through a new shared-memory segment,
    copied and page-faulted on both sides (measured: a fifth of the in-process rate).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        indices: np.ndarray,
        pipeline: A.Compose | None,
        ring: torch.Tensor | None = None,
    ) -> None:
        self.images, self.labels, self.indices, self.pipeline = images, labels, indices, pipeline
        self.ring, self.token = ring, None
        if ring is not None:
            self.token = register_ring(ring)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        images, labels = self.__getitems__([i])
        return images[0], int(labels[0])

    def __getitems__(self, request: list[int] | tuple[int, list[int]]):
        """``positions`` -> (images, labels); ``(slot, positions)`` -> a SlotBatch in that slot."""
        slot, positions = request if isinstance(request, tuple) else (None, request)
        # Sorted: the memory map reads in file order, and one gather is the batch's only copy.
        # The order inside a batch does not matter to training; labels follow their images.
        index = np.sort(self.indices[positions])
        if slot is None:
            batch = self.images[index]
        else:
            batch = self.ring[slot, : len(index)].numpy()
            np.take(self.images, index, axis=0, out=batch, mode="clip")  # "raise" buffers `out`
        if self.pipeline is not None:
            for k in range(len(batch)):
                batch[k] = self.pipeline(image=batch[k])["image"]
        if slot is not None:
            return SlotBatch(self.token, slot, len(index), self.labels[index])
        return torch.from_numpy(batch), torch.from_numpy(self.labels[index])


class RingLoader(DataLoader):
    """A DataLoader whose workers hand batches over through a SlotBatch ring.

    ``iter()`` sets the workers on the epoch's batches at once (persistent workers, reset), not
    at the first ``next()``: the training loop asks for the next epoch while it evaluates this
    one, so the first batches are ready when training resumes.

    The workers are the parallelism: OpenCV's own pool (a thread per core in each of up to 15
    workers) would only fight them and the training process for the cores. They are forked with
    OpenCV set to one thread: setting it in a forked worker hangs once the parent has used its
    pool.

    On a GPU the ring is page-locked once the workers exist (page_lock), so that batches go to
    the GPU straight from their slots, without the pin thread's copy of each batch into pinned
    memory (19 MB for 128 images at 224 px, on one thread of the training process; measured on
    an H200: +9% for an eager resnet18 trial, +13% with CUDA graphs). Its batches are then views
    of the ring: batch j's slot is written again once batch j + 1 + ``COPIES_IN_FLIGHT`` is taken,
    and on_device, which copies them to the GPU, waits for the copy before taking that one.
    """

    _locked: bool | None = None  # page-locked; None: not tried yet

    def __iter__(self):
        with opencv_threads(1):  # the first iter() forks the workers, which keep this setting
            batches = super().__iter__()
        if self.pin_memory and self._locked is None:
            # Not before the fork: the driver may hide page-locked memory from child processes.
            self._locked = page_lock(self.dataset.ring)
        return (batch.materialize() if isinstance(batch, SlotBatch) else batch for batch in batches)


def _whole_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch ``__getitems__`` built is already collated."""
    return batch


@contextlib.contextmanager
def opencv_threads(threads: int) -> Iterator[None]:
    """OpenCV's thread count in this process for the block, restored after."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(threads)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def _seed_worker(worker_id: int) -> None:
    """Each DataLoader worker holds a copy of the pipeline: give each its own stream, derived
    from the loader's seeded generator, so workers differ and runs repeat."""
    info = torch.utils.data.get_worker_info()
    if info is not None and info.dataset.pipeline is not None:
        info.dataset.pipeline.set_random_seed(info.seed % 2**32)


GATHER_WORKERS = 4


def loader_workers(device: torch.device, augmented: bool) -> int:
    """DataLoader worker processes: on a GPU with augmentations, one per CPU core this worker may
    use (``HPO_THREADS``, set per packed worker by ``hpo run``; else every core), less one for
    the training process; ``HPO_LOADER_WORKERS`` overrides. Without augmentations on the CPU
    (none, or all on the GPU) a few workers still gather the batches: the training process
    would otherwise spend a step's time on the gather and the pinned copy (H100, resnet18 at
    224 px: 0.67 of the model alone without them, 0.90 with 4). On the CPU the cores are busy
    training, so batches are made in-process.
    """
    if (override := settings().loader_workers) is not None:
        return override
    if device.type != "cuda":
        return 0
    cores = settings().threads or available_cpus()
    if not augmented:  # a help, not a need: none where the trial has a core alone
        return max(0, min(GATHER_WORKERS, cores - 1))
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
    order = sampler if sampler is not None else RandomSampler(range(len(indices)), generator=generator)
    # A last batch of one sample breaks BatchNorm; drop the remainder when there is more.
    batches = BatchSampler(order, batch_size, drop_last=len(indices) > batch_size)
    workers, prefetch = loader_workers(device, pipeline is not None), 0
    if workers:
        workers, prefetch = ring_plan(workers, batch_size * int(np.prod(images.shape[1:])), pipeline is not None)
    if not workers:
        return DataLoader(AugmentedImages(images, labels, indices, pipeline), batch_sampler=batches,
                          collate_fn=_whole_batch, generator=generator, pin_memory=device.type == "cuda")
    assert images.dtype == np.uint8, "the ring holds decoded uint8 images"
    slots = workers * prefetch + 1 + COPIES_IN_FLIGHT
    ring = torch.empty((slots, batch_size, *images.shape[1:]), dtype=torch.uint8).share_memory_()
    return RingLoader(
        AugmentedImages(images, labels, indices, pipeline, ring),
        batch_sampler=SlottedBatches(batches, len(ring)),
        collate_fn=_whole_batch,
        generator=generator,
        num_workers=workers,
        persistent_workers=True,
        prefetch_factor=prefetch,
        worker_init_fn=_seed_worker,
        # Forked, also where Python's default is another start method (3.14): the workers share
        # the ring and the memory-mapped images instead of receiving pickled copies of them.
        multiprocessing_context="fork",
        pin_memory=device.type == "cuda",
    )
