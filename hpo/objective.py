"""The Optuna objective: one trial = the trial's config trained on every fold.

Reporting (see :mod:`hpo.strategy`): every epoch's validation macro F1 goes to the pruner at step
``fold * max_epochs + epoch`` (the Wilcoxon pruner instead gets each fold's best F1 at step
``fold``), so a bad trial can be stopped already in its first fold. The trial's value is the mean
over folds of each fold's best macro F1.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch

from hpo import keys
from hpo.config import StudySpec, trial_config
from hpo.data.cache import decoded
from hpo.data.folds import held_out, iter_folds, plan_digest
from hpo.data.table import ImageTable
from hpo.errors import TrainingDiverged
from hpo.records.artifacts import TrialReview, artifact_location, open_artifact_store, upload_review
from hpo.records.models import KeptTrial, keep_if_best, may_enter, stage_fold, upload_fold_models
from hpo.records.note import save_trial_note
from hpo.records.oof import upload_oof
from hpo.strategy import asks_after_fold, report_step, reports_per_fold
from hpo.system import ThreadGovernor, pick_device, release_device_memory
from hpo.tracking import build_trackers
from hpo.train.config import TrainConfig
from hpo.train.loop import fit_fold
from hpo.train.results import EpochResult, FoldData, FoldResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochEvent:
    """What the progress display hears after each epoch."""

    trial: int
    result: EpochResult
    folds: int


class Objective:
    def __init__(
        self,
        spec: StudySpec,
        table: ImageTable,
        plan: np.ndarray,
        device: torch.device | None = None,
        on_epoch: Callable[[EpochEvent], None] | None = None,
        lock: Callable[[], AbstractContextManager] = nullcontext,
    ) -> None:
        """``lock``: the study lock (hpo.study.StudyHandle.lock), which guards the kept models."""
        self.spec, self.table, self.plan = spec, table, plan
        self.device = device or pick_device()
        self.on_epoch, self.lock = on_epoch, lock
        self.artifacts = open_artifact_store(artifact_location(spec))
        self.trackers = build_trackers(spec)
        # On the CPU, torch's threads follow the cores other jobs leave free (hpo.system).
        self.threads = ThreadGovernor() if self.device.type == "cpu" else None

    def __call__(self, trial: optuna.Trial) -> float:
        cfg = trial_config(trial, self.spec)
        if self.threads is not None:
            self.threads.adjust()
        trial.set_user_attr(keys.CONFIG, cfg.to_dict())  # the full recipe, fixed values included
        for tracker in self.trackers:
            tracker.trial_started(trial.number, trial.params, cfg)
        outcome: tuple[str, float | None, str | None] = ("FAIL", None, None)
        try:
            value = self._run(trial, cfg)
            outcome = ("COMPLETE", value, None)
            return value
        except optuna.TrialPruned as e:
            outcome = ("PRUNED", None, str(e))
            raise
        except BaseException as e:  # a crash, or the worker being stopped: the trial is retried
            outcome = ("FAIL", None, f"{type(e).__name__}: {e}")
            raise
        finally:
            for tracker in self.trackers:
                tracker.trial_ended(trial.number, *outcome)
            release_device_memory()

    def _run(self, trial: optuna.Trial, cfg: TrainConfig) -> float:
        with tempfile.TemporaryDirectory(prefix=f"hpo-trial{trial.number}-") as staging:  # fold models to keep
            return self._run_in(trial, cfg, Path(staging))

    def _run_in(self, trial: optuna.Trial, cfg: TrainConfig, staging: Path) -> float:
        started = time.perf_counter()
        trial.set_user_attr(
            keys.DEVICE,
            str(self.device) if self.device.type == "cpu" else torch.cuda.get_device_name(self.device),
        )
        folds: list[FoldResult] = []
        out_of_memory = False
        # Artifacts are drawn only for a trial that ended (complete, pruned, diverged, out of
        # memory): a worker being stopped must fail and re-enqueue its trial at once.
        ended = False
        staged: dict[int, Path] = {}
        try:
            self._train_folds(trial, cfg, folds, staging, staged)
            ended = True
        except optuna.TrialPruned:
            ended = True
            raise
        except TrainingDiverged as e:
            ended = True
            trial.set_user_attr(keys.PRUNE_REASON, f"diverged: {e}")
            raise optuna.TrialPruned(f"diverged: {e}") from e
        except torch.OutOfMemoryError:
            ended = out_of_memory = True  # handled below, once the failed step's tensors are released
        finally:
            self._record(trial, folds, time.perf_counter() - started, review=ended)
        if out_of_memory:
            # PRUNED, not FAIL: TPE learns from pruned trials but ignores failed ones, and would
            # keep proposing the configuration that does not fit.
            release_device_memory()
            reason = (f"out of memory: backbone {cfg.backbone}, batch_size {cfg.batch_size},"
                      f" image_size {cfg.image_size} on {self.device}")
            trial.set_user_attr(keys.PRUNE_REASON, reason)
            raise optuna.TrialPruned(reason)
        value = float(np.mean([f.best_f1 for f in folds]))
        self._keep(trial, folds, value, staged)
        return value

    def _keep(self, trial: optuna.Trial, folds: list[FoldResult], value: float, staged: dict[int, Path]) -> None:
        """What a complete trial leaves for the ensemble: its out-of-fold probabilities, and its
        fold models while it is among the best ``models.keep``. A failing store costs them, never
        the trial (the ensemble then leaves the trial out, or `hpo train` rebuilds its models)."""
        try:
            trial.set_user_attr(keys.OOF, upload_oof(
                trial, self.artifacts, folds, self.plan, self.table.labels, self.table.groups,
                self.table.fingerprint(), plan_digest(self.plan), self.table.num_classes))
            keep = self.spec.models.keep
            if staged and may_enter(trial.study, value, keep):
                entry = KeptTrial(trial.number, value, upload_fold_models(trial, self.artifacts, staged))
                keep_if_best(trial.study, self.artifacts, entry, keep, self.lock)
        except Exception as e:  # noqa: BLE001 - for the ensemble; the trial's result matters more
            log.warning("trial %d: out-of-fold predictions or fold models not stored (%s: %s)",
                        trial.number, type(e).__name__, e)

    def _train_folds(self, trial: optuna.Trial, cfg: TrainConfig, folds: list[FoldResult], staging: Path,
                     staged: dict[int, Path]) -> None:
        """Every fold in turn; with ``models.keep``, each finished fold's best weights are
        written to ``staging`` (into ``staged``) at once, not held in memory for the trial."""
        keep = self.spec.models.keep > 0
        holdout = held_out(self.plan)  # each fold's best model predicts them, for the ensemble's estimate
        images = decoded(self.table, cfg.image_size, cfg.crop)
        train_labels = self.table.training_labels(cfg.label_options)
        per_fold = reports_per_fold(self.spec.pruner.type)
        fold_rungs = asks_after_fold(self.spec.pruner.type)
        last = self.spec.cv.folds - 1
        for fold, train_idx, val_idx in iter_folds(self.plan):
            data = FoldData(images, self.table.labels, train_idx, val_idx, self.table.num_classes,
                            train_labels, self.table.factors, holdout)
            folds.append(FoldResult(fold))  # filled as it trains: a pruned fold keeps its epochs
            fit_fold(cfg, data, self.device, fold, self._reporter(trial, cfg.max_epochs, per_fold),
                     keep_best_state=keep or len(holdout) > 0, into=folds[-1])
            if keep and folds[-1].best_state is not None:
                staged[fold] = stage_fold(staging, trial.number, folds[-1], cfg, self.table.classes,
                                          self.table.factors)
            folds[-1].best_state = None  # written above where kept; not held for the trial
            for tracker in self.trackers:
                tracker.fold_ended(trial.number, folds[-1], cfg.patience)
            trial.set_user_attr(keys.FINISHED_FOLDS, [round(f.best_f1, 5) for f in folds])
            if per_fold:
                trial.report(folds[-1].best_f1, fold)
            if (per_fold or fold_rungs) and fold < last:  # after the last fold nothing is left to save
                mean = np.mean([f.best_f1 for f in folds])
                self._prune_if_asked(trial, f"after fold {fold} (F1 {folds[-1].best_f1:.4f}, mean {mean:.4f})")

    def _reporter(self, trial: optuna.Trial, max_epochs: int, per_fold: bool) -> Callable[[EpochResult], None]:
        """After every epoch: trackers, display, progress; and, unless the pruner judges whole
        folds, the report to the pruner, which may stop the trial here."""

        def report(result: EpochResult) -> None:
            if self.threads is not None:
                self.threads.adjust()
            for tracker in self.trackers:
                tracker.epoch(trial.number, result)
            # Visible to `hpo status` and the pool's display, from any machine.
            trial.set_user_attr(keys.PROGRESS, {"fold": result.fold, "epoch": result.epoch,
                                             "f1": round(result.macro_f1, 4)})
            if self.on_epoch is not None:
                self.on_epoch(EpochEvent(trial.number, result, self.spec.cv.folds))
            if per_fold:
                return
            step = report_step(self.spec.pruner.type, result.fold, result.epoch, max_epochs)
            trial.report(result.macro_f1, step)
            self._prune_if_asked(
                trial, f"at step {step} (fold {result.fold} epoch {result.epoch}, F1 {result.macro_f1:.4f})"
            )

        return report

    def _prune_if_asked(self, trial: optuna.Trial, where: str) -> None:
        if trial.should_prune():
            reason = f"{self.spec.pruner.type} pruner {where}"
            trial.set_user_attr(keys.PRUNE_REASON, reason)
            raise optuna.TrialPruned(reason)

    def _record(self, trial: optuna.Trial, folds: list[FoldResult], seconds: float, review: bool) -> None:
        """User attributes for review, kept for pruned trials too (for the folds they trained);
        with ``review``, the artifacts and the trial's note as well."""
        trial.set_user_attr(keys.WALL_SECONDS, round(seconds, 2))
        folds = [f for f in folds if f.history]
        if not folds:
            return
        if review:
            results = TrialReview(self.table.classes, folds)
            if results.has_predictions:
                trial.set_user_attr(keys.CONFUSION_MATRIX, results.confusion().tolist())
                trial.set_user_attr(keys.ARTIFACTS, upload_review(trial, self.artifacts, results))
            save_trial_note(trial, folds, seconds, trial.user_attrs.get(keys.PRUNE_REASON))
        f1 = [f.best_f1 for f in folds]
        trial.set_user_attr(keys.FOLD_F1, [round(v, 5) for v in f1])
        trial.set_user_attr(keys.F1_STD, round(float(np.std(f1)), 5))
        trial.set_user_attr(keys.BEST_EPOCHS, [f.best_epoch for f in folds])
        trial.set_user_attr(
            keys.PER_CLASS_F1, np.mean([f.per_class_f1 for f in folds], axis=0).round(4).tolist()
        )
        trial.set_user_attr(
            keys.IMAGES_PER_SECOND, round(float(np.mean([f.images_per_second for f in folds])), 1)
        )
        trial.set_user_attr(keys.DATA_WAIT, round(float(np.mean([f.data_wait for f in folds])), 3))
