"""The fold training loop: learns, reports every epoch, stops early, is reproducible."""

from __future__ import annotations

import gc
import time
import weakref
from dataclasses import replace
from functools import partial

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from hpo.data.augment import build_pipeline
from hpo.data.loader import AugmentedImages
from hpo.errors import ConfigError, TrainingDiverged
from hpo.progress import waiting
from hpo.train import compiling, loop
from hpo.train.config import AugmentOp, Component, TrainConfig
from hpo.train.loop import fit_fold, predict_logits
from hpo.train.models import create_model
from tests.train.helpers import config, fit_counting_graphs, fold_data

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data(image_root):
    return fold_data(image_root)


def test_learns_the_tiny_data_and_reports_every_epoch(data):
    seen = []
    result = fit_fold(config(max_epochs=4, lr=1e-2), data, CPU, fold=0, on_epoch=seen.append)
    assert [e.epoch for e in seen] == [0, 1, 2, 3] == [e.epoch for e in result.history]
    assert result.best_f1 >= 0.9
    assert result.best_f1 == max(e.macro_f1 for e in seen)
    assert result.best_epoch == int(np.argmax([e.macro_f1 for e in seen]))
    assert all(e.images_per_second > 0 and e.lr > 0 for e in seen)


def test_same_config_same_seed_same_result(data):
    # Augmentations and mixup draw random numbers too: they must be seeded like the rest.
    noisy = config(max_epochs=2, mixup=0.5, augment=(AugmentOp("noise", 0.5, 1.0), AugmentOp("shift_scale_rotate", 0.5, 0.5)))
    first = fit_fold(noisy, data, CPU)
    second = fit_fold(noisy, data, CPU)
    assert [e.macro_f1 for e in first.history] == [e.macro_f1 for e in second.history]
    assert [e.train_loss for e in first.history] == [e.train_loss for e in second.history]


def test_early_stopping_on_patience(data):
    # Frozen backbone (BatchNorm too) and lr ~0: nothing improves after the first epoch, so patience 2 ends the fold after epoch 2.
    result = fit_fold(config(max_epochs=6, patience=2, lr=1e-12, freeze=Component("backbone")), data, CPU)
    assert len(result.history) == 3 and result.best_epoch == 0


def test_callback_can_stop_training_at_once(data):
    class Stop(Exception):
        pass

    epochs = []

    def stop_after_first(event):
        epochs.append(event.epoch)
        raise Stop

    with pytest.raises(Stop):
        fit_fold(config(max_epochs=5), data, CPU, on_epoch=stop_after_first)
    assert epochs == [0]


def fail_on_the_second_batch(monkeypatch) -> None:
    """From now on every epoch fails on its second batch, as out of memory."""
    backward = loop.Stepper.backward

    def failing(self, loss, batch):
        if batch == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        backward(self, loss, batch)

    monkeypatch.setattr(loop.Stepper, "backward", failing)


def test_a_fold_failing_mid_epoch_stops_its_loader_workers_at_once(data, monkeypatch):
    """A failure inside an epoch (out of memory, say) must not leave the loader's worker processes
    running for as long as its traceback is held (the worker's error handling, a log call)."""
    import multiprocessing

    monkeypatch.setenv("HPO_LOADER_WORKERS", "2")
    fail_on_the_second_batch(monkeypatch)
    with pytest.raises(RuntimeError, match="simulated") as failure:
        fit_fold(config(max_epochs=2), data, CPU)
    assert failure.traceback  # still held here
    assert multiprocessing.active_children() == []


def test_a_folds_loader_ring_is_freed_as_the_fold_ends(data, monkeypatch):
    """On a GPU the ring stays page-locked until the ring tensor is freed: that must happen when
    the fold ends, finished or failed, not at some later garbage collection (which could land
    in the next fold's CUDA graph capture, where unregistering memory is not allowed). Finished:
    no reference cycle holds it; failed, its traceback held: _Epochs.close lets it go."""
    monkeypatch.setenv("HPO_LOADER_WORKERS", "2")
    rings = []
    made = AugmentedImages.__init__

    def kept_track(self, *args, **kwargs):
        made(self, *args, **kwargs)
        rings.append(weakref.ref(self.ring))

    monkeypatch.setattr(AugmentedImages, "__init__", kept_track)
    hflip = (AugmentOp("hflip", 0.0, 0.5),)
    gc.disable()
    try:
        fit_fold(config(max_epochs=2, augment=hflip), data, CPU)
        assert len(rings) == 1 and rings[0]() is None
        fail_on_the_second_batch(monkeypatch)
        with pytest.raises(RuntimeError, match="simulated") as failure:
            fit_fold(config(max_epochs=2, augment=hflip), data, CPU)
        assert failure.traceback  # still held here, with the epoch's frames
        assert len(rings) == 2 and rings[1]() is None
    finally:
        gc.enable()


def test_wait_clock_counts_the_time_spent_in_next_not_in_the_loop():
    def slow_items():
        for item in range(3):
            time.sleep(0.05)
            yield item

    clock = loop.WaitClock()
    for _ in clock.timed(slow_items()):
        time.sleep(0.1)  # the consumer's own work is not waiting
    assert 0.15 <= clock.waited < 0.4  # the loop's own 0.3 s are not counted


def test_epochs_report_the_share_of_time_spent_waiting_for_batches(data, monkeypatch):
    quick = fit_fold(config(max_epochs=1), data, CPU).history[0]
    gather = AugmentedImages.__getitems__

    def slow_gather(self, request):
        time.sleep(0.1)
        return gather(self, request)

    monkeypatch.setattr(AugmentedImages, "__getitems__", slow_gather)
    slow = fit_fold(config(max_epochs=1), data, CPU).history[0]
    assert 0 < quick.data_wait < slow.data_wait < 1
    assert slow.data_wait > 0.5  # a tiny model's steps take milliseconds, each batch 100 ms
    assert waiting(slow.data_wait).endswith("waiting for data)") and waiting(0.05) == ""


def test_augmenting_on_the_gpu_without_one_is_albumentations_in_the_workers(data):
    """Without a GPU the batch ops would be slower than albumentations: the same trial, the same
    augmentations, the same result."""
    ops = (AugmentOp("hflip", 0.0, 0.5), AugmentOp("noise", 0.5, 0.5))
    asked = fit_fold(config(max_epochs=2, augment=ops, augment_on="gpu"), data, CPU)
    usual = fit_fold(config(max_epochs=2, augment=ops), data, CPU)
    assert [e.train_loss for e in asked.history] == [e.train_loss for e in usual.history]


def test_the_batch_ops_run_in_the_epoch_loop_where_placed_on_the_device(data, monkeypatch):
    """The GPU's path, wired through fit_fold, on CPU tensors: the ops placed on the device run
    there on every batch, CLAHE in the loader, and the trial still learns."""
    from hpo.data import batch_augment

    ops = (AugmentOp("hflip", 0.0, 0.5), AugmentOp("hue_saturation", 0.5, 0.5), AugmentOp("clahe", 0.5, 0.2))
    as_on_a_gpu = partial(batch_augment.split_ops, device=torch.device("cuda"))
    monkeypatch.setattr(loop, "split_ops", lambda ops, augment_on, device: as_on_a_gpu(ops, augment_on))
    calls, apply = [], batch_augment.BatchAugment.__call__
    monkeypatch.setattr(batch_augment.BatchAugment, "__call__",
                        lambda self, x: calls.append(self.names) or apply(self, x))
    pipelines = []
    monkeypatch.setattr(loop, "build_pipeline", lambda ops, *args: pipelines.append(ops) or build_pipeline(ops, *args))
    result = fit_fold(config(max_epochs=3, lr=1e-2, augment=ops, augment_on="gpu"), data, CPU)
    assert result.best_f1 >= 0.9
    assert pipelines == [(ops[2],)]
    assert calls == [["hflip", "hue_saturation"]] * (3 * (len(data.train_idx) // 8))


def test_validation_images_stay_on_the_gpu_only_where_they_fit(data, monkeypatch):
    nbytes = len(data.val_idx) * data.images[0].nbytes
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (20 * nbytes - 1, 80 * 2**30))
    assert loop.kept_on_gpu(data.images, data.val_idx, torch.device("cuda")) is None  # a twentieth of free, less a byte
    assert loop.kept_on_gpu(data.images, data.val_idx, CPU) is None  # the CPU evaluates from the memory map


def test_each_epoch_is_evaluated_from_the_validation_images_kept_for_the_fold(data, monkeypatch):
    """Where kept_on_gpu keeps them (a GPU; here a stand-in on the CPU), no epoch gathers them
    from the memory map again, and the scores are those of the host path."""
    usual = fit_fold(config(max_epochs=2), data, CPU)
    kept = []
    monkeypatch.setattr(loop, "kept_on_gpu", lambda images, indices, device: kept.append(len(indices))
                        or torch.from_numpy(images[indices]))
    monkeypatch.setattr(loop, "host_batches", lambda *args: pytest.fail("gathered from the host again"))
    from_kept = fit_fold(config(max_epochs=2), data, CPU)
    assert kept == [len(data.val_idx)]  # once for the fold
    assert [e.macro_f1 for e in from_kept.history] == [e.macro_f1 for e in usual.history]
    assert [e.val_loss for e in from_kept.history] == pytest.approx([e.val_loss for e in usual.history])


def test_nan_loss_raises_diverged(data, monkeypatch):
    class NanLoss(torch.nn.Module):
        def forward(self, logits, target):
            return logits.sum() * float("nan")

    monkeypatch.setattr(loop, "build_criterion", lambda *a, **k: NanLoss())
    with pytest.raises(TrainingDiverged, match="training loss became nan in fold 0 epoch 0"):
        fit_fold(config(), data, CPU)


def test_keep_best_state_holds_the_best_epochs_weights(data):
    # SGD at lr 0.1 peaks in the first epoch and gets worse after it (seeded: F1 1.0, 1.0, 0.17, 0.56).
    cfg = config(max_epochs=4, lr=0.1, optimizer=Component("sgd"))
    result = fit_fold(cfg, data, CPU, keep_best_state=True)
    assert result.history[-1].macro_f1 < result.best_f1  # the premise: the last epoch is not the best
    assert all(t.device.type == "cpu" for t in result.best_state.values())
    model = create_model(cfg.backbone, False, data.num_classes)
    model.load_state_dict(result.best_state)
    half = torch.full((1, 3, 1, 1), 0.5)
    logits = predict_logits(model, loop.host_batches(data.images, data.val_idx, 64), CPU, half, half)
    f1 = f1_score(data.val_labels, logits.argmax(1).numpy(), average="macro", labels=range(data.num_classes))
    assert f1 == pytest.approx(result.best_f1, abs=1e-6)


def test_a_vit_is_built_for_the_trials_image_size(data, tmp_path):
    """test_vit is built for 160 px; a trial at 16 px builds it for 16 px (timm's img_size) and
    trains, and 160 px pretrained weights load with their position embedding resampled."""
    import timm
    from safetensors.torch import save_file

    from hpo.train.models import takes_img_size

    assert takes_img_size("test_vit") and not takes_img_size("test_resnet")
    result = fit_fold(config(backbone="test_vit"), data, CPU)
    assert len(result.history) == 1 and 0.0 <= result.best_f1 <= 1.0
    source = timm.create_model("test_vit")
    save_file(source.state_dict(), tmp_path / "vit.safetensors")
    model = create_model("test_vit", str(tmp_path / "vit.safetensors"), num_classes=3, image_size=16)
    assert model.pos_embed.shape[1] < source.pos_embed.shape[1]  # one patch (+ class token), not 100
    assert torch.equal(model.patch_embed.proj.weight, source.patch_embed.proj.weight)
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 3)


def test_pretrained_from_a_local_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    from hpo.train.models import create_model

    source = timm.create_model("test_resnet")  # a 1000-class "pretrained" network
    save_file(source.state_dict(), tmp_path / "weights.safetensors")
    model = create_model("test_resnet", str(tmp_path / "weights.safetensors"), num_classes=3)
    head = {id(p) for p in model.get_classifier().parameters()}
    loaded = dict(source.named_parameters())
    for name, param in model.named_parameters():
        if id(param) not in head:
            assert torch.equal(param, loaded[name]), name
    assert model.get_classifier().out_features == 3
    (tmp_path / "junk.safetensors").write_bytes(b"junk" * 64)
    save_file(timm.create_model("test_efficientnet").state_dict(), tmp_path / "other.safetensors")
    for name in ("junk.safetensors", "other.safetensors"):  # damaged, or another architecture's
        with pytest.raises(ConfigError, match=f"weights file .*{name} does not load into 'test_resnet' .*pretrained: false"):
            create_model("test_resnet", str(tmp_path / name), num_classes=3)


def test_pretrained_from_the_hf_cache_asks_no_network(tmp_path, monkeypatch):
    """Weights already in the Hugging Face cache load from there: a trial on a machine without
    internet does not wait for the Hub's retries."""
    import huggingface_hub
    import timm
    import timm.models._hub
    from safetensors.torch import save_file

    def no_network(*args, **kwargs):
        raise AssertionError("asked the Hub")

    monkeypatch.setattr(timm.models._hub, "hf_hub_download", no_network)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ConfigError, match="pretrained weights for 'test_resnet' are not available offline"):
        create_model("test_resnet", True, num_classes=3)  # not cached yet: timm's download is tried

    repo = tmp_path / "models--timm--test_resnet.r160_in1k"  # the cache's own layout
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    source = timm.create_model("test_resnet")
    save_file(source.state_dict(), repo / "snapshots" / "abc123" / "model.safetensors")
    model = create_model("test_resnet", True, num_classes=3)
    assert torch.equal(model.conv1[0].weight, source.conv1[0].weight)
    assert model.get_classifier().out_features == 3

    (repo / "snapshots" / "abc123" / "model.safetensors").write_bytes(b"junk" * 64)
    with pytest.raises(ConfigError, match="weights file .*model.safetensors does not load into 'test_resnet'.*HF cache"):
        create_model("test_resnet", True, num_classes=3)


def test_missing_weights_file_is_a_config_error(tmp_path):
    from hpo.errors import ConfigError
    from hpo.train.models import create_model

    with pytest.raises(ConfigError, match="pretrained weights file .*missing.pth does not exist"):
        create_model("test_resnet", str(tmp_path / "missing.pth"), num_classes=3)
    with pytest.raises(ConfigError, match="pretrained weights file .* is a folder; give an existing .pth"):
        create_model("test_resnet", str(tmp_path), num_classes=3)


def _updates(batches, accumulate, clip=0.0):
    """Parameter change after a Stepper runs ``batches`` with SGD(lr=1): minus the gradient."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    stepper = loop.Stepper(optimizer, None, accumulate, len(batches), clip)
    steps = []
    stepper.on_step = lambda: steps.append(1)
    for i, (x, y) in enumerate(batches):
        stepper.backward(torch.nn.functional.cross_entropy(model(x), y), i)
    return [b - p.detach() for b, p in zip(before, model.parameters(), strict=True)], len(steps)


def test_accumulating_4_x_8_is_one_batch_of_32():
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 2, 2, 3, generator=generator), torch.randint(0, 3, (32,), generator=generator)
    whole, whole_steps = _updates([(x, y)], accumulate=1)
    accumulated, steps = _updates([(x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)], accumulate=4)
    assert whole_steps == steps == 1
    for a, b in zip(whole, accumulated, strict=True):
        assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()
    # A short last group (5 batches, groups of 4 and 1) is scaled by its own size.
    batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)] + [(x[:8], y[:8])]
    assert _updates(batches, accumulate=4)[1] == 2


def test_accumulation_steps_the_schedule_once_per_optimizer_step(data):
    # One-cycle refuses to step past its total: the schedule must count optimizer steps.
    cfg = config(max_epochs=2, accumulate=3, scheduler=Component("onecycle"))
    result = fit_fold(cfg, data, CPU)
    assert len(result.history) == 2
    assert result.history[-1].lr < result.history[0].lr  # annealed to the end of the cycle


def test_freeze_then_unfreeze_and_patience_are_visible_per_epoch(data):
    seen = []
    cfg = config(max_epochs=5, patience=2, lr=1e-12, freeze=Component("unfreeze", {"after": 2}))
    result = fit_fold(cfg, data, CPU, on_epoch=seen.append)
    assert [e.frozen for e in seen] == [True, True, False]
    assert [e.stale_epochs for e in seen] == [0, 1, 2]
    assert result.stopped_early == 2


def test_compiled_model_trains(data, monkeypatch):
    # aot_eager traces and runs the graph without generating code: quick, and it exercises the
    # same torch.compile wrapping the inductor backend gets on a GPU machine.
    monkeypatch.setenv("HPO_COMPILE_BACKEND", "aot_eager")
    plain = fit_fold(config(max_epochs=1), data, CPU)
    compiled = fit_fold(config(max_epochs=1, compile="default"), data, CPU)
    assert compiled.history[0].train_loss == pytest.approx(plain.history[0].train_loss, rel=1e-3)
    assert compiled.best_f1 == pytest.approx(plain.best_f1, abs=0.05)


def test_a_worker_compiles_each_config_once_however_many_came_before(data, monkeypatch):
    # A worker's trials sample batch sizes; each shape was one more entry in the cache of the
    # backbone's forward, and torch runs it eagerly, silently, once the cache is full.
    monkeypatch.setenv("HPO_COMPILE_BACKEND", "aot_eager")
    monkeypatch.setattr(compiling, "_compiled_for", None)

    def new_graphs(cfg: TrainConfig) -> int:
        return fit_counting_graphs(cfg, data, CPU)[0]

    first = config(max_epochs=1, compile="default", batch_size=8)
    assert new_graphs(first) == 1  # training's: evaluation runs uncompiled
    assert new_graphs(first) == 0  # the trial's next fold reuses it
    with torch._dynamo.config.patch(recompile_limit=1):  # a trial's one training graph
        for batch_size in (10, 12):
            assert new_graphs(replace(first, batch_size=batch_size)) == 1, f"batch size {batch_size} ran uncompiled"


def test_mixup_and_cutmix_mix_labels_in_the_share_of_their_pixels():
    torch.manual_seed(0)
    x = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 3, 10, 10).contiguous()
    y = torch.arange(8)  # image i is all i: a pixel names the image it came from
    mixed, y_other, lam = loop.Mixer(1.0, 0.0, seed=0)(x, y)
    assert 0 < lam < 1 and not torch.equal(y_other, y)
    assert torch.allclose(mixed[:, 0, 0, 0], lam * y + (1 - lam) * y_other)
    for seed in range(5):
        cut, y_other, lam = loop.Mixer(0.0, 1.0, seed)(x, y)
        for i in range(8):
            if y_other[i] != i:  # the pasted box is the other label's share of the image
                assert (cut[i] == y_other[i]).float().mean() == pytest.approx(1 - lam)
                assert (cut[i] == i).float().mean() == pytest.approx(lam)
    assert loop.Mixer(0.0, 0.0, seed=0)(x, y) == (x, y, 1.0)


def test_gradient_clipping_caps_the_steps_norm_and_is_searchable(image_root, tmp_path):
    """grad_clip: a searched hyperparameter added as one TrainConfig field and its use here."""
    import optuna

    from hpo.config import parse_spec, trial_config
    from tests.conftest import tiny_study

    generator = torch.Generator().manual_seed(1)
    batch = [(torch.randn(32, 2, 2, 3, generator=generator) * 50, torch.randint(0, 3, (32,), generator=generator))]
    free, _ = _updates(batch, accumulate=1)
    clipped, _ = _updates(batch, accumulate=1, clip=0.1)
    norm = lambda update: float(torch.sqrt(sum((u**2).sum() for u in update)))  # noqa: E731
    assert norm(free) > 0.5 and norm(clipped) == pytest.approx(0.1, rel=1e-4)
    spec = parse_spec(tiny_study(image_root, tmp_path, search__grad_clip={"choices": [0.0, 1.0]}))
    trial = optuna.create_study().ask()
    assert trial_config(trial, spec).grad_clip == trial.params["grad_clip"] in (0.0, 1.0)

