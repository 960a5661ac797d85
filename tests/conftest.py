"""Shared fixtures: tiny real image data on disk and tiny study files for it."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import yaml
from PIL import Image

optuna.logging.set_verbosity(optuna.logging.WARNING)
CLASSES = ("c0_red", "c1_green", "c2_blue")  # sorted order = dominant channel
PER_CLASS = 40


def draw(label: int, rng: np.random.Generator, size: int = 16) -> np.ndarray:
    """A noisy image whose dominant channel is the class: learnable in a few steps."""
    image = rng.integers(0, 90, size=(size, size, 3), dtype=np.uint8)
    image[..., label] = rng.integers(150, 256, size=(size, size), dtype=np.uint8)
    return image


@pytest.fixture(scope="session")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An imagefolder (3 classes x 40 images, 16 px) plus labels.csv grouping images in pairs."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rows = []
    for label, name in enumerate(CLASSES):
        (root / name).mkdir()
        for i in range(PER_CLASS):
            path = root / name / f"{i:02d}.png"
            Image.fromarray(draw(label, rng)).save(path)
            rows.append({"path": f"{name}/{i:02d}.png", "label": name, "group": f"{name}-{i // 2}"})
    (root / ".DS_Store").write_text("junk")  # hidden files are skipped
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "group"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def tiny_study(root: Path, tmp_path: Path, **changes: Any) -> dict[str, Any]:
    """A study dict over the tiny data that trains in about a second per trial on CPU."""
    study: dict[str, Any] = {
        "name": "tiny",
        "seed": 0,
        "sampler": {"type": "random"},
        "pruner": {"type": "none"},
        "budget": {"n_trials": 2, "max_epochs": 2, "patience": 2},
        "data": {
            "format": "csv",
            "root": str(root),
            "group_column": "group",
            "image_size": 16,
            "normalization": "half",
        },
        "cv": {"folds": 2, "seed": 0},
        "search": {
            "backbone": "test_resnet",
            "optimizer": "adamw",
            "lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True},
            "batch_size": 16,
            "loss": {"choose": ["cross_entropy", "focal"]},
        },
        "output_dir": str(tmp_path / "runs"),
    }
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = study
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return study


def write_study(path: Path, study: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


@pytest.fixture
def study_file(image_root: Path, tmp_path: Path) -> Path:
    return write_study(tmp_path / "tiny.yaml", tiny_study(image_root, tmp_path))


@pytest.fixture(autouse=True)
def _no_env_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests choose their storage explicitly; a developer's HPO_STORAGE must not leak in."""
    monkeypatch.delenv("HPO_STORAGE", raising=False)


@pytest.fixture(autouse=True)
def _no_env_trackers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's MLflow server or W&B account must not receive the tests' runs."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _no_outage_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no database error seen by this process (it pauses stale sweeps)."""
    import hpo.storage.retry

    monkeypatch.setattr(hpo.storage.retry, "_last_transient_error", -float("inf"))


@pytest.fixture(scope="session", autouse=True)
def decoded_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The decoded-image cache of the whole run (worker processes inherit it): not ~/.cache."""
    root = tmp_path_factory.mktemp("hpo-cache")
    os.environ["HPO_CACHE"] = str(root)
    return root


POSTGRES_URL = os.environ.get("HPO_TEST_POSTGRES_URL")


def pytest_report_header(config: pytest.Config) -> str:
    return f"HPO_TEST_POSTGRES_URL={'set' if POSTGRES_URL else 'unset'}"


@pytest.fixture
def postgres_url() -> str:
    """The PostgreSQL that .ci/run provides; a visible skip without it."""
    if not POSTGRES_URL:
        pytest.skip("HPO_TEST_POSTGRES_URL is not set: no PostgreSQL to test against")
    return POSTGRES_URL


@dataclass(frozen=True)
class FinishedStudy:
    """A finished tiny study on SQLite, shared read-only by the review/export/train/predict tests."""

    path: Path  # the study file
    url: str
    spec: Any  # StudySpec
    folder: Path


@pytest.fixture(scope="session")
def finished_study(image_root: Path, tmp_path_factory: pytest.TempPathFactory) -> FinishedStudy:
    from hpo.config import parse_spec
    from hpo.run import run_study

    folder = tmp_path_factory.mktemp("finished")
    # A learning rate low enough that one or two epochs leave the models imperfect, so the F1s
    # differ between trials and folds (and a reproduction has something to match).
    raw = tiny_study(image_root, folder, budget__n_trials=3, search__lr={"low": 5e-4, "high": 2e-3, "log": True})
    path = write_study(folder / "tiny.yaml", raw)
    url = f"sqlite:///{folder / 'tiny.db'}"
    spec = parse_spec(raw)
    run_study(spec, url, live=False)
    return FinishedStudy(path, url, spec, folder)


@pytest.fixture(scope="session")
def mask_archive(tmp_path_factory: pytest.TempPathFactory):
    """A small archive in the mask competition's layout (24 people x 7 photos, one corrupt)."""
    from tests.data.mask_archive import write_mask_archive

    return write_mask_archive(tmp_path_factory.mktemp("mask"))


def tiny_mask_study(root: Path, tmp_path: Path, **changes: Any) -> dict[str, Any]:
    """A mask-format study that trains in seconds on the generated archive."""
    study = tiny_study(root, tmp_path, **changes)
    study["name"] = "tinymask"
    study["data"] = {"format": "mask", "root": str(root), "corrupt": "skip", "crop": [56, 48],
                     "image_size": 32, "normalization": "half", **study["data"].get("_mask", {})}
    study["budget"] = {"n_trials": 2, "max_epochs": 1, "patience": 1}
    study["cv"] = {"folds": 3, "seed": 0}
    study["search"].update({"lr": 3e-3, "batch_size": 32, "head": {"choices": ["single", "factorized"]},
                            "labels": {"age_boundary": {"choices": [58, 60]}}, "sampling": "weighted"})
    return study
