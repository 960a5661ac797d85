"""`hpo train --config`: final models from an export, saved with their config for `hpo predict`.

Two modes:

- ``folds``: the K fold models of every exported trial, on the study's own folds (same data,
  same plan, same seeds as the trial), kept for a soft-voting ensemble. Each fold's validation F1
  is measured again, so the run shows whether it reproduces the exported F1.
- ``full``: one model per exported trial on all the data, for the median best epoch count + 1.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import yaml

from hpo.data.augment import OPS
from hpo.data.cache import decoded
from hpo.data.folds import iter_folds, plan_digest
from hpo.data.sampling import SAMPLING
from hpo.data.table import ImageTable
from hpo.errors import ConfigError, DataError
from hpo.export import Export, ExportedTrial
from hpo.study import prepare
from hpo.train.checkpoint import save_checkpoint
from hpo.train.config import AUGMENT_ON, TrainConfig
from hpo.train.loop import fit_fold
from hpo.train.losses import CLASS_WEIGHTS, LOSSES
from hpo.train.models import FREEZE, check_backbone
from hpo.train.optim import OPTIMIZERS, SCHEDULERS
from hpo.train.results import EpochResult, FoldData, FoldResult

MANIFEST = "final.yaml"
Mode = Literal["folds", "full"]


@dataclass(frozen=True)
class TrainedModel:
    file: str
    trial: int
    fold: int | None  # None: trained on all data
    epochs: int
    f1: float | None  # validation macro F1 of the kept epoch (fold models)


@dataclass(frozen=True)
class FinalResult:
    out: Path
    mode: Mode
    models: list[TrainedModel]

    def cv_f1(self, trial: int) -> list[float]:
        return [m.f1 for m in self.models if m.trial == trial and m.f1 is not None]


def full_data_config(cfg: TrainConfig, best_epochs: list[int]) -> TrainConfig:
    """All data, no validation: train for the epoch count the folds found best."""
    epochs = int(np.median(best_epochs)) + 1 if best_epochs else cfg.max_epochs
    return dataclasses.replace(cfg, max_epochs=epochs, patience=None)


def train_final(
    export: Export,
    out: Path,
    mode: Mode = "folds",
    device: torch.device | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    on_epoch: Callable[[ExportedTrial, EpochResult], None] | None = None,
) -> FinalResult:
    """Train the exported trials' final models into ``out`` (written whole or not at all)."""
    from hpo.system import pick_device

    device = device or pick_device()
    out = Path(out)
    check_out(out)
    for exported in export.trials:
        check_config(exported.config, f"trial {exported.trial}")
    spec = export.study_spec(overrides)
    table, plan = prepare(spec)
    if table.fingerprint() != export.data_fingerprint or plan_digest(plan) != export.fold_plan:
        raise DataError(
            f"the data at {spec.data.options.get('root', spec.data.format)} is not the data study"
            f" {export.study!r} was run on (fingerprint {table.fingerprint()} != {export.data_fingerprint});"
            " point --set data.root=... at that data"
        )
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    models: list[TrainedModel] = []
    for exported in export.trials:
        callback = (lambda e, t=exported: on_epoch(t, e)) if on_epoch else None
        cfg = exported.config
        images = decoded(table, cfg.image_size, cfg.crop)
        train_labels = table.training_labels(cfg.label_options)
        if mode == "folds":
            for fold, train_idx, val_idx in iter_folds(plan):
                data = FoldData(images, table.labels, train_idx, val_idx, table.num_classes,
                                train_labels, table.factors)
                result = fit_fold(cfg, data, device, fold, callback, keep_best_state=True)
                models.append(_save(partial, exported, cfg, table, result, fold))
        else:
            cfg = full_data_config(cfg, exported.best_epochs)
            everything = np.arange(len(table))
            data = FoldData(images, table.labels, everything, everything[:0], table.num_classes,
                            train_labels, table.factors)
            result = fit_fold(cfg, data, device, 0, callback, keep_best_state=True)
            models.append(_save(partial, exported, cfg, table, result, None))
    manifest = {"study": export.study, "mode": mode, "classes": list(table.classes), "device": str(device),
                "models": [dataclasses.asdict(m) for m in models]}
    (partial / MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=False))
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return FinalResult(out, mode, models)


def check_out(out: Path) -> None:
    """``out`` is replaced at the end: only ever a folder an earlier hpo train wrote, or none."""
    if out.exists() and not (out.is_dir() and ((out / MANIFEST).is_file() or not any(out.iterdir()))):
        raise ConfigError(f"--out {out} exists and is not a folder hpo train wrote; give a new or empty folder")


def check_config(cfg: TrainConfig, where: str) -> None:
    """An export's config names things this install has (an export is a file someone may edit)."""
    check_backbone(cfg.backbone, f"{where}: backbone")
    for registry, name in ((FREEZE, cfg.freeze.name), (OPTIMIZERS, cfg.optimizer.name), (SCHEDULERS, cfg.scheduler.name),
                           (LOSSES, cfg.loss.name), (CLASS_WEIGHTS, cfg.class_weights), (SAMPLING, cfg.sampling)):
        registry.get(name, where)
    for op in cfg.augment:
        OPS.get(op.name, f"{where}: augment")
    if cfg.augment_on not in AUGMENT_ON:
        raise ConfigError(f"{where}: augment_on {cfg.augment_on!r}; use one of: {', '.join(AUGMENT_ON)}")


def _save(folder: Path, exported: ExportedTrial, cfg: TrainConfig, table: ImageTable,
          result: FoldResult, fold: int | None) -> TrainedModel:
    name = f"trial{exported.trial}-{'full' if fold is None else f'fold{fold}'}.pt"
    f1 = None if fold is None else round(result.best_f1, 5)
    assert result.best_state is not None
    save_checkpoint(folder / name, cfg, table.classes, result.best_state, table.factors,
                    {"trial": exported.trial, "fold": fold, "epoch": result.best_epoch, "f1": f1})
    return TrainedModel(name, exported.trial, fold, result.best_epoch + 1, f1)
