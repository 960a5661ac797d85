"""`hpo train --config ensemble.yaml`: the fold models an ensemble lacks (not kept by the study,
or missing or damaged since), trained on the study's folds and seeds as `hpo train` trains an
export, and written into the ensemble file (whole, or not at all)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from hpo.ensemble import Ensemble, read_ensemble, with_files, write_ensemble
from hpo.ensemble.checkpoints import problems
from hpo.export import ExportedTrial
from hpo.final import FinalResult, train_final
from hpo.records.models import sha256
from hpo.train.results import EpochResult


def complete_ensemble(
    path: Path,
    out: Path | None = None,
    device: torch.device | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    on_epoch: Callable[[ExportedTrial, EpochResult], None] | None = None,
) -> tuple[Ensemble, FinalResult | None]:
    """Train the members of the ensemble at ``path`` that cannot predict, into ``out`` (default
    runs/<study>/ensemble-models), and point the file at them. Returns the updated ensemble and
    what was trained (None: nothing was missing)."""
    ensemble = read_ensemble(path)
    lacking = problems(ensemble)
    if not lacking:
        return ensemble, None
    members = [m for m in ensemble.members if m.trial.trial in lacking]
    out = out or ensemble.export().study_spec(overrides).outputs / "ensemble-models"
    result = train_final(ensemble.export(members), out, "folds", device, overrides, on_epoch)
    trained: dict[int, list[dict]] = {}
    for model in result.models:
        file = (result.out / model.file).resolve()
        trained.setdefault(model.trial, []).append({"fold": model.fold, "sha256": sha256(file), "file": str(file)})
    updated = with_files(ensemble, trained)
    write_ensemble(updated, path)
    return updated, result
