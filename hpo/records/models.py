"""The fold models of the study's best complete trials, kept in its artifact store for the
ensemble (``models.keep`` in the study file; 0 keeps none).

A completing trial that may enter the best ``keep`` writes its fold checkpoints to the store
first; then, under the study lock, the study's list of kept trials (a study attribute) takes it
in and drops what fell out of the top; last, the dropped trials' checkpoints are removed. So a
listed member is always whole (it was written before it was listed), and none is removed while
listed, whatever the number of workers finishing at once; a worker killed mid-write leaves an
unlisted file at worst. Each checkpoint's SHA-256 is listed with it: a damaged one is found
before it is used.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna

from hpo import keys
from hpo.train.checkpoint import save_checkpoint
from hpo.train.config import TrainConfig
from hpo.train.results import FoldResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    fold: int
    artifact_id: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class KeptTrial:
    trial: int
    value: float
    checkpoints: list[Checkpoint]

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> KeptTrial:
        return cls(int(raw["trial"]), float(raw["value"]), [Checkpoint(**c) for c in raw["checkpoints"]])

    def to_dict(self) -> dict[str, Any]:
        return {"trial": self.trial, "value": self.value, "checkpoints": [asdict(c) for c in self.checkpoints]}

    @property
    def bytes(self) -> int:
        return sum(c.bytes for c in self.checkpoints)


def kept(study: optuna.Study) -> list[KeptTrial]:
    """The trials whose fold models are kept, best first."""
    return [KeptTrial.from_dict(raw) for raw in study.user_attrs.get(keys.KEPT_MODELS, [])]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def may_enter(study: optuna.Study, value: float, keep: int) -> bool:
    """Whether a trial of ``value`` could be among the best ``keep`` (read without the lock: the
    lock's step decides; this only spares writing checkpoints that cannot stay)."""
    current = kept(study)
    return keep > 0 and (len(current) < keep or value > min(k.value for k in current))


def stage_fold(folder: Path, trial: int, fold: FoldResult, cfg: TrainConfig, classes: tuple[str, ...],
               factors: tuple[tuple[str, int], ...]) -> Path:
    """Write a finished fold's best-epoch weights to ``folder`` (the trial's staging folder), as
    a checkpoint `hpo predict` loads, and let go of them in memory."""
    path = Path(folder) / f"trial{trial}-fold{fold.fold}.pt"
    save_checkpoint(path, cfg, classes, fold.best_state, factors,
                    {"trial": trial, "fold": fold.fold, "epoch": fold.best_epoch, "f1": round(fold.best_f1, 5)})
    fold.best_state = None
    return path


def upload_fold_models(trial: optuna.Trial, store, staged: dict[int, Path]) -> list[Checkpoint]:  # noqa: ANN001
    """Write a trial's staged fold checkpoints into the artifact store."""
    written = []
    for fold, path in sorted(staged.items()):
        # Written into the store, not attached to the trial as Optuna's artifacts are: a trial's
        # artifact list cannot shrink, and these are removed when the trial drops out.
        artifact = f"trial{trial.number}-fold{fold}-{uuid.uuid4().hex}.pt"
        with path.open("rb") as handle:
            store.write(artifact, handle)
        written.append(Checkpoint(fold, artifact, sha256(path), path.stat().st_size))
    return written


def keep_if_best(study: optuna.Study, store, entry: KeptTrial, keep: int,  # noqa: ANN001
                 lock: Callable[[], AbstractContextManager] = nullcontext) -> bool:
    """Under the study lock: the kept list with ``entry`` in it, cut to the best ``keep``; then
    the checkpoints of what was cut (``entry``'s own, if it did not make it) are removed.
    Returns whether ``entry`` stays."""
    with lock():
        candidates = [k for k in kept(study) if k.trial != entry.trial] + [entry]
        ranked = sorted(candidates, key=lambda k: (-k.value, k.trial))
        top, dropped = ranked[:keep], ranked[keep:]
        study.set_user_attr(keys.KEPT_MODELS, [k.to_dict() for k in top])
    for gone in dropped:
        remove(store, gone)
    return entry in top


def remove(store, entry: KeptTrial) -> None:  # noqa: ANN001
    """Delete a trial's kept checkpoints (already off the list); a file already gone is fine."""
    for checkpoint in entry.checkpoints:
        try:
            store.remove(checkpoint.artifact_id)
        except Exception as e:  # noqa: BLE001 - a missing file is what we want; others are logged
            log.warning("trial %d fold %d: kept checkpoint %s not removed (%s)", entry.trial, checkpoint.fold,
                        checkpoint.artifact_id, e)
