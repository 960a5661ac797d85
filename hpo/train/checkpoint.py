"""A trained fold model on disk: its weights with the config, classes and label factors that
rebuild it, written by `hpo train` and by the study's kept models, read by `hpo predict`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

import torch

from hpo.train.config import TrainConfig


def save_checkpoint(path: Path, cfg: TrainConfig, classes: tuple[str, ...] | list[str], state: dict[str, Any],
                    factors: tuple[tuple[str, int], ...] = (), meta: dict[str, Any] | None = None) -> None:
    torch.save({"state_dict": state, "config": cfg.to_dict(), "classes": list(classes),
                "factors": [list(f) for f in factors], **(meta or {})}, path)


def load_checkpoint(source: Path | BinaryIO) -> tuple[TrainConfig, list[str], dict[str, Any], tuple[tuple[str, int], ...]]:
    """(config, classes, weights, label factors); any damage raises (many types: unpickling,
    zip, keys), for the caller to name the file."""
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    factors = tuple((str(name), int(size)) for name, size in checkpoint.get("factors", []))
    return TrainConfig.from_dict(checkpoint["config"]), list(checkpoint["classes"]), checkpoint["state_dict"], factors
