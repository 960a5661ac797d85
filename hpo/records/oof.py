"""A complete trial's out-of-fold predictions, kept in the study's artifact store for the
ensemble: each fold's model (at the epoch the trial kept) on its own validation fold, so every
sample is predicted once by a model that never trained on it.

One compressed ``.npz`` per trial: ``probabilities`` (samples x classes, float16, in the data's
sample order; zero on held-out rows), ``labels`` and ``fold`` (each sample's true class and fold,
``HELD_OUT`` for the samples cv.holdout keeps from every fold), ``held_out`` (folds x 2 views x
held-out samples x classes: each fold model's probabilities of those samples, as they are and
flipped; empty without cv.holdout), ``groups`` (each sample's group, as a number: people are
what a held-out score is resampled by), and the data fingerprint and fold-plan digest they refer to,
which the ensemble checks against the study's.
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from optuna.artifacts import upload_artifact

from hpo.data.folds import HELD_OUT
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
    held_out: np.ndarray | None = None  # (folds, 2, held-out samples, classes); None without cv.holdout
    groups: np.ndarray | None = None  # (samples,): group numbers (records written before them: None)


def gather(folds: list[FoldResult], samples: int, classes: int) -> np.ndarray:
    """The folds' best-epoch probabilities, each row at its sample's place."""
    out = np.full((samples, classes), np.nan, dtype=np.float32)
    for fold in folds:
        out[fold.val_index] = fold.best_probabilities
    return out


def upload_oof(trial: optuna.Trial, store, folds: list[FoldResult], plan: np.ndarray, labels: np.ndarray,  # noqa: ANN001
               groups: np.ndarray, fingerprint: str, plan_digest: str, classes: int) -> str:
    """Store the trial's out-of-fold probabilities (and its fold models' of the held-out
    samples); returns the artifact's id."""
    probabilities = gather(folds, len(plan), classes)
    in_folds = plan != HELD_OUT
    if np.isnan(probabilities[in_folds]).any():
        raise ValueError(f"trial {trial.number}: some samples have no out-of-fold prediction")
    probabilities[~in_folds] = 0.0
    held_out = np.zeros((0,), dtype=np.float16)
    if not in_folds.all():
        if any(f.held_out_probabilities is None for f in folds):
            raise ValueError(f"trial {trial.number}: a fold model did not predict the held-out samples")
        held_out = np.stack([f.held_out_probabilities for f in folds]).astype(np.float16)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / FILE
        np.savez_compressed(path, probabilities=probabilities.astype(np.float16), labels=labels.astype(np.int16),
                            fold=plan.astype(np.int16), held_out=held_out,
                            groups=np.unique(groups, return_inverse=True)[1].ravel().astype(np.int32),
                            fingerprint=np.array(fingerprint), plan_digest=np.array(plan_digest))
        return upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial,
                               mimetype="application/octet-stream")


def read_oof(store, artifact_id: str, trial: int) -> OutOfFold:  # noqa: ANN001
    """A trial's stored out-of-fold probabilities; a missing or unreadable artifact is a DataError."""
    try:
        with store.open_reader(artifact_id) as reader:
            data = np.load(io.BytesIO(reader.read()))
            held_out = data["held_out"].astype(np.float32) if "held_out" in data.files else None
            return OutOfFold(data["probabilities"].astype(np.float32), data["labels"].astype(np.int64),
                             data["fold"].astype(np.int64), str(data["fingerprint"]), str(data["plan_digest"]),
                             held_out if held_out is not None and held_out.size else None,
                             data["groups"].astype(np.int64) if "groups" in data.files else None)
    except Exception as e:  # a missing file, a damaged zip, a missing key: the same fix
        raise DataError(f"trial {trial}: its out-of-fold predictions ({artifact_id}) cannot be read"
                        f" ({type(e).__name__}: {e}); check the study's artifact store (artifacts: /"
                        " HPO_ARTIFACTS), or leave the trial out") from None
