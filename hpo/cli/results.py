"""Commands that use what a study found: export, train, predict, report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from hpo import keys
from hpo.cli.app import (
    SetOpt,
    StorageOpt,
    StudyOpt,
    _spec,
    app,
    console,
    user_errors,
)


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

    from hpo.predict import predict_folder

    with Progress(TextColumn("predicting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task("predict", total=None)

        def started(images: int, models: int, device: object) -> None:
            progress.update(task, total=images)
            progress.console.print(f"{images} images, {models} model(s){' x 2 (TTA: flip)' if tta else ''} on {device}")

        result = predict_folder(model, data, output, tta, batch_size, class_names, on_start=started,
                                on_batch=lambda n: progress.advance(task, n))
    counts = ", ".join(f"{name}: {n}" for name, n in result.counts().items())
    console.print(f"wrote {output} ({len(result.inputs.ids)} rows; predicted {counts})", soft_wrap=True, highlight=False)


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
