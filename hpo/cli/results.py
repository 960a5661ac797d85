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
    config: Annotated[Path, typer.Option("--config", "-c", help="A file written by hpo export, or by hpo ensemble")],
    out: Annotated[Path | None, typer.Option(help="Folder for the models (default: runs/<study>/final)")] = None,
    mode: Annotated[str, typer.Option(help="folds: the K fold models (an ensemble); full: one model on all data")] = "folds",
    set_: SetOpt = None,
) -> None:
    """Train the final model(s) of an export and save them with their config; for an ensemble
    file, the fold models of its members that have none (the study did not keep them)."""
    from hpo.ensemble import is_ensemble_file
    from hpo.errors import ConfigError
    from hpo.export import read_export
    from hpo.final import train_final
    from hpo.system import pick_device

    if mode not in ("folds", "full"):
        raise ConfigError(f"--mode {mode!r}: use folds or full")
    device = pick_device()

    def on_epoch(t, e) -> None:  # noqa: ANN001
        f1 = "" if e.macro_f1 != e.macro_f1 else f" val F1 {e.macro_f1:.4f}"  # NaN: no validation
        console.print(f"trial {t.trial} fold {e.fold} epoch {e.epoch}: loss {e.train_loss:.4f}{f1}", highlight=False)

    if is_ensemble_file(config):
        _complete_ensemble(config, out, mode, device, set_ or [], on_epoch)
        return
    exported = read_export(config)
    spec = exported.study_spec(set_ or [])
    out = out or spec.outputs / "final"
    console.print(f"training {len(exported.trials)} trial(s) of study {exported.study} ({mode}) on {device}")
    result = train_final(exported, out, mode, device, set_ or [], on_epoch)
    _compare(exported.trials, result)
    console.print(f"saved {len(result.models)} model(s) in {result.out}")


def _compare(trials, result) -> None:  # noqa: ANN001
    """Each trial's F1 trained again beside the F1 the study measured."""
    for t in trials:
        again = result.cv_f1(t.trial)
        if again:
            console.print(f"trial {t.trial}: cross-validated macro F1 {np.mean(again):.4f} (folds {again});"
                          f" the study measured {t.value:.4f} (folds {t.fold_f1})", highlight=False, soft_wrap=True)


def _complete_ensemble(config: Path, out: Path | None, mode: str, device, overrides: list[str], on_epoch) -> None:  # noqa: ANN001
    from hpo.ensemble.complete import complete_ensemble
    from hpo.errors import ConfigError

    if mode != "folds":
        raise ConfigError(f"--mode {mode}: an ensemble's members are fold models; leave --mode out")
    ensemble, result = complete_ensemble(config, out, device, overrides, on_epoch)
    if result is None:
        console.print(f"every member of {config} has its fold models; nothing to train")
        return
    trained = sorted({m.trial for m in result.models})
    _compare([m.trial for m in ensemble.members if m.trial.trial in trained], result)
    console.print(f"saved {len(result.models)} model(s) of trial(s) {', '.join(map(str, trained))} in {result.out};"
                  f" {config} points at them", soft_wrap=True)


@app.command()
@user_errors
def ensemble(
    study: StudyOpt,
    output: Annotated[Path, typer.Option("--output", "-o", help="YAML file to write")] = Path("ensemble.yaml"),
    max_members: Annotated[int, typer.Option(help="Picks of the greedy selection (with replacement)", min=1)] = 20,
    init: Annotated[int, typer.Option(help="Best single trials it starts from", min=1)] = 3,
    offsets: Annotated[bool, typer.Option("--offsets/--no-offsets", help="Per-class decision offsets fitted out of fold (off: they lost on new people in 4 of 5 benchmark studies)")] = False,
    exclude: Annotated[list[int] | None, typer.Option(help="Leave this trial out (repeatable)")] = None,
    pool: Annotated[int, typer.Option(help="Choose among the best N complete trials (0: the study's models.keep, whose models are kept)", min=0)] = 0,
    storage: StorageOpt = None,
    set_: SetOpt = None,
) -> None:
    """Pick the ensemble of complete trials that scores best out of fold (greedy selection with
    replacement), with its weights and per-class offsets, and an honest estimate on new data."""
    from hpo.ensemble import build_ensemble, write_ensemble
    from hpo.records.artifacts import artifact_location
    from hpo.status import load_existing

    spec = _spec(study, set_ or [], storage)
    built = build_ensemble(load_existing(spec, storage), artifact_location(spec), max_members, init, offsets,
                           set(exclude or []), pool)
    write_ensemble(built, output)
    scores, say = built.scores, lambda text: console.print(text, soft_wrap=True, highlight=False)
    left = f" ({len(scores['left_out'])} without: left out)" if scores["left_out"] else ""
    say(f"choosing among the {scores['candidates']} best complete trials with out-of-fold predictions"
        f" ({', '.join(map(str, scores['pool']))}){left}")
    say(f"best single trial {scores['best_single']['trial']}: out-of-fold macro F1 {scores['best_single']['oof_macro_f1']:.4f}")
    members = ", ".join(f"{m.trial.trial} x{m.weight:.2f}" for m in built.members)
    say(f"ensemble of {len(built.members)} trial(s) ({members}): out-of-fold macro F1 {scores['oof_macro_f1']:.4f};"
        f" with class offsets {scores['oof_macro_f1_with_offsets']:.4f}")
    nested = scores["nested"]
    say(f"estimate on new data (chosen on all folds but one, scored on that one, averaged): {nested['macro_f1']:.4f};"
        f" with class offsets {nested['with_offsets']:.4f}; offsets {'used' if scores['offsets_used'] else 'not used'}")
    if held := scores.get("held_out"):
        people = f"{held['people']} people, " if "people" in held else ""
        spread = f" ± {held['standard_error']:.4f}" if "standard_error" in held else ""
        say(f"on the {people}{held['images']} images held out of every fold (cv.holdout), as submitted: macro F1"
            f" {held['macro_f1']:.4f}, with --tta {held['macro_f1_tta']:.4f}{spread} (best single trial's fold"
            f" models {held['best_single_tta']:.4f})")
        say(f"estimate of the submission on new people: the nested estimate + what averaging the folds' models and"
            f" views adds there ({held['averaging_gain']:+.4f}) = {scores['estimate']:.4f}")
    if missing := built.missing():
        say(f"no fold models kept for trial(s) {', '.join(str(m.trial.trial) for m in missing)}:"
            f" hpo train --config {output} trains them")
    say(f"wrote {output}")


@app.command()
@user_errors
def predict(
    model: Annotated[Path, typer.Option("--model", "-m", help="Folder written by hpo train, or a file written by hpo ensemble")],
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
