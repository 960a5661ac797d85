"""The study note shown on optuna-dashboard's study page: what is searched, on what data."""

from __future__ import annotations

import numpy as np
import optuna
import yaml

from hpo.config import StudySpec
from hpo.data.folds import HELD_OUT
from hpo.data.table import ImageTable


def study_note(spec: StudySpec, table: ImageTable, plan: np.ndarray) -> str:
    counts = table.class_counts()
    fold_sizes = [int((plan == f).sum()) for f in range(spec.cv.folds)]
    held = int((plan == HELD_OUT).sum())
    held_text = f"; {held} images held out of every fold (cv.holdout {spec.cv.holdout})" if held else ""
    classes = "\n".join(f"| {name} | {n} |" for name, n in zip(table.classes, counts, strict=True))
    search = yaml.safe_dump(spec.raw.get("search", {}), sort_keys=False).strip()
    return f"""## {spec.name}

**Data**: format `{spec.data.format}`, {len(table)} images of {len(np.unique(table.groups))} groups,
{table.num_classes} classes (imbalance {counts.max() / max(counts.min(), 1):.1f}:1), fingerprint `{table.fingerprint()}`.
**CV**: {spec.cv.folds} folds by group (stratified; seed {spec.cv.seed}), sizes {fold_sizes}{held_text}.
**Budget**: {spec.budget.n_trials} trials, up to {spec.budget.max_epochs} epochs per fold, patience {spec.budget.patience}.
**Sampler** `{spec.sampler.type}`, **pruner** `{spec.pruner.type}`; value = mean over folds of each fold's best macro F1.

| class | images |
|---|---|
{classes}

### Search space
```yaml
{search}
```
"""


def ensure_note(study: optuna.Study, spec: StudySpec, table: ImageTable, plan: np.ndarray) -> None:
    """Write the note once, when the study is created (users may edit it in the dashboard)."""
    from optuna_dashboard import get_note, save_note  # here, not at import: it pulls in sklearn.ensemble

    if not get_note(study):
        save_note(study, study_note(spec, table, plan))


def save_trial_note(trial: optuna.Trial, folds: list, seconds: float, reason: str | None) -> None:
    from optuna_dashboard import save_note

    save_note(trial, trial_note(folds, seconds, reason))


def trial_note(folds: list, seconds: float, reason: str | None) -> str:  # folds: list[FoldResult]
    """A readable summary on the trial's page: F1 per fold and where it stopped."""
    rows = "\n".join(f"| {f.fold} | {f.best_f1:.4f} | {f.best_epoch} | {len(f.history)} |" for f in folds)
    f1 = [f.best_f1 for f in folds]
    stopped = f"\n\n**Stopped**: {reason}" if reason else ""
    return (f"**Macro F1** {np.mean(f1):.4f} ± {np.std(f1):.4f} over {len(folds)} fold(s), {seconds:.0f} s{stopped}\n\n"
            f"| fold | best F1 | best epoch | epochs run |\n|---|---|---|---|\n{rows}\n")
