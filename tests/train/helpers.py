"""Tiny training inputs shared by the training tests."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from hpo.data.cache import decoded
from hpo.data.folds import fold_indices, make_fold_plan
from hpo.data.formats import load_table
from hpo.train.config import Component, TrainConfig
from hpo.train.loop import FoldData, FoldResult, fit_fold

BASE = TrainConfig(
    backbone="test_resnet",
    pretrained=False,
    freeze=Component("none"),
    optimizer=Component("adamw"),
    lr=3e-3,
    weight_decay=1e-4,
    scheduler=Component("constant"),
    loss=Component("cross_entropy"),
    class_weights="none",
    batch_size=8,
    image_size=16,
    augment=(),
    mixup=0.0,
    cutmix=0.0,
    max_epochs=1,
    patience=None,
    seed=0,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
)


def fold_data(root: Path) -> FoldData:
    table = load_table("imagefolder", {"root": str(root)})
    plan = make_fold_plan(table, 2, seed=0)
    train, val = fold_indices(plan, 0)
    return FoldData(decoded(table, 16), table.labels, train, val, table.num_classes)


def config(**changes) -> TrainConfig:
    return replace(BASE, **changes)


def fit_counting_graphs(cfg: TrainConfig, data: FoldData, device: torch.device, fold: int = 0) -> tuple[int, FoldResult]:
    """``fit_fold``, and how many graphs torch.compile made for it."""
    graphs = torch._dynamo.utils.counters["stats"]
    before = graphs["unique_graphs"]
    result = fit_fold(cfg, data, device, fold)
    return graphs["unique_graphs"] - before, result


__all__ = ["BASE", "config", "fit_counting_graphs", "fold_data", "np"]
