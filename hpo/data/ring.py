"""The ring of shared-memory slots that loader workers write whole batches into, and its
page-locking on a GPU: only a small record of each batch crosses the process boundary, and on a
GPU the batch goes to the device straight from its slot."""

from __future__ import annotations

import contextlib
import itertools
import logging
import mmap
import os
import weakref
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import BatchSampler, Sampler

from hpo.errors import DataError

log = logging.getLogger(__name__)
RING_BYTES = 2**30
# Batches whose copy to the GPU may still be running when the training loop takes the next: a
# page-locked ring (RingLoader) goes to the GPU straight from its slots, so it keeps this many
# slots beyond those in the workers' hands and the batch in hand, and on_device takes batch j
# only once the copy out of the slot that taking it lets the workers write (batch j - 1 - this) is done.
COPIES_IN_FLIGHT = 2
# Each loader's ring of shared batch buffers, as the training process sees it, by token: a
# SlotBatch crossing from a worker carries the token, not the buffer.
_RINGS: weakref.WeakValueDictionary[int, torch.Tensor] = weakref.WeakValueDictionary()
_RING_TOKENS = itertools.count()  # not random: the trial seeds that generator




def register_ring(ring: torch.Tensor) -> int:
    """A token for ``ring`` that SlotBatches carry across the process boundary instead of it."""
    token = next(_RING_TOKENS)
    _RINGS[token] = ring
    return token


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
