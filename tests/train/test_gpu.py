"""The CUDA path: loader workers + pinned memory, bf16, torch.compile (inductor), memory handed
back after a trial. Skipped, visibly, without a CUDA device (CI has none)."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import optuna
import pytest
import torch

from hpo.config import parse_spec
from hpo.data.augment import preset_ops
from hpo.data.batch_augment import BATCH_OPS, Draws
from hpo.data.folds import make_fold_plan
from hpo.data.formats import load_table
from hpo.data.loader import loader_workers
from hpo.objective import Objective
from hpo.train import compiling, loop
from hpo.train.config import AugmentOp, Component
from hpo.train.loop import autocast_for, fit_fold
from hpo.train.optim import build_optimizer
from tests.conftest import tiny_study
from tests.train.helpers import config, fit_counting_graphs, fold_data

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
GPU = torch.device("cuda")


@pytest.fixture(scope="module")
def data(image_root):
    return fold_data(image_root)


def test_trains_with_loader_workers_and_mixed_precision(data, monkeypatch):
    monkeypatch.delenv("HPO_LOADER_WORKERS", raising=False)
    assert loader_workers(GPU, augmented=True) >= 1
    autocast, scaler = autocast_for(GPU)
    if torch.cuda.is_bf16_supported():
        assert scaler is None  # bf16 needs no loss scaling
    augment = (AugmentOp("hflip", 0.0, 0.5), AugmentOp("brightness_contrast", 0.3, 0.5))
    result = fit_fold(config(max_epochs=4, lr=1e-2, augment=augment), data, GPU)
    assert result.best_f1 >= 0.9
    assert all(e.images_per_second > 0 for e in result.history)


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_optimizers_use_fused_kernels_on_cuda(data, monkeypatch, name):
    built = []

    def spy(*args, **kwargs):
        built.append(build_optimizer(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(loop, "build_optimizer", spy)  # the trial's own optimizer
    result = fit_fold(config(max_epochs=4, optimizer=Component(name)), data, GPU)
    assert [o.defaults["fused"] for o in built] == [True]
    assert result.history[-1].train_loss < 0.8 * result.history[0].train_loss  # it learns


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])  # reduce-overhead: CUDA graphs
def test_compiled_with_inductor(data, monkeypatch, mode):
    monkeypatch.delenv("HPO_COMPILE_BACKEND", raising=False)
    result = fit_fold(config(max_epochs=3, lr=1e-2, compile=mode), data, GPU)
    assert result.best_f1 >= 0.9


def test_cuda_graphs_serve_every_fold_and_the_next_trial(data, monkeypatch):
    # A trial's folds reuse its graph with each fold's new model (its parameters elsewhere in
    # memory: the graphs are recorded again); a trial of another batch size starts from empty caches.
    monkeypatch.delenv("HPO_COMPILE_BACKEND", raising=False)
    monkeypatch.setattr(compiling, "_compiled_for", None)
    first = config(max_epochs=3, lr=1e-2, compile="reduce-overhead")
    for cfg, fold, compiles in [(first, 0, 1), (first, 1, 0), (replace(first, batch_size=12), 0, 1)]:
        graphs, result = fit_counting_graphs(cfg, data, GPU, fold)
        assert graphs == compiles
        assert result.best_f1 >= 0.9


def cublas_warmed() -> tuple[int, int]:
    """Allocated and reserved bytes once cuBLAS holds its per-thread workspaces (forward on this
    thread, backward on autograd's): the process keeps those for its life, trial or no trial."""
    layer = torch.nn.Linear(64, 64).to(GPU)
    autocast, _ = autocast_for(GPU)
    for precision in (torch.autocast("cuda", enabled=False), autocast()):  # cuBLAS and cuBLASLt
        with precision:
            layer(torch.randn(8, 64, device=GPU)).sum().backward()
    del layer
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated(GPU), torch.cuda.memory_reserved(GPU)


def test_trial_hands_its_memory_back(image_root, tmp_path):
    allocated, reserved = cublas_warmed()
    spec = parse_spec(tiny_study(image_root, tmp_path, budget__max_epochs=1))
    table = load_table(spec.data.format, spec.data.options)
    objective = Objective(spec, table, make_fold_plan(table, 2, 0), device=GPU)
    study = optuna.create_study(direction="maximize")
    study.optimize(objective, n_trials=1)
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE
    assert study.trials[0].user_attrs["device"] == torch.cuda.get_device_name(GPU)
    # What a packed neighbour on the same GPU could use at once: nothing of the trial kept.
    assert torch.cuda.memory_allocated(GPU) - allocated < 4 * 2**20
    assert torch.cuda.memory_reserved(GPU) - reserved < 32 * 2**20


def test_batches_copied_on_the_side_stream_match_the_main_streams():
    """on_device copies batch k + 1 on a side stream while batch k trains: each batch must arrive
    whole and in order, even when the main stream is busy and the side stream's memory is reused."""
    from hpo.data.loader import on_device, side_stream, to_input

    mean = torch.tensor([0.4, 0.5, 0.6], device=GPU).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.3], device=GPU).view(1, 3, 1, 1)
    host = [(torch.randint(0, 256, (64, 96, 96, 3), dtype=torch.uint8).pin_memory(), torch.arange(k, k + 64))
            for k in range(0, 64 * 12, 64)]
    busy = torch.randn(4096, 4096, device=GPU)
    for (x, y), (images, labels) in zip(on_device(host, GPU, mean, std, side_stream(GPU)), host, strict=True):
        busy = busy @ busy / 4096  # the main stream lags behind the copies
        assert torch.equal(x, to_input(images, GPU, mean, std))
        assert torch.equal(y.cpu(), labels)


def test_batches_go_to_the_gpu_straight_from_the_page_locked_ring(monkeypatch):
    """On a GPU the loader's ring is page-locked once its workers exist, and the pin thread hands
    on views of its slots, not copies. Each batch must still arrive whole when the copies lag:
    the side stream is held up before each one, so the host runs ahead, and the workers would
    write slots still being copied from if on_device did not wait for the copies it needs done."""
    from hpo.data.loader import on_device, side_stream, to_input, train_loader

    monkeypatch.setenv("HPO_LOADER_WORKERS", "2")
    images = np.random.default_rng(0).integers(0, 256, (240, 32, 32, 3), dtype=np.uint8)
    loader = train_loader(images, np.arange(240), np.arange(240), None, 8, 0, GPU)  # labels: the indices
    mean = torch.tensor([0.4, 0.5, 0.6], device=GPU).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.3], device=GPU).view(1, 3, 1, 1)
    side, ring = side_stream(GPU), loader.dataset.ring
    views = []

    def held_up(batches):
        for x, y in batches:
            views.append(x.untyped_storage().data_ptr() == ring.untyped_storage().data_ptr() and x.is_pinned())
            with torch.cuda.stream(side):
                torch.cuda._sleep(10_000_000)  # a few ms: the copy below waits in line
            yield x, y

    arrived = [batch for _ in range(3) for batch in on_device(held_up(loader), GPU, mean, std, side)]
    assert loader._locked is True
    assert all(views[len(views) // 3:])  # from the second epoch at the latest, every batch a view of the ring
    for x, y in arrived:  # compared only now: a sync per batch would keep the host from running ahead
        assert torch.equal(x, to_input(torch.from_numpy(images[y.cpu().numpy()]), GPU, mean, std))
    assert sorted(torch.cat([y for _, y in arrived]).tolist()) == sorted(list(range(240)) * 3)


def test_a_ring_cuda_refuses_to_page_lock_is_copied_and_cuda_goes_on(monkeypatch, caplog):
    """A refused cudaHostRegister leaves its error in the CUDA runtime, where torch's check after
    the next kernel launch would find it: page_lock takes it off, warns, and the ring is copied."""
    from hpo.data import ring as loader_module

    monkeypatch.setattr(loader_module, "_refused_warned", False)
    ring = torch.empty(8, 4096, dtype=torch.uint8).share_memory_()
    kept = ring.untyped_storage()  # the memory outlives the tensor the lock is tied to (a view would not)
    assert loader_module.page_lock(ring) and kept.is_pinned()
    assert not loader_module.page_lock(ring)  # registered already: the driver refuses
    assert "CUDA refused to page-lock" in caplog.text
    assert torch.ones(4, device=GPU).sum().item() == 4  # the refused call's error is not this kernel's
    del ring
    assert not kept.is_pinned()  # unlocked with the ring


def test_epochs_reuse_the_memory_of_the_last(data, monkeypatch):
    """Each epoch's batches are copied on the fold's one side stream: a new stream per epoch
    would leave every epoch's batch memory cached for a stream no longer used, so what the
    process holds would grow epoch by epoch (a packed neighbour on the GPU would run out)."""
    monkeypatch.delenv("HPO_LOADER_WORKERS", raising=False)
    reserved = []
    augment = (AugmentOp("hflip", 0.0, 0.5),)
    fit_fold(config(max_epochs=8, augment=augment), data, GPU,
             on_epoch=lambda _: reserved.append(torch.cuda.memory_reserved(GPU)))
    assert reserved[-1] == reserved[2], reserved


def host_syncs(run) -> int:
    """How many times ``run()`` made the host wait for the GPU (torch's sync debug mode)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing CUDA operation" in str(w.message) for w in caught)


HEAVY = tuple(AugmentOp(name, magnitude, p) for name, (magnitude, p) in preset_ops("heavy").items())


@pytest.mark.parametrize("augment_on", ["workers", "gpu"])
def test_training_steps_do_not_wait_for_the_gpu(data, monkeypatch, augment_on):
    """The host queues a step's kernels and goes on to the next batch: twice the batches must not
    add a single sync (the loss is read once per epoch; evaluation and set-up are per fold).
    Loader workers, the pinned ring and the side stream; with "gpu" the batch ops too."""
    monkeypatch.delenv("HPO_LOADER_WORKERS", raising=False)
    recipe = config(max_epochs=2, augment=HEAVY, augment_on=augment_on)
    fit_fold(replace(recipe, max_epochs=1), data, GPU)  # warm: cuDNN, cuBLAS
    few = host_syncs(lambda: fit_fold(replace(recipe, batch_size=8), data, GPU))
    many = host_syncs(lambda: fit_fold(replace(recipe, batch_size=4), data, GPU))
    assert len(data.train_idx) // 4 >= 2 * (len(data.train_idx) // 8) >= 4  # the premise: twice the steps
    assert many == few, (few, many)


def test_augments_on_the_gpu_in_batch(data, monkeypatch):
    """train.augment_on: gpu: the ops with a batch version run on the GPU, CLAHE alone in the
    loader's workers; the trial learns as with albumentations."""
    monkeypatch.delenv("HPO_LOADER_WORKERS", raising=False)
    from hpo.data.batch_augment import BatchAugment

    calls = []
    apply = BatchAugment.__call__

    def counted(self, x):
        calls.append((self.names, x.device.type))
        return apply(self, x)

    monkeypatch.setattr(BatchAugment, "__call__", counted)
    result = fit_fold(config(max_epochs=4, lr=1e-2, augment=HEAVY, augment_on="gpu"), data, GPU)
    assert result.best_f1 >= 0.9
    assert calls and all(device == "cuda" for _, device in calls)
    assert calls[0][0] == [op.name for op in HEAVY if op.name != "clahe"]


def test_evaluation_from_images_kept_on_the_gpu_equals_the_host_path(data):
    from hpo.train.loop import host_batches, kept_on_gpu, predict_logits
    from hpo.train.models import create_model, to_device

    kept = kept_on_gpu(data.images, data.val_idx, GPU)
    assert kept is not None and kept.device.type == "cuda" and len(kept) == len(data.val_idx)
    model = to_device(create_model("test_resnet", False, data.num_classes), GPU)
    half = torch.full((1, 3, 1, 1), 0.5, device=GPU)
    on_gpu = predict_logits(model, kept.split(16), GPU, half, half)
    from_host = predict_logits(model, host_batches(data.images, data.val_idx, 16), GPU, half, half)
    assert torch.allclose(on_gpu, from_host, atol=1e-5)


@pytest.mark.parametrize("name", sorted(BATCH_OPS))
def test_batch_ops_never_wait_for_the_gpu(name):
    """Each op on a channels_last batch on the side stream, as on_device runs it: no host sync
    (a tensor made from a Python list, an .item(), a data-dependent shape would be one)."""
    x = torch.rand(64, 64, 64, 3, device=GPU).permute(0, 3, 1, 2)  # NHWC strides, as to_input leaves it
    draws = Draws.seeded(GPU, 0)
    op = BATCH_OPS.get(name)(1.0, 0.5)  # some images changed, the others not: index_select/copy
    side = torch.cuda.Stream(GPU)
    with torch.cuda.stream(side):
        op(x, draws)  # warm
    with torch.cuda.stream(side):
        assert host_syncs(lambda: op(x, draws)) == 0
