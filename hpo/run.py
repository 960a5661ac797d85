"""Running a study on this machine: the Python API behind ``hpo run``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import optuna
from optuna.trial import TrialState
from rich.console import Console

from hpo.config import StudySpec
from hpo.data.folds import make_fold_plan
from hpo.data.formats import load_table
from hpo.data.table import ImageTable
from hpo.objective import Objective, pick_device
from hpo.progress import RunDisplay, count_states
from hpo.space import candidates
from hpo.storage import open_storage, open_study, redact, resolve_url
from hpo.train.models import create_model

# Trials that count towards the budget: a FAIL is a crash, retried rather than counted.
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)


def check_pretrained(spec: StudySpec) -> None:
    """Load every backbone's pretrained weights once before any trial: a machine without them
    (offline, empty cache) fails here with one clear error, not in every trial."""
    wanted = [value for value in candidates(spec.search.pretrained) if value]
    for backbone in candidates(spec.search.backbone) if wanted else []:
        for pretrained in wanted:
            create_model(backbone, pretrained, num_classes=2)


def prepare(spec: StudySpec) -> tuple[ImageTable, np.ndarray]:
    """Everything that can fail on bad input, done before any storage is touched: the data
    read, the fold plan computed, pretrained weights found."""
    table = load_table(spec.data.format, spec.data.options)
    plan = make_fold_plan(table, spec.cv.folds, spec.cv.seed)
    check_pretrained(spec)
    return table, plan


@dataclass(frozen=True)
class RunResult:
    study: optuna.Study
    storage_url: str
    ran: int  # trials finished by this call


def run_study(
    spec: StudySpec,
    storage: str | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    console: Console | None = None,
    live: bool = True,
) -> RunResult:
    """Run ``spec`` until the study holds its total budget of trials (``n_trials`` overrides the
    study file's ``budget.n_trials``) or ``timeout`` seconds pass.

    Everything is validated (see :func:`prepare`) before the storage is touched. Running again
    resumes the same study.
    """
    console = console or Console(stderr=True)
    table, plan = prepare(spec)
    url = resolve_url(storage, spec)
    study, plan = open_study(spec, open_storage(url), table, plan)
    budget = n_trials or spec.budget.n_trials
    counts = count_states(study)
    remaining = budget - sum(counts[s] for s in COUNTED)
    device = pick_device()
    console.print(
        f"study [bold]{spec.name}[/] on {redact(url)}: {len(table)} images, {table.num_classes}"
        f" classes, {spec.cv.folds} folds, device {device}; {budget - remaining}/{budget} trials done",
        soft_wrap=True,
    )
    if remaining <= 0:
        console.print("budget reached; nothing to run (raise --n-trials to continue)")
        return RunResult(study, url, 0)
    before = len(study.trials)
    with RunDisplay(study, budget, console, live=live) as display:
        objective = Objective(spec, table, plan, device, on_epoch=display.on_epoch)
        study.optimize(
            objective,
            n_trials=remaining,
            timeout=timeout if timeout is not None else spec.budget.timeout,
            callbacks=[display.on_trial_end],
            gc_after_trial=True,
        )
    return RunResult(study, url, len(study.trials) - before)
