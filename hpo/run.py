"""Running a study: the Python API behind `hpo run` and `hpo worker`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
from rich.console import Console

from hpo.config import StudySpec
from hpo.progress import FINISHED, RunDisplay, trial_line
from hpo.storage import redact
from hpo.study import COUNTED, connect, count_states, record_budget, storage_url, trials_done
from hpo.system import pick_device
from hpo.workers import Pool, Worker, plan_slots
from hpo.workers.pool import check_pool_storage
from hpo.workers.stopping import stop_when_orphaned


@dataclass(frozen=True)
class RunResult:
    study: optuna.Study
    storage_url: str
    ran: int  # trials finished by this call


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def run_study(
    spec: StudySpec,
    storage: str | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    console: Console | None = None,
    live: bool = True,
    workers: int | None = None,
    gpus: list[str] | None = None,
    trials_per_gpu: int = 1,
    study_file: Path | None = None,
    overrides: list[str] | None = None,
) -> RunResult:
    """Run ``spec`` until the study holds its total budget of trials (``n_trials`` overrides the
    study file's ``budget.n_trials``) or ``timeout`` seconds pass; running again resumes.

    With one worker (the default) trials run in this process. With ``workers`` > 1, ``gpus`` or
    ``trials_per_gpu`` > 1, worker processes run them (`hpo worker`, which needs ``study_file``
    and the ``overrides`` applied to it). Input is validated before the storage is touched.
    """
    console = console or Console(stderr=True)
    pooled = (workers or 1) > 1 or gpus is not None or trials_per_gpu > 1
    slots = plan_slots(workers, gpus, trials_per_gpu) if pooled else []
    check_pool_storage(storage_url(storage, spec), len(slots))  # before anything is written
    handle = connect(spec, storage)
    budget = n_trials or spec.budget.n_trials
    timeout = timeout if timeout is not None else spec.budget.timeout
    done = sum(count_states(handle.study)[s] for s in COUNTED)
    console.print(
        f"study [bold]{spec.name}[/] on {redact(handle.url)}: {len(handle.table)} images,"
        f" {handle.table.num_classes} classes, {spec.cv.folds} folds; {trials_done(done, budget)}",
        soft_wrap=True,
    )
    if handle.table.skipped:
        console.print(handle.table.skipped_summary(), soft_wrap=True, highlight=False)
    if done >= budget:
        console.print("budget reached; nothing to run (raise --n-trials to continue)")
        return RunResult(handle.study, handle.url, 0)
    before = _finished(handle.study)
    record_budget(handle.study, budget)
    if pooled:
        if study_file is None:
            raise ValueError("worker processes need the study file: pass study_file")
        Pool(handle, study_file, list(overrides or []), slots, budget, timeout, console, live).run()
    else:
        device = pick_device()
        console.print(f"one worker on {device}")
        with RunDisplay(handle.study, budget, console, live) as display:
            Worker(handle, budget, timeout, device, on_epoch=display.on_epoch, on_trial_end=display.on_trial_end,
                   on_trial_start=display.on_trial_start, on_wait=_say(console)).run()
    return RunResult(handle.study, handle.url, _finished(handle.study) - before)


def run_worker(
    spec: StudySpec,
    storage: str | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    console: Console | None = None,
) -> int:
    """Join ``spec``'s study as one worker (`hpo worker`, from any machine) and run trials until
    its budget (``n_trials``, else the study file's) is reached or ``timeout`` seconds pass;
    returns how many this worker ran. Started by `hpo run`, it stops when that process dies."""
    console = console or Console(stderr=True)
    handle = connect(spec, storage)
    device = pick_device()
    console.print(f"worker on {device} joined study {spec.name}", soft_wrap=True)
    say = _say(console)
    with stop_when_orphaned():
        return Worker(handle, n_trials or spec.budget.n_trials, timeout if timeout is not None else spec.budget.timeout,
                      device, on_trial_end=lambda t: say(trial_line(t)), on_wait=say).run()


def _say(console: Console) -> Callable[[str], None]:
    """A line for the user, printed as written (no markup)."""
    return lambda text: console.print(text, soft_wrap=True, highlight=False, markup=False)
