"""Every registered loss, optimizer, scheduler, freeze strategy and augmentation trains a real
step on a tiny model, and behaves as its name says."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from hpo.data.augment import OPS, PRESETS, build_pipeline
from hpo.data.sampling import SAMPLING
from hpo.train.config import AugmentOp, Component
from hpo.train.loop import fit_fold
from hpo.train.losses import CLASS_WEIGHTS, LOSSES, build_loss
from hpo.train.models import FREEZE, build_freeze
from hpo.train.optim import OPTIMIZERS, SCHEDULERS, build_optimizer, build_schedule, current_lr
from tests.train.helpers import config, fold_data

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data(image_root):
    return fold_data(image_root)


def trains(data, **changes) -> None:
    result = fit_fold(config(**changes), data, CPU)
    assert len(result.history) == 1
    epoch = result.history[0]
    assert np.isfinite(epoch.train_loss) and np.isfinite(epoch.val_loss)
    assert 0.0 <= result.best_f1 <= 1.0 and len(result.per_class_f1) == 3


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("weighting", list(CLASS_WEIGHTS))
def test_every_loss_trains(data, name, weighting):
    trains(data, loss=Component(name), class_weights=weighting)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_trains(data, name):
    trains(data, optimizer=Component(name))


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_scheduler_trains(data, name):
    trains(data, scheduler=Component(name))


@pytest.mark.parametrize("name", list(FREEZE))
def test_every_freeze_strategy_trains(data, name):
    trains(data, freeze=Component(name))


@pytest.mark.parametrize("name", list(OPS))
def test_every_augmentation_trains(data, name):
    trains(data, augment=(AugmentOp(name, 0.5, 1.0),), mixup=0.5, cutmix=0.5)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_builds(preset):
    ops = tuple(AugmentOp(n, m, p) for n, (m, p) in PRESETS[preset].items())
    pipeline = build_pipeline(ops, 16)
    if preset == "none":
        assert pipeline is None
        return
    expected = [type(OPS.get(op.name)(op.magnitude, op.p)) for op in ops]
    assert [type(t) for t in pipeline.transforms] == expected
    assert [t.p for t in pipeline.transforms] == [op.p for op in ops]


@pytest.mark.parametrize("name", list(OPS))
def test_every_augmentation_changes_images_and_keeps_their_shape(name):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    pipeline = build_pipeline((AugmentOp(name, 1.0, 1.0),), 32)
    outputs = [pipeline(image=image)["image"] for _ in range(5)]
    assert all(o.shape == image.shape and o.dtype == np.uint8 for o in outputs)
    assert any(not np.array_equal(o, image) for o in outputs)
    if name == "hflip":
        assert np.array_equal(outputs[0], image[:, ::-1])


def test_class_weights_favour_rare_classes():
    counts = np.array([90, 9, 1])
    assert CLASS_WEIGHTS.get("none")(counts) is None
    inverse = CLASS_WEIGHTS.get("inverse")(counts)
    assert inverse[2] > inverse[1] > inverse[0]
    assert np.isclose((inverse * counts).sum(), counts.sum())  # balanced total
    assert np.isclose(CLASS_WEIGHTS.get("sqrt_inverse")(counts).mean(), 1.0)


OPTIMIZER_TYPES = {"adamw": "AdamW", "adam": "Adam", "sgd": "SGD", "rmsprop": "RMSprop", "lamb": "Lamb"}


def test_every_optimizer_is_what_its_name_says():
    assert set(OPTIMIZER_TYPES) == set(OPTIMIZERS)
    model = timm.create_model("test_resnet", num_classes=3)
    biases = {id(p) for name, p in model.named_parameters() if p.ndim <= 1}
    for name, kind in OPTIMIZER_TYPES.items():
        optimizer = build_optimizer(name, {}, model, 0.01, 0.05)
        assert type(optimizer).__name__ == kind, name
        for group in optimizer.param_groups:  # no weight decay on biases and norm weights
            assert group["lr"] == 0.01
            assert group["weight_decay"] == (0.0 if {id(p) for p in group["params"]} <= biases else 0.05), name
    assert build_optimizer("sgd", {}, model, 0.1, 0.0).defaults["nesterov"] is True
    assert not build_optimizer("adamw", {}, model, 0.1, 0.0).defaults["fused"]  # fused on CUDA only (test_gpu)
    classical = build_optimizer("sgd", {"nesterov": False, "momentum": 0.8}, model, 0.1, 0.0).defaults
    assert classical["nesterov"] is False and classical["momentum"] == 0.8


def test_class_weights_and_label_smoothing_change_the_loss_as_defined():
    logits, target = torch.randn(16, 3, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 3
    counts = np.array([30, 6, 2])
    weight = torch.tensor(counts.sum() / (3 * counts), dtype=torch.float32)
    per_sample = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    weighted = build_loss("cross_entropy", {}, "inverse", counts, CPU)(logits, target)
    assert torch.isclose(weighted, (per_sample * weight[target]).sum() / weight[target].sum())
    log_p = logits.log_softmax(1)
    smoothed = build_loss("label_smoothing", {"epsilon": 0.2}, "none", counts, CPU)(logits, target)
    assert torch.isclose(smoothed, (0.8 * per_sample - 0.2 * log_p.mean(1)).mean())


def test_focal_with_gamma_zero_is_cross_entropy():
    logits, target = torch.randn(8, 3), torch.randint(0, 3, (8,))
    focal = build_loss("focal", {"gamma": 0.0}, "none", np.ones(3), CPU)
    ce = build_loss("cross_entropy", {}, "none", np.ones(3), CPU)
    assert torch.isclose(focal(logits, target), ce(logits, target))


def test_soft_f1_is_low_for_perfect_predictions():
    target = torch.tensor([0, 1, 2, 1])
    perfect = torch.nn.functional.one_hot(target, 3).float() * 50
    loss = build_loss("soft_f1", {}, "none", np.ones(3), CPU)
    assert loss(perfect, target) < 1e-3 < loss(torch.zeros(4, 3), target)


def lr_curve(name: str, args: dict, metrics: list[float], steps: int = 4) -> list[float]:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    schedule = build_schedule(name, args, optimizer, steps, len(metrics))
    lrs = []
    for metric in metrics:
        for _ in range(steps):
            optimizer.step()
            schedule.after_batch()
        schedule.after_epoch(metric)
        lrs.append(current_lr(optimizer))
    return lrs


def test_schedulers_step_at_their_cadence():
    flat = [0.5] * 6
    assert lr_curve("constant", {}, flat) == [1.0] * 6
    assert lr_curve("step", {"step_epochs": 2, "gamma": 0.5}, flat) == [1.0, 0.5, 0.5, 0.25, 0.25, 0.125]
    cosine = lr_curve("cosine", {"min_lr_ratio": 0.0}, flat)
    assert all(a > b for a, b in zip(cosine, cosine[1:], strict=False)) and cosine[-1] < 1e-6
    # Plateau watches the validation F1 (maximised): it cuts the lr only once F1 stalls.
    assert lr_curve("plateau", {"patience": 0, "factor": 0.5}, [0.1, 0.2, 0.3, 0.3, 0.3]) == [
        1.0,
        1.0,
        1.0,
        0.5,
        0.25,
    ]
    onecycle = lr_curve("onecycle", {"pct_start": 0.5}, flat)
    peak = int(np.argmax(onecycle))
    assert 0 < peak < 5 and onecycle[-1] < onecycle[0]


def test_warmup_starts_low_and_reaches_the_base_lr():
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    schedule = build_schedule("cosine", {"warmup_epochs": 1.0, "min_lr_ratio": 0.0}, optimizer, 10, 3)
    assert current_lr(optimizer) == pytest.approx(0.01)
    for _ in range(10):
        optimizer.step()
        schedule.after_batch()
    assert current_lr(optimizer) == pytest.approx(1.0)


def test_freeze_backbone_trains_only_the_head():
    model = timm.create_model("test_resnet", num_classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    strategy = build_freeze("backbone", {})
    optimizer = build_optimizer("sgd", {}, model, 0.1, 0.0)
    model.train()
    strategy.apply(model, epoch=0)
    loss = model(torch.randn(4, 3, 16, 16)).logsumexp(1).mean()
    loss.backward()
    optimizer.step()
    head = {id(p) for p in model.get_classifier().parameters()}
    for key, param in model.named_parameters():
        assert (not torch.equal(param, before[key])) == (id(param) in head), key
    for key, buffer in model.named_buffers():  # frozen BatchNorm keeps its running statistics
        assert torch.equal(buffer, before[key]), key


def test_unfreeze_after_n_epochs():
    model = timm.create_model("test_resnet", num_classes=3)
    strategy = build_freeze("unfreeze", {"after": 2})
    trainable = []
    for epoch in range(3):
        strategy.apply(model, epoch)
        trainable.append(sum(p.requires_grad for p in model.parameters()))
    total = len(list(model.parameters()))
    assert trainable[0] == trainable[1] < total == trainable[2]


@pytest.mark.parametrize("name", list(SAMPLING))
def test_every_sampling_trains(data, name):
    trains(data, sampling=name)


def test_weighted_sampling_draws_classes_equally_often():
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    sampler = SAMPLING.get("weighted")(labels, torch.Generator().manual_seed(0))
    drawn = np.bincount(labels[list(sampler)], minlength=3)
    assert len(drawn) == 3 and drawn.sum() == 100
    drawn = np.bincount(labels[[i for _ in range(50) for i in sampler]], minlength=3) / 5000
    assert np.allclose(drawn, 1 / 3, atol=0.03)
    assert SAMPLING.get("uniform")(labels, torch.Generator()) is None
