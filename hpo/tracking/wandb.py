"""Weights & Biases (``tracking.wandb`` in the study file, or ``hpo run --tracker wandb``): one run
per trial, grouped by study::

    project <project>, group <study>, job_type trial
      trial-0007    config: the trial's parameters, and the full TrainConfig under ``train``, worker,
                    device; curves fold0/train_loss, fold0/val_loss, fold0/val_macro_f1,
                    fold0/val_accuracy, fold0/lr, fold0/images_per_second, fold0/data_wait, fold1/...
                    (x axis: epoch); summary: value, fold<k>/best_macro_f1, f1_class_<i>, state,
                    prune_reason

One run per trial, not per fold: W&B compares runs, and a trial's parameters and value belong to
one row of its runs table, its parallel-coordinates and its group. The folds are namespaces of
that run: the workspace shows one section per fold, and each panel (fold0/val_macro_f1) holds a
curve per trial against ``epoch``, so the trials are compared fold by fold and a pruned trial's
curve ends where it was stopped.

``mode`` is the argument, else ``$WANDB_MODE``, else offline: online needs an account and a key,
and a study must not fail for want of one. Offline runs stay under ``dir``/wandb until
``wandb sync``. Each run is its own object (``reinit="create_new"``), used through its methods,
never the global ``wandb.log``, so nothing is shared between trials.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hpo.settings import settings
from hpo.tracking.base import TRACKERS, Tracker, import_extra, worker_and_device
from hpo.train.config import TrainConfig
from hpo.train.results import EpochResult, FoldResult

MODES = ("offline", "online", "disabled")


class WandbTracker(Tracker):
    def __init__(self, study: str, project: str, mode: str | None, folder: Path) -> None:
        self.wandb = import_extra("wandb")  # here, not in a hook: a missing package fails the start
        self.study, self.project, self.mode, self.folder = study, project, mode, folder
        self.run: Any = None  # the trial's wandb Run
        self.per_class: list[list[float]] = []

    def trial_started(self, trial: int, params: dict[str, Any], config: TrainConfig) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.per_class = []
        # console off: W&B must not capture the terminal that hpo's progress display draws on.
        quiet = self.wandb.Settings(silent=True, console="off")
        self.run = self.wandb.init(
            project=self.project, group=self.study, job_type="trial", name=f"trial-{trial:04d}",
            dir=str(self.folder), mode=self.mode or settings().wandb_mode or "offline",
            config={**params, "train": config.to_dict(), "study": self.study, "trial": trial,
                    **worker_and_device()},
            reinit="create_new", settings=quiet,
        )
        self.run.define_metric("epoch")
        self.run.define_metric("fold*", step_metric="epoch")

    def epoch(self, trial: int, result: EpochResult) -> None:
        values = {"train_loss": result.train_loss, "val_loss": result.val_loss,
                  "val_macro_f1": result.macro_f1, "val_accuracy": result.accuracy, "lr": result.lr,
                  "images_per_second": result.images_per_second, "data_wait": result.data_wait}
        self.run.log({"epoch": result.epoch, **{f"fold{result.fold}/{k}": v for k, v in values.items()
                                                if not math.isnan(v)}})  # no validation on all data

    def fold_ended(self, trial: int, result: FoldResult, patience: int | None) -> None:
        self.run.summary[f"fold{result.fold}/best_macro_f1"] = result.best_f1
        if result.per_class_f1:
            self.per_class.append(result.per_class_f1)

    def trial_ended(self, trial: int, state: str, value: float | None, reason: str | None) -> None:
        run, self.run = self.run, None
        summary: dict[str, Any] = {"state": state, "value": value,
                                   "prune_reason": reason if state == "PRUNED" else None,
                                   "error": reason if state == "FAIL" else None}
        classes = zip(*self.per_class, strict=True)  # each class's F1 over the folds that ended
        summary.update({f"f1_class_{i}": sum(c) / len(c) for i, c in enumerate(classes)})
        run.summary.update({k: v for k, v in summary.items() if v is not None})
        run.finish(exit_code=1 if state == "FAIL" else 0)  # pruned is not failed


@TRACKERS.register("wandb", extra="wandb", choices={"mode": MODES})
def wandb(study: str, *, project: str = "hpo", mode: str | None = None, dir: str = "runs/wandb") -> Tracker:
    """Weights & Biases: a run per trial in group <study>, fold curves per fold; offline unless told."""
    return WandbTracker(study, project, mode, Path(dir).expanduser())
