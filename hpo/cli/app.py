"""The typer application the commands register on, and what they share: the one-line error
handling (HpoError, database errors, usage errors -> one line, exit 2), the common options, and
the study file or stored spec a command works on."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

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
TrackerOpt = Annotated[list[str] | None, typer.Option(
    "--tracker", metavar="NAME[:ARG=VALUE,...]",
    help="Turn on a tracker for this run, e.g. mlflow or mlflow:tracking_uri=http://host:5000 (tracking.NAME; repeatable)")]

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


def _overrides(set_: list[str] | None, tensorboard: Path | None = None,
               trackers: list[str] | None = None) -> list[str]:
    """--set assignments, with the options that are study-file keys added as such (so worker
    processes started by `hpo run` receive them too)."""
    tracking = [*([f"tracking.tensorboard={tensorboard}"] if tensorboard else []),
                *(a for tracker in trackers or [] for a in _tracker_overrides(tracker))]
    return [*(set_ or []), *tracking]


def _tracker_overrides(option: str) -> list[str]:
    """``--tracker NAME`` is ``--set tracking.NAME=true`` (on, with its defaults; the study file's
    arguments for it are replaced); ``--tracker NAME:a=1,b=2`` is ``--set tracking.NAME.a=1
    --set tracking.NAME.b=2``. The name and arguments are checked with the study file."""
    from hpo.errors import ConfigError

    name, _, args = (part.strip() for part in option.partition(":"))
    pairs = [pair.partition("=") for pair in args.split(",")] if args else []
    if not name or any(not key.strip() or not eq for key, eq, _ in pairs):
        raise ConfigError(f"--tracker {option!r}: expected NAME or NAME:arg=value,..., e.g. --tracker mlflow"
                          " or --tracker wandb:project=hpo,mode=offline")
    if not pairs:
        return [f"tracking.{name}=true"]
    return [f"tracking.{name}.{key.strip()}={value.strip()}" for key, _, value in pairs]


def _spec(study: str, overrides: list[str], storage: str | None):  # noqa: ANN202
    """The study file, or (for a worker joining from elsewhere) the spec kept in the storage."""
    from hpo.config import load_spec_or_stored
    from hpo.storage import resolve_url
    from hpo.study import stored_spec

    return load_spec_or_stored(study, overrides, lambda: stored_spec(resolve_url(storage), study))


