"""A complete trial's out-of-fold predictions, kept in the study's artifact store for the
ensemble: each fold's model (at the epoch the trial kept) on its own validation fold, so every
sample is predicted once by a model that never trained on it.

One compressed ``.npz`` per trial: ``probabilities`` (samples x classes, float16, in the data's
sample order), ``labels`` and ``fold`` (each sample's true class and fold), and the data fingerprint and fold-plan digest they
refer to, which the ensemble checks against the study's.
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from optuna.artifacts import upload_artifact

from hpo.errors import DataError
from hpo.train.results import FoldResult

FILE = "oof_probabilities.npz"


@dataclass(frozen=True)
class OutOfFold:
    probabilities: np.ndarray  # (samples, classes), float32 once read
    labels: np.ndarray  # (samples,): the true classes
    fold: np.ndarray  # (samples,)
    fingerprint: str
    plan_digest: str


def gather(folds: list[FoldResult], samples: int, classes: int) -> np.ndarray:
    """The folds' best-epoch probabilities, each row at its sample's place."""
    out = np.full((samples, classes), np.nan, dtype=np.float32)
    for fold in folds:
        out[fold.val_index] = fold.best_probabilities
    return out


def upload_oof(trial: optuna.Trial, store, folds: list[FoldResult], plan: np.ndarray, labels: np.ndarray,  # noqa: ANN001
               fingerprint: str, plan_digest: str, classes: int) -> str:
    """Store the trial's out-of-fold probabilities; returns the artifact's id."""
    probabilities = gather(folds, len(plan), classes)
    if np.isnan(probabilities).any():
        raise ValueError(f"trial {trial.number}: some samples have no out-of-fold prediction")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / FILE
        np.savez_compressed(path, probabilities=probabilities.astype(np.float16), labels=labels.astype(np.int16),
                            fold=plan.astype(np.int16),
                            fingerprint=np.array(fingerprint), plan_digest=np.array(plan_digest))
        return upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial,
                               mimetype="application/octet-stream")


def read_oof(store, artifact_id: str, trial: int) -> OutOfFold:  # noqa: ANN001
    """A trial's stored out-of-fold probabilities; a missing or unreadable artifact is a DataError."""
    try:
        with store.open_reader(artifact_id) as reader:
            data = np.load(io.BytesIO(reader.read()))
            return OutOfFold(data["probabilities"].astype(np.float32), data["labels"].astype(np.int64),
                             data["fold"].astype(np.int64),
                             str(data["fingerprint"]), str(data["plan_digest"]))
    except Exception as e:  # a missing file, a damaged zip, a missing key: the same fix
        raise DataError(f"trial {trial}: its out-of-fold predictions ({artifact_id}) cannot be read"
                        f" ({type(e).__name__}: {e}); check the study's artifact store (artifacts: /"
                        " HPO_ARTIFACTS), or leave the trial out") from None
