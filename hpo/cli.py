"""The ``hpo`` command: a thin layer over the Python API; HpoErrors become one line and exit 2."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from hpo import keys
from hpo.errors import EXIT_STOPPED, HpoError


class _OneLineErrors(TyperGroup):
    """Usage errors (a missing option, --n-trials -1) as one line on stderr with exit code 2,
    like every other refusal, instead of click's boxed usage text."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            sys.exit(EXIT_STOPPED)
        except Exception as e:
            # click's exceptions (vendored by newer typer): an exit code and a message to format.
            if not (isinstance(getattr(e, "exit_code", None), int) and hasattr(e, "format_message")):
                raise
            if type(e).__name__ == "NoArgsIsHelpError":  # plain `hpo`: the help itself
                e.show()  # type: ignore[attr-defined]
            else:
                context = getattr(e, "ctx", None)  # its command path, under whatever the program was called
                where = " ".join(["hpo", *(context.command_path.split()[1:] if context is not None else [])])
                message = e.format_message().rstrip(".")
                _one_line(f"{message} See {where} --help" if message.endswith("?") else f"{message}; see {where} --help")
            sys.exit(e.exit_code)  # type: ignore[attr-defined]
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(cls=_OneLineErrors, add_completion=False, no_args_is_help=True,
                  help="Hyperparameter optimisation for image classification.")
# Progress goes to stderr; when it is not a terminal (CI, a log file) use a readable width.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)

StudyOpt = Annotated[str, typer.Option("--study", "-s", help="Study file path, or a name in studies/")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a study-file key: a.b=value (repeatable)")]
StorageOpt = Annotated[str | None, typer.Option("--storage", help="Storage URL (default: $HPO_STORAGE, else a SQLite file in runs/<study>/)")]
TrialsOpt = Annotated[int | None, typer.Option("--n-trials", help="Total trials of the study (overrides budget.n_trials)", min=1)]
TimeoutOpt = Annotated[str | None, typer.Option("--timeout", help="Stop starting trials after this long: 90s, 30m, 8h")]
TensorBoardOpt = Annotated[Path | None, typer.Option("--tensorboard", help="Log every trial's curves here for TensorBoard (tracking.tensorboard)")]

data_app = typer.Typer(no_args_is_help=True, help="Look at the data and prepare it before a search.")
app.add_typer(data_app, name="data")


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """HpoErrors: one line on stderr, exit code 2. Ctrl-C / SIGTERM: exit code 130."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from hpo.errors import EXIT_DEVICE, EXIT_INPUT, DeviceError, WorkerStopping

        try:
            return command(*args, **kwargs)
        except HpoError as e:
            _one_line(e)
            raise typer.Exit(EXIT_INPUT) from None
        except DeviceError as e:
            console.print(f"device failure, exiting for a fresh process: {e}", soft_wrap=True, markup=False)
            raise typer.Exit(EXIT_DEVICE) from None
        except (KeyboardInterrupt, WorkerStopping):
            console.print("stopped; running trials were re-enqueued. Run the same command to resume.")
            raise typer.Exit(EXIT_STOPPED) from None
        except Exception as e:
            from hpo.storage import is_transient, storage_failure  # a database error: one line

            if (failure := storage_failure(e)) is None:
                raise
            _one_line(failure)
            # An outage that outlasted the retries ends a pool's worker with 1: it is restarted.
            raise typer.Exit(1 if is_transient(e) else EXIT_INPUT) from None

    return wrapper


def _one_line(error: BaseException | str) -> None:
    """An error as one line on stderr, printed as written: a message may quote YAML ([a, b]) or a
    path with brackets."""
    console.print(f"[red]error:[/] {escape(' '.join(str(error).split()))}", soft_wrap=True, highlight=False)


def _seconds(timeout: str | None) -> float | None:
    from hpo.config import parse_duration
    from hpo.errors import ConfigError

    try:
        return parse_duration(timeout)
    except ValueError as e:
        raise ConfigError(f"--timeout: {e}") from None


def _overrides(set_: list[str] | None, tensorboard: Path | None = None) -> list[str]:
    """--set assignments, with the options that are study-file keys added as such (so worker
    processes started by `hpo run` receive them too)."""
    return [*(set_ or []), *([f"tracking.tensorboard={tensorboard}"] if tensorboard else [])]


def _spec(study: str, overrides: list[str], storage: str | None):  # noqa: ANN202
    """The study file, or (for a worker joining from elsewhere) the spec kept in the storage."""
    from hpo.config import load_spec_or_stored
    from hpo.storage import resolve_url
    from hpo.study import stored_spec

    return load_spec_or_stored(study, overrides, lambda: stored_spec(resolve_url(storage), study))


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
) -> None:
    """Run (or resume) a study until its total trial budget is reached."""
    from hpo.config import find_study_file, load_spec
    from hpo.workers.stopping import raise_on_sigterm

    raise_on_sigterm()
    overrides = _overrides(set_, tensorboard)
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
) -> None:
    """Join a study as one worker (from any machine) and run trials until its budget is reached.

    Without the study file here, the spec stored with the study is used."""
    from hpo.workers.stopping import raise_on_sigterm

    raise_on_sigterm()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = _spec(study, _overrides(set_, tensorboard), storage)
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

    from hpo.review.artifacts import artifact_location, open_artifact_store
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


@app.command()
@user_errors
def export(
    study: StudyOpt,
    output: Annotated[Path, typer.Option("--output", "-o", help="YAML file to write")] = Path("best.yaml"),
    trial: Annotated[int | None, typer.Option(help="Export this trial number instead of the best")] = None,
    top_k: Annotated[int, typer.Option(help="Export the k best complete trials (an ensemble)", min=1)] = 1,
    storage: StorageOpt = None,
    set_: SetOpt = None,
) -> None:
    """Write the best trial(s) as a complete, re-runnable training config."""
    from hpo.export import export_study, write_export
    from hpo.status import load_existing

    exported = export_study(load_existing(_spec(study, set_ or [], storage), storage), trial, top_k)
    write_export(exported, output)
    for t in exported.trials:
        f1 = f"macro F1 {t.value:.4f} ± {t.f1_std or 0:.4f} folds {t.fold_f1}" if t.value is not None else t.state
        console.print(f"trial {t.trial}: {f1}; {t.config.backbone}, lr {t.config.lr:.3g}, "
                      f"loss {t.config.loss.name}, batch {t.config.batch_size}, size {t.config.image_size}",
                      soft_wrap=True, highlight=False)
    console.print(f"wrote {output}")


@app.command()
@user_errors
def train(
    config: Annotated[Path, typer.Option("--config", "-c", help="A file written by hpo export")],
    out: Annotated[Path | None, typer.Option(help="Folder for the models (default: runs/<study>/final)")] = None,
    mode: Annotated[str, typer.Option(help="folds: the K fold models (an ensemble); full: one model on all data")] = "folds",
    set_: SetOpt = None,
) -> None:
    """Train the final model(s) of an export and save them with their config."""
    from hpo.errors import ConfigError
    from hpo.export import read_export
    from hpo.final import train_final
    from hpo.system import pick_device

    if mode not in ("folds", "full"):
        raise ConfigError(f"--mode {mode!r}: use folds or full")
    exported = read_export(config)
    spec = exported.study_spec(set_ or [])
    out = out or spec.outputs / "final"
    device = pick_device()
    console.print(f"training {len(exported.trials)} trial(s) of study {exported.study} ({mode}) on {device}")

    def on_epoch(t, e) -> None:  # noqa: ANN001
        f1 = "" if e.macro_f1 != e.macro_f1 else f" val F1 {e.macro_f1:.4f}"  # NaN: no validation
        console.print(f"trial {t.trial} fold {e.fold} epoch {e.epoch}: loss {e.train_loss:.4f}{f1}", highlight=False)

    result = train_final(exported, out, mode, device, set_ or [], on_epoch)
    for t in exported.trials:
        again = result.cv_f1(t.trial)
        if again:
            console.print(f"trial {t.trial}: cross-validated macro F1 {np.mean(again):.4f} (folds {again});"
                          f" the study measured {t.value:.4f} (folds {t.fold_f1})", highlight=False, soft_wrap=True)
    console.print(f"saved {len(result.models)} model(s) in {result.out}")


@app.command()
@user_errors
def predict(
    model: Annotated[Path, typer.Option("--model", "-m", help="Folder written by hpo train")],
    data: Annotated[Path, typer.Option("--data", "-d", help="Folder of images, or an eval folder with info.csv and images/")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Submission CSV to write")] = Path("submission.csv"),
    tta: Annotated[bool, typer.Option(help="Average with horizontally flipped images")] = False,
    batch_size: Annotated[int, typer.Option(help="Images per batch", min=1)] = 64,
    class_names: Annotated[bool, typer.Option(help="Write class names instead of class indices")] = False,
) -> None:
    """Predict with the saved model(s) (soft vote) and write the submission CSV."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from hpo.predict import find_inputs, load_models, predict_probabilities, write_submission
    from hpo.system import pick_device

    device = pick_device()
    models, classes = load_models(model, device)
    inputs = find_inputs(data)
    console.print(f"{len(inputs.ids)} images, {len(models)} model(s){' x 2 (TTA: flip)' if tta else ''} on {device}")
    with Progress(TextColumn("predicting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task("predict", total=len(inputs.ids))
        probs = predict_probabilities(models, inputs.paths, device, tta, batch_size,
                                      lambda n: progress.advance(task, n))
    predicted = probs.argmax(1)
    write_submission(inputs, predicted, output, classes if class_names else None)
    counts = ", ".join(f"{classes[i]}: {n}" for i, n in enumerate(np.bincount(predicted, minlength=len(classes))) if n)
    console.print(f"wrote {output} ({len(inputs.ids)} rows; predicted {counts})", soft_wrap=True, highlight=False)


@app.command()
@user_errors
def report(
    study: StudyOpt,
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML file to write")] = Path("report.html"),
    storage: StorageOpt = None,
    set_: SetOpt = None,
) -> None:
    """Write a self-contained HTML report of the study's plots."""
    from hpo.review.report import write_report
    from hpo.status import load_existing

    existing = load_existing(_spec(study, set_ or [], storage), storage)
    write_report(existing, existing.user_attrs.get(keys.CLASSES), output)
    console.print(f"wrote {output}")


@app.command()
@user_errors
def validate(study: StudyOpt, set_: SetOpt = None) -> None:
    """Check a study file and its data without touching any storage."""
    from hpo.config import load_spec

    spec = load_spec(study, set_ or [])
    from hpo.study import prepare

    table, plan = prepare(spec)
    sizes = [int((plan == f).sum()) for f in range(spec.cv.folds)]
    console.print(f"{spec.name}: valid; {len(table)} images, {table.num_classes} classes, fold sizes {sizes}")
    if table.skipped:
        console.print(table.skipped_summary(), soft_wrap=True, highlight=False)


@data_app.command("describe")
@user_errors
def data_describe(
    study: StudyOpt,
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML file to write")] = Path("eda.html"),
    set_: SetOpt = None,
) -> None:
    """Describe the study's data before a search, as one HTML page: class balance and weights,
    label factors, image sizes and pixel statistics, sample images, unreadable files, the folds."""
    from hpo.config import load_spec
    from hpo.review.eda import describe_data, summary_table

    description = describe_data(load_spec(study, set_ or []), output, progress=console.is_terminal)
    Console(width=None if sys.stdout.isatty() else 120).print(summary_table(description))
    console.print(f"wrote {output}", soft_wrap=True, highlight=False)


@data_app.command("prepare")
@user_errors
def data_prepare(study: StudyOpt, set_: SetOpt = None) -> None:
    """Decode, crop and resize every image once, at every image size the study can sample, into
    the cache every trial and worker on this machine reads ($HPO_CACHE, default ~/.cache/hpo)."""
    from hpo.config import load_spec
    from hpo.prepare import prepare_cache

    spec = load_spec(study, set_ or [])
    for entry in prepare_cache(spec, progress=console.is_terminal):
        where = entry.path or "memory (HPO_CACHE=off)"
        console.print(f"{entry.size} px: {entry.images} images, {entry.megabytes:.0f} MB"
                      f" {'built' if entry.built else 'already cached'} in {entry.seconds:.1f} s -> {where}",
                      soft_wrap=True, highlight=False)


def main() -> None:
    from hpo.settings import load_env

    load_env()  # first: libraries read their own variables (HF_HOME...) as they are imported
    # Quieter Optuna: hpo prints its own per-trial lines.
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sys.exit(app())
