"""Training batches: gathered whole from the decoded array, augmented, loader workers sized."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from hpo.data import loader as loader_module
from hpo.data import ring as ring_module
from hpo.data.augment import build_pipeline
from hpo.data.loader import loader_workers, train_loader
from hpo.errors import DataError
from hpo.train.config import AugmentOp

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def images() -> np.ndarray:
    # Every image is filled with its own index, so a batch names the images it holds.
    return np.broadcast_to(np.arange(60, dtype=np.uint8)[:, None, None, None], (60, 6, 6, 3)).copy()


def test_batches_hold_the_training_side_with_its_labels(images):
    labels = np.arange(60) % 4
    train = np.arange(10, 50)
    loader = train_loader(images, labels, train, None, batch_size=8, seed=0, device=CPU)
    seen = []
    for x, y in loader:
        assert x.shape == (8, 6, 6, 3) and x.dtype == torch.uint8 and y.dtype == torch.int64
        ids = x[:, 0, 0, 0].numpy()
        assert (y.numpy() == labels[ids]).all()  # labels travel with their images
        assert (x.numpy() == ids[:, None, None, None]).all()
        seen.extend(ids.tolist())
    assert sorted(seen) == train.tolist()  # one epoch = every training image once, no validation image


def test_augmented_batches_change_pixels_but_not_shape(images):
    pipeline = build_pipeline([AugmentOp("noise", 1.0, 1.0)], 6, seed=0)
    before = images.copy()
    loader = train_loader(images, np.zeros(60, dtype=np.int64), np.arange(60), pipeline, 10, 0, CPU)
    x, _ = next(iter(loader))
    assert x.shape == (10, 6, 6, 3)
    assert not all((x[k].numpy() == x[k, 0, 0, 0].item()).all() for k in range(10))
    assert np.array_equal(images, before)  # the shared array itself is never written


def test_loader_workers_follow_the_cores_of_this_worker(monkeypatch):
    monkeypatch.delenv("HPO_LOADER_WORKERS", raising=False)
    monkeypatch.setenv("HPO_THREADS", "8")  # hpo run gives each packed worker its share of cores
    assert loader_workers(CUDA, augmented=True) == 7
    assert loader_workers(CUDA, augmented=False) == 4  # a few to gather: the training process launches kernels
    assert loader_workers(CPU, augmented=True) == 0  # the cores are busy training
    monkeypatch.setenv("HPO_THREADS", "3")
    assert loader_workers(CUDA, augmented=False) == 2
    monkeypatch.setenv("HPO_THREADS", "1")
    assert loader_workers(CUDA, augmented=True) == 1
    assert loader_workers(CUDA, augmented=False) == 0  # gathering helps; it is not worth a shared core
    monkeypatch.setenv("HPO_LOADER_WORKERS", "3")
    assert loader_workers(CPU, augmented=False) == 3


@pytest.mark.parametrize("sampling", ["uniform", "weighted"])
def test_loader_workers_give_the_same_batches_as_in_process(images, monkeypatch, sampling):
    """Workers hand batches over through a ring of 2 x 4 + 1 shared slots; epochs of 15 batches
    go round it, and every batch is held until the end: none may be overwritten."""
    pipeline = build_pipeline([AugmentOp("hflip", 0.0, 0.5)], 6, seed=0)  # invisible on flat images
    labels = np.arange(60) % 3

    materialize = loader_module.SlotBatch.materialize

    def slow_materialize(batch):  # gives a worker time to write a slot that is still being read
        time.sleep(0.05)
        return materialize(batch)

    monkeypatch.setattr(loader_module.SlotBatch, "materialize", slow_materialize)

    def epochs(workers: str) -> list[tuple[list[int], list[int]]]:
        monkeypatch.setenv("HPO_LOADER_WORKERS", workers)
        loader = train_loader(images, labels, np.arange(60), pipeline, 4, 3, CPU, sampling)
        held = [batch for _ in range(3) for batch in loader]
        return [(x[:, 0, 0, 0].tolist(), y.tolist()) for x, y in held]

    with_workers, in_process = epochs("2"), epochs("0")
    assert len(with_workers) == 45
    # The first epoch's seeded order does not depend on the worker count. (Later epochs differ:
    # DataLoader draws a worker seed from the generator per epoch without persistent workers.)
    assert with_workers[:15] == in_process[:15]
    for epoch in range(3):
        batches = with_workers[15 * epoch : 15 * epoch + 15]
        if sampling == "uniform":
            assert sorted(i for ids, _ in batches for i in ids) == list(range(60))
        for ids, ys in batches:  # a slot written again before it was read would break the pairs
            assert ys == (np.array(ids) % 3).tolist()


def test_ring_fits_the_shared_memory_or_says_how_to_get_more(images, monkeypatch, caplog):
    monkeypatch.setenv("HPO_LOADER_WORKERS", "2")
    slot = 12 * 6 * 6 * 3  # bytes of one batch

    def loader_with_free_slots(slots: int, pipeline=None):
        # Half the free space is used; the batch in hand and those being copied take their slots.
        free = 2 * (slots + 1 + loader_module.COPIES_IN_FLIGHT) * slot
        monkeypatch.setattr(ring_module, "shared_memory_free", lambda: free)
        return train_loader(images, np.arange(60), np.arange(60), pipeline, 12, 0, CPU)

    loader = loader_with_free_slots(2 * 2)
    assert (loader.num_workers, loader.prefetch_factor) == (2, 2)  # not 2 x 4
    assert len(loader.dataset.ring) == 2 * 2 + 1 + loader_module.COPIES_IN_FLIGHT
    assert sorted(i for x, _ in loader for i in x[:, 0, 0, 0].tolist()) == list(range(60))
    loader = loader_with_free_slots(1)
    assert (loader.num_workers, loader.prefetch_factor) == (1, 1)
    assert "1 loader workers instead of 2" in caplog.text
    with pytest.raises(DataError, match=r"loader workers need 0 MiB of shared memory .* /dev/shm, which has 0 MiB free: give it more .*shm-size.*HPO_LOADER_WORKERS=0"):
        loader_with_free_slots(0, build_pipeline([AugmentOp("hflip", 0.0, 0.5)], 6))
    # Workers that would only gather are a help, not a need: without room the trial gathers itself.
    assert loader_with_free_slots(0).num_workers == 0
    assert "batches gathered in the training process" in caplog.text


def test_pin_thread_copies_a_slot_batch_out(images, monkeypatch):
    """On a GPU DataLoader's pin thread meets each SlotBatch; what it hands on must be a copy
    (CPU stand-in for pinning: a clone)."""
    from torch.utils.data import DataLoader
    from torch.utils.data._utils.pin_memory import pin_memory

    monkeypatch.setenv("HPO_LOADER_WORKERS", "1")
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *args: self.clone())
    loader = train_loader(images, np.arange(60) % 3, np.arange(60), None, 12, 0, CPU)
    raw = next(DataLoader.__iter__(loader))  # as the pin thread receives it
    assert isinstance(raw, loader_module.SlotBatch)
    x, y = pin_memory(raw)
    ids = x[:, 0, 0, 0]
    assert y.tolist() == (ids % 3).tolist()
    x_again = x.clone()
    raw.images().fill_(255)  # the slot written again: the copy handed on is untouched
    assert torch.equal(x, x_again) and (x.numpy() < 60).all()


@pytest.mark.timeout(120)
def test_a_slot_is_written_again_only_after_the_batches_being_copied(images, monkeypatch):
    """A page-locked ring hands on views of its slots, which the GPU copies from while the next
    batches are taken: each must hold its images until ``COPIES_IN_FLIGHT`` more are taken,
    across epochs too. Views held as on_device holds them, the workers given time to run ahead."""
    from torch.utils.data import DataLoader

    monkeypatch.setenv("HPO_LOADER_WORKERS", "2")
    loader = train_loader(images, np.arange(60), np.arange(60), None, 6, 0, CPU)
    held = []  # (view of the slot, the ids its images must show)
    for _ in range(3):
        for batch in DataLoader.__iter__(loader):  # as the pin thread receives them
            held = [*held[-loader_module.COPIES_IN_FLIGHT:], (batch.images(), batch.labels.copy())]
            time.sleep(0.02)  # the workers fill every slot the ring lets them
            for view, ids in held:
                assert view[:, 0, 0, 0].tolist() == ids.tolist()


def _paint_opencv_threads(image: np.ndarray, **_) -> np.ndarray:
    import cv2

    return np.full_like(image, cv2.getNumThreads())


@pytest.mark.timeout(120)
def test_loader_workers_run_opencv_on_one_thread(images):
    """Up to 15 workers, each with OpenCV's pool of one thread per core, would fight each other
    and the training process for the cores: each worker runs OpenCV on one thread. Setting that
    inside a worker forked from a process whose pool has run hangs the worker: the parent's pool
    runs here first."""
    import albumentations as A
    import cv2

    with loader_module.opencv_threads(4):  # the parent's pool, as on a 4-core machine, and used
        cv2.GaussianBlur(np.zeros((1024, 1024, 3), np.uint8), (5, 5), 0)
        for workers in ("1", "2"):
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("HPO_LOADER_WORKERS", workers)
                threads = A.Compose([A.Lambda(image=_paint_opencv_threads)])
                loader = train_loader(images, np.arange(60), np.arange(60), threads, 12, 0, CPU)
                painted = [x for x, _ in loader]
            assert len(painted) == 5 and all((x == 1).all() for x in painted)
        assert cv2.getNumThreads() == 4  # the training process keeps its own setting


def test_an_epoch_asked_for_early_is_prepared_before_its_first_batch(images, monkeypatch, tmp_path):
    """The training loop asks for the next epoch before it evaluates: the workers must start on it
    then, not when the first batch is taken."""
    import albumentations as A

    log = tmp_path / "augmented"

    def record(image, **_):
        with log.open("a") as out:
            out.write(f"{image[0, 0, 0]}\n")
        return image

    monkeypatch.setenv("HPO_LOADER_WORKERS", "1")
    loader = train_loader(images, np.arange(60), np.arange(60), A.Compose([A.Lambda(image=record)]), 12, 0, CPU)
    first = [x for x, _ in loader]  # epoch 1, whole
    done = len(log.read_text().splitlines())
    assert done == 60 and len(first) == 5
    batches = iter(loader)  # epoch 2 asked for; no batch taken
    deadline = time.monotonic() + 30
    while len(log.read_text().splitlines()) < done + 12 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(log.read_text().splitlines()) >= done + 12  # at least one batch of epoch 2 made
    assert sorted(i for x, _ in batches for i in x[:, 0, 0, 0].tolist()) == list(range(60))


def test_on_device_normalises_every_batch_in_order(images):
    mean = torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1, 1) / 255
    std = torch.full((1, 3, 1, 1), 0.5)
    batches = [(torch.from_numpy(images[k : k + 4]), torch.arange(k, k + 4)) for k in range(0, 60, 4)]
    out = list(loader_module.on_device(batches, CPU, mean, std))
    assert len(out) == 15
    for (x, y), (raw, labels) in zip(out, batches, strict=True):
        assert x.shape == (4, 3, 6, 6) and torch.equal(y, labels)
        expected = (raw.permute(0, 3, 1, 2).float() / 255 - mean) / std
        assert torch.allclose(x, expected)
