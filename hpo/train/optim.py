"""Optimizers (timm's factory) and LR schedules (torch's schedulers), each one registry entry."""

from __future__ import annotations

from collections.abc import Callable

from timm.optim import create_optimizer_v2
from torch import nn
from torch.optim import Optimizer
from torch.optim import lr_scheduler as sched

from hpo.registry import Registry

OPTIMIZERS: Registry = Registry("optimizer")
SCHEDULERS: Registry = Registry("scheduler")


def fused(model: nn.Module) -> dict[str, bool]:
    """Torch's fused kernels for a model on CUDA: one launch per step for all the weights, where
    the default (foreach) launches several per group of tensors; a small backbone's step is
    bound by its launches. Elsewhere torch's default."""
    return {"fused": True} if next(model.parameters()).is_cuda else {}


# Optimizers: timm's factory keeps weight decay off biases and norm weights.
@OPTIMIZERS.register("adamw")
def adamw(model: nn.Module, lr: float, weight_decay: float) -> Optimizer:
    return create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=weight_decay, **fused(model))


@OPTIMIZERS.register("adam")
def adam(model: nn.Module, lr: float, weight_decay: float) -> Optimizer:
    return create_optimizer_v2(model, opt="adam", lr=lr, weight_decay=weight_decay, **fused(model))


@OPTIMIZERS.register("sgd")
def sgd(
    model: nn.Module, lr: float, weight_decay: float, *, momentum: float = 0.9, nesterov: bool = True
) -> Optimizer:
    # timm names SGD by its momentum flavour: "sgd" is Nesterov, "momentum" is classical.
    opt = "sgd" if nesterov else "momentum"
    return create_optimizer_v2(model, opt=opt, lr=lr, weight_decay=weight_decay, momentum=momentum, **fused(model))


@OPTIMIZERS.register("rmsprop")
def rmsprop(model: nn.Module, lr: float, weight_decay: float, *, momentum: float = 0.9) -> Optimizer:
    return create_optimizer_v2(model, opt="rmsprop", lr=lr, weight_decay=weight_decay, momentum=momentum)


@OPTIMIZERS.register("lamb")
def lamb(model: nn.Module, lr: float, weight_decay: float) -> Optimizer:
    return create_optimizer_v2(model, opt="lamb", lr=lr, weight_decay=weight_decay)


class Schedule:
    """Drives one torch scheduler at the cadence its type needs.

    ``after_batch`` is called after every optimizer step, ``after_epoch`` with the epoch's
    validation macro F1. A linear warmup over the first ``warmup_steps`` batches can precede the
    main schedule.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        main: sched.LRScheduler | None,
        interval: str,
        warmup_steps: int = 0,
    ) -> None:
        self.main, self.interval = main, interval
        self.warmup_steps, self.steps = warmup_steps, 0
        self.warmup = (
            sched.LinearLR(optimizer, start_factor=1e-2, total_iters=warmup_steps) if warmup_steps else None
        )

    def after_batch(self) -> None:
        self.steps += 1
        if self.steps <= self.warmup_steps:
            self.warmup.step()  # type: ignore[union-attr]
        elif self.interval == "batch":
            self.main.step()  # type: ignore[union-attr]

    def after_epoch(self, val_metric: float | None) -> None:
        if self.steps <= self.warmup_steps:
            return
        if self.interval == "plateau":
            if val_metric is not None:  # None: training on all data, nothing to watch
                self.main.step(val_metric)  # type: ignore[union-attr,arg-type]
        elif self.interval == "epoch":
            self.main.step()  # type: ignore[union-attr]


# A scheduler factory gets the optimizer, batches per epoch and epochs, and returns a Schedule.
SchedulerFactory = Callable[..., Schedule]


@SCHEDULERS.register("constant")
def constant(
    optimizer: Optimizer, steps_per_epoch: int, epochs: int, *, warmup_epochs: float = 0.0
) -> Schedule:
    return Schedule(optimizer, None, "none", round(warmup_epochs * steps_per_epoch))


@SCHEDULERS.register("step")
def step(
    optimizer: Optimizer,
    steps_per_epoch: int,
    epochs: int,
    *,
    step_epochs: int = 2,
    gamma: float = 0.5,
    warmup_epochs: float = 0.0,
) -> Schedule:
    main = sched.StepLR(optimizer, step_size=step_epochs, gamma=gamma)
    return Schedule(optimizer, main, "epoch", round(warmup_epochs * steps_per_epoch))


@SCHEDULERS.register("cosine")
def cosine(
    optimizer: Optimizer,
    steps_per_epoch: int,
    epochs: int,
    *,
    min_lr_ratio: float = 0.01,
    warmup_epochs: float = 0.0,
) -> Schedule:
    warmup = round(warmup_epochs * steps_per_epoch)
    total = max(1, epochs * steps_per_epoch - warmup)
    eta_min = optimizer.param_groups[0]["lr"] * min_lr_ratio
    main = sched.CosineAnnealingLR(optimizer, T_max=total, eta_min=eta_min)
    return Schedule(optimizer, main, "batch", warmup)


@SCHEDULERS.register("plateau")
def plateau(
    optimizer: Optimizer,
    steps_per_epoch: int,
    epochs: int,
    *,
    factor: float = 0.5,
    patience: int = 1,
    warmup_epochs: float = 0.0,
) -> Schedule:
    # Stepped on validation macro F1, which we maximise.
    main = sched.ReduceLROnPlateau(optimizer, mode="max", factor=factor, patience=patience)
    return Schedule(optimizer, main, "plateau", round(warmup_epochs * steps_per_epoch))


@SCHEDULERS.register("onecycle")
def onecycle(optimizer: Optimizer, steps_per_epoch: int, epochs: int, *, pct_start: float = 0.3) -> Schedule:
    # One-cycle has its own warmup (pct_start); the optimizer's lr is its peak.
    max_lr = [group["lr"] for group in optimizer.param_groups]
    main = sched.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=epochs * steps_per_epoch, pct_start=pct_start
    )
    return Schedule(optimizer, main, "batch")


def build_optimizer(name: str, args: dict, model: nn.Module, lr: float, weight_decay: float) -> Optimizer:
    return OPTIMIZERS.get(name)(model, lr, weight_decay, **args)


def build_schedule(
    name: str, args: dict, optimizer: Optimizer, steps_per_epoch: int, epochs: int
) -> Schedule:
    return SCHEDULERS.get(name)(optimizer, steps_per_epoch, epochs, **args)


def current_lr(optimizer: Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


__all__ = [
    "OPTIMIZERS",
    "SCHEDULERS",
    "Schedule",
    "build_optimizer",
    "build_schedule",
    "current_lr",
]
