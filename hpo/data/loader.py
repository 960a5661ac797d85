"""Batches for training and evaluation from decoded uint8 images."""

from __future__ import annotations

import contextlib
import itertools
import logging
import mmap
import os
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, WeightedRandomSampler

from hpo.data.cache import available_cpus
from hpo.env import env_int
from hpo.errors import DataError
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


RING_BYTES = 2**30
# Batches whose copy to the GPU may still be running when the training loop takes the next: a
# page-locked ring (RingLoader) goes to the GPU straight from its slots, so it keeps this many
# slots beyond those in the workers' hands and the batch in hand, and on_device takes batch j
# only once the copy out of the slot that taking it lets the workers write (batch j - 1 - this) is done.
COPIES_IN_FLIGHT = 2
log = logging.getLogger(__name__)
# Each loader's ring of shared batch buffers, as the training process sees it, by token: a
# SlotBatch crossing from a worker carries the token, not the buffer.
_RINGS: weakref.WeakValueDictionary[int, torch.Tensor] = weakref.WeakValueDictionary()
_RING_TOKENS = itertools.count()  # not random: the trial seeds that generator


@dataclass
class SlotBatch:
    """A batch a loader worker wrote into slot ``slot`` of a shared ring; only this small record
    crosses the process boundary. DataLoader's pin-memory thread calls ``pin_memory``: it copies
    the images out of the slot into pinned memory, or, where the ring is page-locked (RingLoader),
    hands on the slot itself, which the GPU then copies from (torch pins a pinned tensor as itself)."""

    ring: int
    slot: int
    count: int
    labels: np.ndarray

    def images(self) -> torch.Tensor:
        return _RINGS[self.ring][self.slot, : self.count]

    def pin_memory(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images().pin_memory(), torch.from_numpy(self.labels).pin_memory()

    def materialize(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images().clone(), torch.from_numpy(self.labels)


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
            self.token = next(_RING_TOKENS)
            _RINGS[self.token] = ring

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


class SlottedBatches(Sampler):
    """Each batch of ``batches`` paired with the ring slot its worker writes into, in turn.

    DataLoader keeps ``prefetch_factor x workers`` batches in flight and, delivering in order (its
    default, ``in_order=True``), asks for the next only on handing one over: the request made on
    handing over batch ``j`` goes to the slot of batch ``j - 1 - COPIES_IN_FLIGHT``. By then the pin
    thread has copied that batch out, or (a page-locked ring) on_device has waited for its copy
    to the GPU, which it does before taking batch ``j``; across epochs the slots go on in turn.
    """

    def __init__(self, batches: BatchSampler, slots: int) -> None:
        self.batches, self.slots, self.next_slot = batches, slots, 0

    def __iter__(self):
        for positions in self.batches:
            slot, self.next_slot = self.next_slot, (self.next_slot + 1) % self.slots
            yield slot, positions  # a pass cut short still moves on: its last slot may be in use

    def __len__(self) -> int:
        return len(self.batches)


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


_refused_warned = False


def page_lock(ring: torch.Tensor) -> bool:
    """Register the ring's shared memory with CUDA (cudaHostRegister) until the ring tensor is
    freed (its views keep it). False, with a warning (once per process), where the driver
    refuses: the pin thread then copies each batch into pinned memory."""
    global _refused_warned
    # Whole pages (some drivers ask for them): the mapping the ring lies in begins and ends on one.
    start = ring.data_ptr() // mmap.PAGESIZE * mmap.PAGESIZE
    size = -(-(ring.data_ptr() + ring.nbytes - start) // mmap.PAGESIZE) * mmap.PAGESIZE
    cudart = torch.cuda.cudart()
    error = cudart.cudaHostRegister(start, size, 1)  # 1: portable
    if int(error) == 0:
        weakref.finalize(ring, _unlock, start, torch.cuda.current_device())
        return True
    _forget_cuda_error()
    if not _refused_warned:
        _refused_warned = True
        log.warning("CUDA refused to page-lock the loader's shared memory (%s): batches are copied into pinned"
                    " memory first, which may slow training on fast models", cudart.cudaGetErrorString(error))
    return False


def _unlock(pointer: int, device: int) -> None:
    """Unregister a ring being freed (when its loader is let go: _Epochs.close), once no copy out
    of it can still be running."""
    with contextlib.suppress(Exception):  # a finalizer must not raise (interpreter exit)
        torch.cuda.synchronize(device)
        if int(torch.cuda.cudart().cudaHostUnregister(pointer)) != 0:
            _forget_cuda_error()


def _forget_cuda_error() -> None:
    """Take a failed runtime call's error off this thread's CUDA runtime, which keeps it for the
    next cudaGetLastError: torch calls that after each kernel launch and would blame the kernel
    for it. A launch here reads it (torch then raises, and that is all)."""
    with contextlib.suppress(Exception):
        torch.ones(1, device="cuda")


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
    if (override := env_int("HPO_LOADER_WORKERS", 0)) is not None:
        return override
    if device.type != "cuda":
        return 0
    cores = env_int("HPO_THREADS", 1) or available_cpus()
    if not augmented:  # a help, not a need: none where the trial has a core alone
        return max(0, min(GATHER_WORKERS, cores - 1))
    return max(1, min(16, cores - 1))


def shared_memory_free() -> int | None:
    """Bytes free in /dev/shm, where the ring lives on Linux (None elsewhere)."""
    try:
        stat = os.statvfs("/dev/shm")
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def ring_plan(workers: int, slot_bytes: int, augmented: bool = True) -> tuple[int, int]:
    """(workers, batches each prepares ahead) for a ring that fits: up to 4 ahead within ~1 GiB,
    and never more than half the free shared memory. Where /dev/shm is short (a container's
    default is 64 MB), fewer workers, with a warning; where not even one worker's slots fit, one
    clear error (a ring past the free space ends in a worker killed by SIGBUS mid-trial), or,
    for workers that only gather (not ``augmented``), none: the training process gathers."""
    free = shared_memory_free()
    spare = 1 + COPIES_IN_FLIGHT  # the batch in hand and those being copied
    room = None if free is None else free // 2 // slot_bytes - spare  # slots for the workers
    if room is not None and room < workers:
        if room < 1 and not augmented:
            log.warning("/dev/shm has %d MiB free: batches gathered in the training process (docker run"
                        " --shm-size=8g for loader workers)", free // 2**20)
            return 0, 0
        if room < 1:
            raise DataError(
                f"loader workers need {(spare + 1) * slot_bytes / 2**20:.0f} MiB of shared memory (a batch of"
                f" {slot_bytes / 2**20:.0f} MiB per worker, in hand and being copied), up to half of /dev/shm,"
                f" which has {free / 2**20:.0f} MiB free: give it more (docker run --shm-size=8g, compose"
                " shm_size) or set HPO_LOADER_WORKERS=0 (augment in the training process)"
            )
        log.warning("/dev/shm has %d MiB free: %d loader workers instead of %d (docker run --shm-size=8g)",
                    free // 2**20, room, workers)
        workers = room
    ahead = RING_BYTES // slot_bytes - spare if room is None else min(RING_BYTES // slot_bytes - spare, room)
    return workers, max(1, min(4, ahead // workers))


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


def to_input(
    images: torch.Tensor, device: torch.device, mean: torch.Tensor, std: torch.Tensor,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """uint8 NHWC on the host -> normalised float NCHW on the device (channels_last on CUDA);
    ``augment`` (hpo.data.batch_augment) works on the batch in [0, 1] before normalisation."""
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
    if augment is not None:
        x = augment(x)
    x = x.sub_(mean).div_(std)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x.contiguous()


def side_stream(device: torch.device) -> torch.cuda.Stream | None:
    """The stream on_device copies on; one per fold, not per epoch: the allocator reuses a freed
    block only for the stream that allocated it, and each new Stream is another of the pool's 32,
    so a stream per epoch would leave each epoch's batches' memory cached and unusable."""
    return torch.cuda.Stream(device) if device.type == "cuda" else None


def on_device(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    mean: torch.Tensor,
    std: torch.Tensor,
    side: torch.cuda.Stream | None = None,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(normalised images, labels) on the device. On CUDA one batch ahead, copied, augmented
    (``augment``) and normalised on the ``side`` stream (see side_stream), so that the next batch's
    preparation overlaps the training step of this one instead of waiting in line with its kernels."""
    if side is None:
        for images, labels in batches:
            yield to_input(images, device, mean, std, augment), labels.to(device)
        return
    main = torch.cuda.current_stream(device)
    side.wait_stream(main)  # mean and std were made on the main stream
    copies: deque[torch.cuda.Event] = deque()  # of the batches whose host memory may be read still
    ahead = None
    try:
        for images, labels in _after_copies(batches, copies):
            with torch.cuda.stream(side):
                x, y = to_input(images, device, mean, std, augment), labels.to(device, non_blocking=True)
                copies.append(side.record_event())
            if ahead is not None:
                yield _hand_over(*ahead, main)
            ahead = x, y, copies[-1]
        if ahead is not None:
            yield _hand_over(*ahead, main)
    finally:  # the loader's next pass goes on through the ring, this one finished or not
        with contextlib.suppress(RuntimeError):  # a failed device: the failure is raised elsewhere
            for copy in copies:
                _wait(copy)


def _after_copies(batches: Iterable, copies: deque[torch.cuda.Event]) -> Iterator:
    """``batches``, each taken only once the batch ``COPIES_IN_FLIGHT + 1`` back has been copied
    out of the host memory that taking it lets the loader write again (RingLoader)."""
    batches = iter(batches)
    while True:
        while len(copies) > COPIES_IN_FLIGHT:
            _wait(copies.popleft())
        try:
            yield next(batches)
        except StopIteration:
            return


def _wait(copy: torch.cuda.Event) -> None:
    """Until ``copy`` is done: a query, not a sync, where it is, as it nearly always is."""
    if not copy.query():
        copy.synchronize()


def _hand_over(x: torch.Tensor, y: torch.Tensor, copied: torch.cuda.Event,
               main: torch.cuda.Stream) -> tuple[torch.Tensor, torch.Tensor]:
    """Tensors made on the side stream, ready for the main one: it waits for their copy, and the
    allocator keeps their memory until the main stream is done with them."""
    main.wait_event(copied)
    x.record_stream(main)
    y.record_stream(main)
    return x, y
