"""TensorBoard (``tracking.tensorboard`` in the study file, or ``hpo run --tensorboard DIR``):
one run per trial and fold::

    DIR/<study>/trial-0007/fold-0     loss/train, loss/val, macro_f1/val, accuracy/val, lr,
                                      images_per_second, data_wait (share of the epoch
                                      spent waiting for batches), schedule/backbone_frozen,
                                      schedule/epochs_without_improvement (x axis: epoch)
    DIR/<study>/trial-0007            hparams (the trial's parameters -> hparam/macro_f1) and
                                      a text "outcome": complete, or pruned where and why

so a pruned trial's curves end where the pruner stopped it, and freezing and early stopping are
visible as their own curves and text events.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hpo.tracking.base import TRACKERS, Tracker
from hpo.train.config import TrainConfig
from hpo.train.results import EpochResult, FoldResult


class TensorBoardTracker(Tracker):
    def __init__(self, folder: Path, study: str) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self._writer_type = SummaryWriter
        self.root = Path(folder).expanduser() / study
        self.writers: dict[int, Any] = {}
        self.params: dict[str, Any] = {}

    def _run(self, trial: int, fold: int | None = None) -> Path:
        run = self.root / f"trial-{trial:04d}"
        return run if fold is None else run / f"fold-{fold}"

    def _fold_writer(self, trial: int, fold: int):  # noqa: ANN202 - a SummaryWriter
        if fold not in self.writers:
            self.writers[fold] = self._writer_type(str(self._run(trial, fold)))
        return self.writers[fold]

    def trial_started(self, trial: int, params: dict[str, Any], config: TrainConfig) -> None:
        self.close()
        # hparams take scalars and strings; the config adds what the trial did not search.
        fixed = {"backbone": config.backbone, "batch_size": config.batch_size, "lr": config.lr,
                 "image_size": config.image_size, "loss": config.loss.name,
                 "optimizer": config.optimizer.name, "accumulate": config.accumulate}
        self.params = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                       for k, v in {**fixed, **params}.items()}

    def epoch(self, trial: int, result: EpochResult) -> None:
        writer = self._fold_writer(trial, result.fold)
        values = {"loss/train": result.train_loss, "loss/val": result.val_loss,
                  "macro_f1/val": result.macro_f1, "accuracy/val": result.accuracy, "lr": result.lr,
                  "images_per_second": result.images_per_second, "data_wait": result.data_wait,
                  "schedule/backbone_frozen": float(result.frozen),
                  "schedule/epochs_without_improvement": float(result.stale_epochs)}
        for tag, value in values.items():
            if not math.isnan(value):  # no validation when training on all data
                writer.add_scalar(tag, value, result.epoch)
        writer.flush()

    def fold_ended(self, trial: int, result: FoldResult, patience: int | None) -> None:
        if result.stopped_early is not None and result.fold in self.writers:
            self.writers[result.fold].add_text(
                "events", f"early stop after epoch {result.stopped_early}: {patience} epochs without"
                f" improvement; best epoch {result.best_epoch} (macro F1 {result.best_f1:.4f})",
                result.stopped_early)

    def trial_ended(self, trial: int, state: str, value: float | None, reason: str | None) -> None:
        from torch.utils.tensorboard.summary import hparams

        writer = self._writer_type(str(self._run(trial)))
        metric = value if value is not None else float("nan")
        for summary in hparams({**self.params, "state": state}, {"hparam/macro_f1": metric}):
            writer.file_writer.add_summary(summary)
        if value is not None:
            writer.add_scalar("hparam/macro_f1", value, 0)
        writer.add_text("outcome", f"{state}" + (f": {reason}" if reason else ""), 0)
        writer.close()
        self.close()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()


@TRACKERS.register("tensorboard")
def tensorboard(study: str, *, folder: str = "runs/tensorboard") -> Tracker:
    """TensorBoard event files: one run per trial and fold under FOLDER/<study> (tensorboard --logdir FOLDER)."""
    return TensorBoardTracker(Path(folder), study)
