"""Optimizers (timm's factory) and LR schedules (torch's schedulers), each one registry entry."""

from __future__ import annotations

from collections.abc import Callable

from timm.optim import create_optimizer_v2
from torch import nn
from torch.optim import Optimizer
from torch.optim import lr_scheduler as sched

from hpo.registry import Registry

# (model, learning rate, weight decay, *its arguments) -> the optimizer.
OptimizerFactory = Callable[..., Optimizer]
OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer")


def fused(model: nn.Module) -> dict[str, bool]:
    """Torch's fused kernels for a model on CUDA: one launch per step for all the weights, where
    the default (foreach) launches several per group of tensors; a small backbone's step is
    bound by its launches. Elsewhere torch's default."""
    return {"fused": True} if next(model.parameters()).is_cuda else {}


# Optimizers: timm's factory keeps weight decay off biases and norm weights.
@OPTIMIZERS.register("adamw")
def adamw(model: nn.Module, lr: float, weight_decay: float) -> Optimizer:
    """AdamW (decoupled weight decay)."""
    return create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=weight_decay, **fused(model))


@OPTIMIZERS.register("adam")
def adam(model: nn.Module, lr: float, weight_decay: float) -> Optimizer:
    """Adam."""
    return create_optimizer_v2(model, opt="adam", lr=lr, weight_decay=weight_decay, **fused(model))


@OPTIMIZERS.register("sgd")
def sgd(
    model: nn.Module, lr: float, weight_decay: float, *, momentum: float = 0.9, nesterov: bool = True
) -> Optimizer:
    """SGD with momentum (Nesterov's unless ``nesterov`` is false)."""
    # timm names SGD by its momentum flavour: "sgd" is Nesterov, "momentum" is classical.
    opt = "sgd" if nesterov else "momentum"
    return create_optimizer_v2(model, opt=opt, lr=lr, weight_decay=weight_decay, momentum=momentum, **fused(model))


@OPTIMIZERS.register("rmsprop")
def rmsprop(model: nn.Module, lr: float, weight_decay: float, *, momentum: float = 0.9) -> Optimizer:
    """RMSprop with momentum."""
    return create_optimizer_v2(model, opt="rmsprop", lr=lr, weight_decay=weight_decay, momentum=momentum)


@OPTIMIZERS.register("lamb")
def lamb(model: nn.Module, lr: float, weight_decay: float) -> Optimizer:
    """LAMB (layer-wise adaptive, for large batches)."""
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


# A scheduler factory: (optimizer, batches per epoch, epochs, warmup steps, *its arguments) ->
# (the torch scheduler, or None for a constant rate; the cadence it steps at). The warmup is
# build_schedule's, for every entry that takes it: the factory only hears how many steps it takes.
Interval = str  # "batch", "epoch", "plateau" (stepped on validation macro F1) or "none"
SchedulerFactory = Callable[..., tuple[sched.LRScheduler | sched.ReduceLROnPlateau | None, Interval]]
SCHEDULERS: Registry[SchedulerFactory] = Registry("scheduler", common={"warmup_epochs": 0.0})


@SCHEDULERS.register("constant")
def constant(optimizer: Optimizer, steps_per_epoch: int, epochs: int, warmup: int) -> tuple[None, Interval]:
    """The optimizer's learning rate throughout (after the warmup)."""
    return None, "none"


@SCHEDULERS.register("step")
def step(optimizer: Optimizer, steps_per_epoch: int, epochs: int, warmup: int, *, step_epochs: int = 2,
         gamma: float = 0.5) -> tuple[sched.LRScheduler, Interval]:
    """The rate times ``gamma`` every ``step_epochs`` epochs."""
    return sched.StepLR(optimizer, step_size=step_epochs, gamma=gamma), "epoch"


@SCHEDULERS.register("cosine")
def cosine(optimizer: Optimizer, steps_per_epoch: int, epochs: int, warmup: int, *,
           min_lr_ratio: float = 0.01) -> tuple[sched.LRScheduler, Interval]:
    """Cosine decay, batch by batch, to ``min_lr_ratio`` of the rate at the last step."""
    total = max(1, epochs * steps_per_epoch - warmup)
    eta_min = optimizer.param_groups[0]["lr"] * min_lr_ratio
    return sched.CosineAnnealingLR(optimizer, T_max=total, eta_min=eta_min), "batch"


@SCHEDULERS.register("plateau")
def plateau(optimizer: Optimizer, steps_per_epoch: int, epochs: int, warmup: int, *, factor: float = 0.5,
            patience: int = 1) -> tuple[sched.ReduceLROnPlateau, Interval]:
    """The rate times ``factor`` when validation macro F1 stops rising for ``patience`` epochs."""
    return sched.ReduceLROnPlateau(optimizer, mode="max", factor=factor, patience=patience), "plateau"


@SCHEDULERS.register("onecycle", common=False)  # one-cycle has its own warmup: pct_start
def onecycle(optimizer: Optimizer, steps_per_epoch: int, epochs: int, warmup: int, *,
             pct_start: float = 0.3) -> tuple[sched.LRScheduler, Interval]:
    """Up to the optimizer's rate (its peak) for ``pct_start`` of the run, then down."""
    max_lr = [group["lr"] for group in optimizer.param_groups]
    return sched.OneCycleLR(optimizer, max_lr=max_lr, total_steps=epochs * steps_per_epoch, pct_start=pct_start), "batch"


def build_optimizer(name: str, args: dict, model: nn.Module, lr: float, weight_decay: float) -> Optimizer:
    return OPTIMIZERS.get(name)(model, lr, weight_decay, **args)


def build_schedule(
    name: str, args: dict, optimizer: Optimizer, steps_per_epoch: int, epochs: int
) -> Schedule:
    """The scheduler entry ``name`` with its arguments, after a linear warmup of ``warmup_epochs``
    (every entry that takes it), applied here once for all."""
    own, common = SCHEDULERS.split(name, args)
    warmup = round(common.get("warmup_epochs", 0.0) * steps_per_epoch)
    main, interval = SCHEDULERS.get(name)(optimizer, steps_per_epoch, epochs, warmup, **own)
    return Schedule(optimizer, main, interval, warmup)


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
