"""The ``hpo`` command: a thin layer over the Python API; HpoErrors become one line and exit 2."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console

from hpo.errors import HpoError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Hyperparameter optimisation for image classification."
)
# Progress goes to stderr; when it is not a terminal (CI, a log file) use a readable width.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)

StudyOpt = Annotated[str, typer.Option("--study", "-s", help="Study file path, or a name in studies/")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override a study-file key: a.b=value (repeatable)")
]
StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage", help="Storage URL (default: $HPO_STORAGE, else a SQLite file in runs/<study>/)"
    ),
]


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Report HpoErrors as one line on stderr with exit code 2; Ctrl-C with exit code 130."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except HpoError as e:
            console.print(f"[red]error:[/] {e}", soft_wrap=True, highlight=False)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("interrupted; run the same command again to resume the study")
            raise typer.Exit(130) from None

    return wrapper


@app.command()
@user_errors
def run(
    study: StudyOpt,
    storage: StorageOpt = None,
    n_trials: Annotated[
        int | None, typer.Option(help="Total trials of the study (overrides budget.n_trials)", min=1)
    ] = None,
    timeout: Annotated[
        str | None, typer.Option(help="Stop starting trials after this long: 90s, 30m, 8h")
    ] = None,
    set_: SetOpt = None,
    live: Annotated[bool, typer.Option(help="Live progress display (off when not a terminal)")] = True,
) -> None:
    """Run (or resume) a study until its total trial budget is reached."""
    from hpo.config import load_spec, parse_duration
    from hpo.errors import ConfigError
    from hpo.progress import summary_table
    from hpo.run import run_study

    spec = load_spec(study, set_ or [])
    try:
        seconds = parse_duration(timeout)
    except ValueError as e:
        raise ConfigError(f"--timeout: {e}") from None
    result = run_study(spec, storage, n_trials, seconds, console, live=live and console.is_terminal)
    Console(width=None if sys.stdout.isatty() else 120).print(summary_table(result.study))


@app.command()
@user_errors
def validate(study: StudyOpt, set_: SetOpt = None) -> None:
    """Check a study file and its data without touching any storage."""
    from hpo.config import load_spec
    from hpo.run import prepare

    spec = load_spec(study, set_ or [])
    table, plan = prepare(spec)
    sizes = [int((plan == f).sum()) for f in range(spec.cv.folds)]
    console.print(f"{spec.name}: valid; {len(table)} images, {table.num_classes} classes, fold sizes {sizes}")


def main() -> None:
    # Quieter Optuna: hpo prints its own per-trial lines.
    os.environ.setdefault("OPTUNA_LOGGING_LEVEL", "WARNING")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sys.exit(app())
