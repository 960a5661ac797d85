"""Per-trial artifacts in an Optuna artifact store, shown by optuna-dashboard.

Every finished trial (complete or pruned after at least one epoch) gets its out-of-fold confusion
matrix (PNG), per-class precision/recall/F1 (CSV) and per-fold learning curves (PNG). The store is
a folder (default ``runs/<study>/artifacts``; with workers on several machines make it a shared
folder) or an S3 bucket (``s3://bucket``, needs boto3), from the study file's ``artifacts:`` key
or ``$HPO_ARTIFACTS``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from sklearn.metrics import confusion_matrix

from hpo.config import StudySpec
from hpo.errors import ConfigError
from hpo.settings import settings
from hpo.train.results import FoldResult

log = logging.getLogger(__name__)
ENV_ARTIFACTS = "HPO_ARTIFACTS"


def artifact_location(spec: StudySpec) -> str:
    """``$HPO_ARTIFACTS``, else the study file's ``artifacts:``, else runs/<study>/artifacts; a
    folder as an absolute path (an ensemble file names it, to be read from elsewhere)."""
    location = settings().artifacts or spec.artifacts or str(spec.outputs / "artifacts")
    return location if "://" in location else str(Path(location).expanduser().absolute())


def check_artifact_store(location: str) -> None:
    """The store can be opened (s3: boto3 and a bucket) or its folder made, without making it
    yet: checking a study writes nothing."""
    if location.startswith("s3://"):
        open_artifact_store(location)
        return
    folder = Path(location).expanduser().absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ConfigError(f"artifacts: cannot make the folder {folder} ({existing} is not a writable folder);"
                          f" set artifacts: or {ENV_ARTIFACTS} to a writable folder")


def open_artifact_store(location: str):  # noqa: ANN201 - an optuna ArtifactStore
    if location.startswith("s3://"):
        bucket = location.removeprefix("s3://").strip("/")
        if not bucket or "/" in bucket:
            raise ConfigError(f"artifacts: {location!r}: give a bucket, s3://<bucket> (no prefix)")
        try:
            from optuna.artifacts import Boto3ArtifactStore

            return Boto3ArtifactStore(bucket)
        except ImportError:
            raise ConfigError("artifacts: s3:// stores need boto3; pip install boto3, or use a shared folder") from None
    path = Path(location).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"artifacts: cannot make the folder {path} ({e.strerror}); set artifacts: or"
                          f" {ENV_ARTIFACTS} to a writable folder") from None
    return FileSystemArtifactStore(str(path))


@dataclass(frozen=True)
class TrialReview:
    """A trial's validation results over the folds it finished."""

    classes: tuple[str, ...]
    folds: list[FoldResult]

    @property
    def y_true(self) -> np.ndarray:
        return np.concatenate([f.val_labels for f in self.folds if f.best_predictions is not None])

    @property
    def y_pred(self) -> np.ndarray:
        return np.concatenate([f.best_predictions for f in self.folds if f.best_predictions is not None])

    @property
    def has_predictions(self) -> bool:
        return any(f.best_predictions is not None for f in self.folds)

    def confusion(self) -> np.ndarray:
        return confusion_matrix(self.y_true, self.y_pred, labels=list(range(len(self.classes))))


def upload_review(trial: optuna.Trial, store, review: TrialReview) -> list[str]:  # noqa: ANN001
    """Draw and upload the trial's artifacts; returns their file names. A failing store costs the
    artifacts, never the trial."""
    from hpo.records.figures import confusion_png, curves_png, per_class_rows, rows_csv

    if not review.has_predictions:
        return []
    folds = f"{len(review.folds)} fold{'s' * (len(review.folds) > 1)}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            files = [
                (confusion_png(review.confusion(), review.classes, folder / "confusion_matrix.png",
                               f"trial {trial.number}: out-of-fold confusion ({folds})"), "image/png"),
                (rows_csv(per_class_rows(review.y_true, review.y_pred, review.classes), folder / "per_class.csv"),
                 "text/csv"),
                (curves_png([f.history for f in review.folds], folder / "learning_curves.png",
                            f"trial {trial.number}: learning curves",
                            [f.stopped_early for f in review.folds]), "image/png"),
            ]
            for path, mimetype in files:
                upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial, mimetype=mimetype)
            return [path.name for path, _ in files]
    except Exception as e:  # noqa: BLE001 - artifacts are for review; the result matters more
        log.warning("trial %d: artifacts not stored (%s: %s)", trial.number, type(e).__name__, e)
        return []
