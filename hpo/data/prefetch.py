"""Batches onto the device: copied, augmented in batch and normalised one batch ahead on a side
CUDA stream, so that the next batch's preparation overlaps this one's training step; a ring slot
is given back to the loader's workers only once its copy is done."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator

import torch

from hpo.data.ring import COPIES_IN_FLIGHT


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
