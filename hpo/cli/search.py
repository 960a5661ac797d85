"""Commands that run and watch a study: run, worker, status, enqueue, dashboard."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from hpo.cli.app import (
    SetOpt,
    StorageOpt,
    StudyOpt,
    TensorBoardOpt,
    TimeoutOpt,
    TrackerOpt,
    TrialsOpt,
    _overrides,
    _seconds,
    _spec,
    app,
    console,
    user_errors,
)


@app.command()
@user_errors
def run(
    study: StudyOpt,
    storage: StorageOpt = None,
    n_trials: TrialsOpt = None,
    timeout: TimeoutOpt = None,
    set_: SetOpt = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: 1, in this process; with GPUs: one per GPU slot)", min=1)] = None,
    gpus: Annotated[str | None, typer.Option(help="GPUs to use, e.g. 0,1,2,3 (default: all visible)")] = None,
    trials_per_gpu: Annotated[int, typer.Option(help="Workers sharing each GPU", min=1)] = 1,
    live: Annotated[bool, typer.Option(help="Live progress display (off when not a terminal)")] = True,
    tensorboard: TensorBoardOpt = None,
    tracker: TrackerOpt = None,
) -> None:
    """Run (or resume) a study until its total trial budget is reached."""
    from hpo.config import find_study_file, load_spec
    from hpo.workers.stopping import raise_on_sigterm

    raise_on_sigterm()
    overrides = _overrides(set_, tensorboard, tracker)
    spec = load_spec(study, overrides)  # the study file's shape is checked before torch loads
    from hpo.progress import summary_table
    from hpo.run import run_study
    from hpo.system import limit_threads

    limit_threads()
    gpu_list = [g.strip() for g in gpus.split(",") if g.strip()] if gpus else None
    result = run_study(
        spec, storage, n_trials, _seconds(timeout), console, live=live and console.is_terminal,
        workers=workers, gpus=gpu_list, trials_per_gpu=trials_per_gpu,
        study_file=find_study_file(study).resolve(), overrides=overrides,
    )
    Console(width=None if sys.stdout.isatty() else 120).print(summary_table(result.study))


@app.command()
@user_errors
def worker(
    study: StudyOpt,
    storage: StorageOpt = None,
    n_trials: TrialsOpt = None,
    timeout: TimeoutOpt = None,
    set_: SetOpt = None,
    tensorboard: TensorBoardOpt = None,
    tracker: TrackerOpt = None,
) -> None:
    """Join a study as one worker (from any machine) and run trials until its budget is reached.

    Without the study file here, the spec stored with the study is used."""
    from hpo.workers.stopping import raise_on_sigterm

    raise_on_sigterm()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = _spec(study, _overrides(set_, tensorboard, tracker), storage)
    from hpo.run import run_worker
    from hpo.system import limit_threads

    limit_threads()
    done = run_worker(spec, storage, n_trials, _seconds(timeout), console)
    console.print(f"budget reached; this worker ran {done} trials")


@app.command()
@user_errors
def status(study: StudyOpt, storage: StorageOpt = None, set_: SetOpt = None) -> None:
    """Trials by state, the best so far, running trials and live workers."""
    spec = _spec(study, set_ or [], storage)
    from hpo.status import study_status

    Console(width=None if sys.stdout.isatty() else 120).print(*study_status(spec, storage))


@app.command()
@user_errors
def enqueue(
    study: StudyOpt,
    params: Annotated[Path, typer.Argument(help="YAML: a mapping of parameter: value, or a list of them",
                                            metavar="PARAMS")],
    storage: StorageOpt = None,
    set_: SetOpt = None,
) -> None:
    """Put known-good configurations first in the study's queue (duplicates are skipped)."""
    from hpo.config import load_params_file
    from hpo.study import connect
    from hpo.study import enqueue as enqueue_trials

    trials = load_params_file(params)
    added = enqueue_trials(connect(_spec(study, set_ or [], storage), storage), trials)
    console.print(f"enqueued {added} of {len(trials)} trials ({len(trials) - added} already in the study)")


@app.command()
@user_errors
def dashboard(
    study: StudyOpt,
    storage: StorageOpt = None,
    host: Annotated[str, typer.Option(help="Interface to bind; 0.0.0.0 exposes it to the network")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port", min=1, max=65535)] = 8080,
    set_: SetOpt = None,
) -> None:
    """Serve optuna-dashboard on the study's storage, with its artifact store.

    Each trial shows its confusion matrix, per-class table and learning curves."""
    import optuna_dashboard

    from hpo.records.artifacts import artifact_location, open_artifact_store
    from hpo.status import load_existing
    from hpo.storage import writable
    from hpo.study import storage_url

    spec = _spec(study, set_ or [], storage)
    # Read-only where this user cannot write (notes and other edits in the page then fail).
    read_only = not writable(storage_url(storage, spec))
    existing = load_existing(spec, storage, read_only)  # fails clearly when there is no such study
    location = artifact_location(spec)
    console.print(f"dashboard for study {spec.name} (artifacts: {location}{', read-only' if read_only else ''}):"
                  f" http://{host}:{port}/", soft_wrap=True)
    optuna_dashboard.run_server(existing._storage.rdb, host=host, port=port, artifact_store=open_artifact_store(location))
