"""Training of one fold: the epoch loop, evaluation and early stopping. Knows nothing of Optuna:
per-epoch results go to a callback, which may raise to stop the run (the pruner does)."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
from torch import nn

from hpo.data.augment import build_pipeline
from hpo.data.batch_augment import BatchAugment, split_ops
from hpo.data.loader import train_loader
from hpo.data.prefetch import on_device, side_stream, to_input
from hpo.errors import TrainingDiverged
from hpo.train.compiling import compile_backend, compiled  # noqa: F401 - compile_backend re-exported
from hpo.train.config import TrainConfig
from hpo.train.losses import build_criterion
from hpo.train.mixing import Mixer
from hpo.train.models import build_freeze, create_model, to_device
from hpo.train.optim import Schedule, build_optimizer, build_schedule, current_lr
from hpo.train.results import EpochResult, FoldData, FoldResult  # noqa: F401 - re-exported


class WaitClock:
    """Adds up in ``waited`` the seconds the consumer of ``timed(items)`` spent in ``next()``: the
    time the training loop waited for its loader's batches (loader-bound when a large share).
    The clock does not hold the iterator: a traceback through the loop must not keep a loader
    alive."""

    def __init__(self) -> None:
        self.waited = 0.0

    def timed(self, items: Iterable) -> Iterator:
        items = iter(items)
        while True:
            started = time.perf_counter()
            try:
                item = next(items)
            except StopIteration:
                return
            finally:
                self.waited += time.perf_counter() - started
            yield item


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_for(
    device: torch.device,
) -> tuple[Callable[[], contextlib.AbstractContextManager], torch.amp.GradScaler | None]:
    """Mixed precision on CUDA (bf16 where supported, else fp16 with a scaler); fp32 on CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext, None
    if torch.cuda.is_bf16_supported():
        return partial(torch.autocast, "cuda", dtype=torch.bfloat16), None
    return partial(torch.autocast, "cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")


class Stepper:
    """Backward passes and optimizer steps, with gradient accumulation: every ``accumulate``
    batches make one optimizer step (and one scheduler step), each batch's loss scaled by the
    size of its group, so the gradient is that of one batch ``accumulate`` times larger (for
    models without batch statistics; BatchNorm still sees the small batches). The last group
    of an epoch may be shorter and is scaled by its own size.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                 accumulate: int, batches_per_epoch: int, clip: float = 0.0) -> None:
        self.optimizer, self.scaler, self.clip = optimizer, scaler, clip
        self.accumulate, self.batches = max(1, accumulate), batches_per_epoch
        self.on_step: Callable[[], None] = lambda: None

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.batches // self.accumulate)

    def backward(self, loss: torch.Tensor, batch: int) -> None:
        """``batch``: the batch's index in the epoch."""
        start = batch - batch % self.accumulate
        group = min(self.accumulate, self.batches - start)
        scaled = loss / group if group > 1 else loss
        if self.scaler is None:
            scaled.backward()
        else:
            self.scaler.scale(scaled).backward()
        if batch - start == group - 1:
            if self.clip:  # on the true gradient: unscaled first (read on the device, no sync)
                if self.scaler is not None:
                    self.scaler.unscale_(self.optimizer)
                params = [p for group in self.optimizer.param_groups for p in group["params"]]
                torch.nn.utils.clip_grad_norm_(params, self.clip)
            if self.scaler is None:
                self.optimizer.step()
            else:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.on_step()


def host_batches(images: np.ndarray, indices: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
    """``images[indices]`` batch by batch, each gathered from the (memory-mapped) array."""
    for start in range(0, len(indices), batch_size):
        yield torch.from_numpy(images[indices[start : start + batch_size]])


def kept_on_gpu(images: np.ndarray, indices: np.ndarray, device: torch.device) -> torch.Tensor | None:
    """``images[indices]`` copied to the GPU once, for the fold, where they take at most a
    twentieth of its free memory (the mask competition's 3,800 validation photos at 224 px:
    570 MB): each epoch's evaluation then reads them there instead of gathering them from the
    memory map and copying them from pageable memory again, host work that the GPU's inference
    of the same images would otherwise wait on. None elsewhere."""
    if device.type != "cuda" or not len(indices) or len(indices) * images[0].nbytes > torch.cuda.mem_get_info(device)[0] // 20:
        return None
    return torch.from_numpy(images[indices]).to(device)


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    device: torch.device,
    mean: torch.Tensor,
    std: torch.Tensor,
    autocast: Callable = contextlib.nullcontext,
) -> torch.Tensor:
    """Logits of uint8 NHWC ``batches`` (on the host or already on the device)."""
    model.eval()
    outputs = []
    for batch in batches:
        with autocast():
            outputs.append(model(to_input(batch, device, mean, std)).float())
    return torch.cat(outputs)


@dataclass
class _Epochs:
    """What a fold's training epochs use, built once per fold."""

    model: nn.Module
    forward: nn.Module  # the model's training forward, compiled when asked
    loader: torch.utils.data.DataLoader
    stepper: Stepper
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    mixer: Mixer
    autocast: Callable[[], contextlib.AbstractContextManager]
    mean: torch.Tensor
    std: torch.Tensor
    device: torch.device
    val_targets: torch.Tensor  # the validation labels, on the device once per fold
    val_images: torch.Tensor | None  # the validation images, on the GPU for the fold when they fit
    side: torch.cuda.Stream | None  # batches are copied on it (on_device)
    augment: BatchAugment | None  # the ops that run on the GPU, in batch
    next_epoch: Iterator | None = None  # the loader's next epoch, set going early (prepare_next)

    def prepare_next(self) -> None:
        """Set the loader's workers on the next epoch's first batches now (while this epoch is
        evaluated), so that the next epoch does not begin by waiting for them."""
        self.next_epoch = iter(self.loader)

    def _this_epoch(self) -> Iterator:
        """The batches prepared early, else a fresh pass. Not kept in a local of train(): a
        traceback through train() would keep the loader's workers alive past close()."""
        batches, self.next_epoch = self.next_epoch or iter(self.loader), None
        return batches

    def train(self) -> tuple[float, float, float]:
        """One pass over the loader, with one host sync: mean training loss, images/second and the
        share of the time spent waiting for batches."""
        loss_sum = torch.zeros((), device=self.device)
        seen, started = 0, time.perf_counter()
        clock = WaitClock()  # the loader's batches only: not their copy or batch ops on the device
        for batch, (x, y) in enumerate(on_device(clock.timed(self._this_epoch()), self.device, self.mean,
                                                 self.std, self.side, self.augment)):
            x, y_mixed, lam = self.mixer(x, y)
            with self.autocast():
                logits = self.forward(x)
                loss = self.criterion(logits, y)
                if lam != 1.0:
                    loss = lam * loss + (1 - lam) * self.criterion(logits, y_mixed)
            self.stepper.backward(loss, batch)
            loss_sum += loss.detach() * len(y)
            seen += len(y)
        loss = float(loss_sum) / max(seen, 1)
        seconds = time.perf_counter() - started
        return loss, seen / seconds, clock.waited / seconds

    def close(self) -> None:
        """Let go of the loader's worker processes and the validation images on the GPU now, not
        when a traceback that references this object (a pruned fold, a failed epoch) is collected."""
        del self.loader, self.next_epoch
        self.val_images = None

    def evaluate(self, data: FoldData, batch_size: int) -> tuple[np.ndarray, float]:
        """Class probabilities of the validation side (float32, samples x classes), and the
        validation loss."""
        size = max(256, 2 * batch_size)
        batches = self.val_images.split(size) if self.val_images is not None else host_batches(
            data.images, data.val_idx, size)
        logits = predict_logits(self.model, batches, self.device, self.mean, self.std, self.autocast)
        val_loss = float(nn.functional.cross_entropy(logits, self.val_targets))
        return logits.softmax(1).cpu().numpy(), val_loss


def fold_batches(cfg: TrainConfig, images: np.ndarray, labels: np.ndarray, indices: np.ndarray,
                 device: torch.device, seed: int) -> tuple[torch.utils.data.DataLoader, BatchAugment | None]:
    """The fold's training batches: the loader (with the ops that run in its workers) and the
    ops that run on the GPU, in batch, as on_device takes them."""
    in_workers, on_gpu = split_ops(cfg.augment, cfg.augment_on, device)
    loader = train_loader(images, labels, indices, build_pipeline(in_workers, cfg.image_size, seed), cfg.batch_size,
                          seed, device, cfg.sampling)
    return loader, BatchAugment(on_gpu, device, seed) if on_gpu else None


def _epochs(cfg: TrainConfig, data: FoldData, device: torch.device, seed: int) -> tuple[_Epochs, Schedule]:
    """The fold's model, loader, optimizer with its schedule, loss and mixing; and the schedule."""
    model = to_device(create_model(cfg.backbone, cfg.pretrained, data.num_classes, cfg.head, data.factors,
                                   cfg.image_size), device)
    optimizer = build_optimizer(cfg.optimizer.name, cfg.optimizer.args, model, cfg.lr, cfg.weight_decay)
    loader, augment = fold_batches(cfg, data.images, data.fit_labels, data.train_idx, device, seed)
    autocast, scaler = autocast_for(device)
    stepper = Stepper(optimizer, scaler, cfg.accumulate, len(loader), cfg.grad_clip)
    schedule = build_schedule(cfg.scheduler.name, cfg.scheduler.args, optimizer, stepper.steps_per_epoch,
                              cfg.max_epochs)
    stepper.on_step = schedule.after_batch
    counts = np.bincount(data.fit_labels[data.train_idx], minlength=data.num_classes)
    criterion = build_criterion(cfg.loss.name, cfg.loss.args, cfg.class_weights, counts, device,
                                data.factors, cfg.head)
    mean = torch.tensor(cfg.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, device=device).view(1, 3, 1, 1)
    epochs = _Epochs(model, compiled(model, cfg), loader, stepper, criterion,
                     Mixer(cfg.mixup, cfg.cutmix, seed), autocast, mean, std, device,
                     torch.as_tensor(data.val_labels, device=device), kept_on_gpu(data.images, data.val_idx, device),
                     side_stream(device), augment)
    return epochs, schedule


def fit_fold(
    cfg: TrainConfig,
    data: FoldData,
    device: torch.device,
    fold: int = 0,
    on_epoch: Callable[[EpochResult], None] | None = None,
    keep_best_state: bool = False,
    into: FoldResult | None = None,
) -> FoldResult:
    """Train one fold for up to ``cfg.max_epochs`` epochs, keeping the best epoch by macro F1.

    With an empty ``data.val_idx`` (a final model on all data) every epoch is trained, nothing is
    evaluated, and the last epoch's weights are kept. ``into`` is filled in place, so a caller
    that stops the run by raising from ``on_epoch`` keeps the epochs done. Raises TrainingDiverged
    when the training loss is not finite.
    """
    seed = cfg.seed + fold
    seed_everything(seed)
    epochs, schedule = _epochs(cfg, data, device, seed)
    freeze = build_freeze(cfg.freeze.name, cfg.freeze.args)
    result = into if into is not None else FoldResult(fold)
    result.val_labels = data.val_labels  # a gather from the whole set: once per fold, not per epoch
    result.val_index = data.val_idx
    validating, stale_epochs, nan = len(data.val_idx) > 0, 0, float("nan")
    try:
        for epoch in range(cfg.max_epochs):
            epochs.model.train()
            frozen = freeze.apply(epochs.model, epoch)
            train_loss, throughput, data_wait = epochs.train()
            if not np.isfinite(train_loss):
                raise TrainingDiverged(f"training loss became {train_loss} in fold {fold} epoch {epoch}")
            if epoch + 1 < cfg.max_epochs:
                epochs.prepare_next()
            val_loss, macro_f1, accuracy = nan, nan, nan
            if validating:
                val_loss, macro_f1, accuracy = _score_epoch(epochs, data, cfg.batch_size, epoch, result,
                                                            keep_best_state)
                stale_epochs = 0 if result.best_epoch == epoch else stale_epochs + 1
            result.history.append(EpochResult(fold, epoch, train_loss, val_loss, macro_f1, accuracy,
                                              current_lr(epochs.stepper.optimizer), throughput, frozen,
                                              stale_epochs, data_wait))
            if on_epoch is not None:
                on_epoch(result.history[-1])  # may raise to stop the run (pruning)
            if validating and cfg.patience is not None and stale_epochs >= cfg.patience:
                result.stopped_early = epoch
                break
            schedule.after_epoch(macro_f1 if validating else None)
    finally:
        epochs.close()
    if not validating and keep_best_state:
        result.best_state, result.best_epoch = _cpu_state(epochs.model), cfg.max_epochs - 1
    if data.held_out_idx is not None and len(data.held_out_idx) and result.best_state is not None:
        epochs.model.load_state_dict(result.best_state)
        result.held_out_probabilities = predict_views(epochs, data.images, data.held_out_idx, cfg.batch_size)
    return result


def predict_views(epochs: _Epochs, images: np.ndarray, indices: np.ndarray, batch_size: int) -> np.ndarray:
    """Probabilities (2, samples, classes) of ``images[indices]`` as they are and flipped left to
    right, the two views `hpo predict --tta` averages."""
    size = max(256, 2 * batch_size)
    views = []
    for flip in (False, True):
        batches = (torch.flip(b, dims=[2]) if flip else b for b in host_batches(images, indices, size))  # NHWC
        logits = predict_logits(epochs.model, batches, epochs.device, epochs.mean, epochs.std, epochs.autocast)
        views.append(logits.softmax(1).cpu().numpy())
    return np.stack(views)


def _score_epoch(epochs: _Epochs, data: FoldData, batch_size: int, epoch: int, result: FoldResult,
                 keep_best_state: bool) -> tuple[float, float, float]:
    """The epoch's validation loss, macro F1 and accuracy; ``result`` keeps the epoch (its
    predictions, per-class F1 and, if asked, weights) when it is the best so far."""
    probabilities, val_loss = epochs.evaluate(data, batch_size)
    predicted = probabilities.argmax(1)
    labels_all = list(range(data.num_classes))
    macro_f1 = float(f1_score(result.val_labels, predicted, average="macro", labels=labels_all, zero_division=0))
    accuracy = float(accuracy_score(result.val_labels, predicted))
    if macro_f1 > result.best_f1:
        result.best_f1, result.best_epoch, result.best_accuracy = macro_f1, epoch, accuracy
        result.per_class_f1 = f1_score(
            result.val_labels, predicted, average=None, labels=labels_all, zero_division=0
        ).tolist()
        result.best_predictions, result.best_probabilities = predicted, probabilities
        if keep_best_state:
            result.best_state = _cpu_state(epochs.model)
    return val_loss, macro_f1, accuracy


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
