"""Time to quality on new people: the common way against `hpo run` -> `hpo ensemble` -> `hpo predict`.

Data: bench/people.py's synthetic mask archive, split by person before anything runs: the study
people (both searches see only them) and held-out people (scored, never seen). Both search the
same space with TPE and the same seed.

- The common way: one `train.py` tuned by Optuna without pruning (bench/common_way.py: PIL and
  torchvision every epoch, all epochs), validated on an image-level holdout (a random fifth of the
  study's photos, stratified by class, so a person's photos fall on both sides), its submission
  the best trial's model by that validation F1.
- hpo: `run_study` (a fresh decoded cache, the study's pruner, group-aware K-fold), every trial's
  fold models kept; its submission at time t is what `hpo ensemble` selects from the best
  `--keep` trials complete by t, predicted with `hpo predict --tta` (no training after the study).

Each side's held-out macro F1 is charted against wall time, every point including what the user
runs after the search (the prediction, and for hpo the selection); evaluating a point is not
counted in the times of the points after it. Printed: both curves, and the times at which each
first reaches the common way's final held-out F1, and their ratio.

    python bench/time_to_quality.py                      # about 25 minutes on 2 CPU cores
    python bench/time_to_quality.py --trials 16 --study-people 300 --image-size 64 --hpo-seconds 600
    python bench/time_to_quality.py --image-size 64 --floor-after 0 0.5   # one common way, then an hpo run each
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.trial import TrialState
from rich.console import Console
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common_way import PhotoFiles, fit, photo_transforms, predict  # noqa: E402
from people import RECIPE, write_people  # noqa: E402

from hpo.config import parse_spec, trial_config  # noqa: E402
from hpo.data.formats import load_table  # noqa: E402
from hpo.ensemble import build_ensemble, write_ensemble  # noqa: E402
from hpo.ensemble.selection import macro_f1  # noqa: E402
from hpo.predict import find_inputs, predict_folder  # noqa: E402
from hpo.records.artifacts import artifact_location  # noqa: E402
from hpo.run import run_study  # noqa: E402
from hpo.system import pick_device  # noqa: E402

CLASSES = 18
Point = tuple[float, float]  # (seconds from the start, held-out macro F1 of the submission then)


def study_dict(root: Path, args: argparse.Namespace) -> dict:
    """The shared search space: what a plain train.py exposes (no hpo-only heads or sampling)."""
    return {
        "name": "time_to_quality",
        "seed": args.seed,
        "sampler": {"type": "tpe", "n_startup_trials": 6},
        "pruner": {"type": "fold_halving", "eta": 3, "floor": args.floor,
                   "floor_after": args.floor_after,
                   "within_fold_args": {"n_startup_trials": 4, "n_warmup_steps": 1}},
        "budget": {"n_trials": 10**6, "max_epochs": args.epochs, "patience": 2},
        "data": {"format": "mask", "root": str(root), "image_size": args.image_size, "normalization": "half"},
        "cv": {"folds": args.folds, "seed": 0},
        "models": {"keep": 1000},  # every trial's: the ensemble at time t draws from the best --keep by then
        "output_dir": str(args.work / "runs"),
        "search": {
            "backbone": {"choices": ["resnet10t", "lcnet_050", "regnetx_002"]},
            **RECIPE,
            "augment": {"preset": "none", "ops": {"hflip": {"p": 0.5}}},
        },
    }


class Clock:
    """Wall seconds since start, less the time spent scoring points for the chart."""

    def __init__(self) -> None:
        self.start, self.paused = time.perf_counter(), 0.0

    def now(self) -> float:
        return time.perf_counter() - self.start - self.paused

    def pause(self, seconds: float) -> None:
        self.paused += seconds


def common_way(spec, args: argparse.Namespace, held_files: list[Path], truth: np.ndarray,  # noqa: ANN001
               device: torch.device) -> tuple[list[Point], float]:
    """The chart's points, and the search's wall time (scoring excluded)."""
    table = load_table("mask", {"root": str(spec.data.root)})
    files, labels = list(table.files), table.labels
    train_idx, val_idx = train_test_split(np.arange(len(labels)), test_size=0.2, stratify=labels,
                                          random_state=args.seed)
    size, mean, std = spec.data.image_size, spec.data.mean, spec.data.std
    held = DataLoader(PhotoFiles(held_files, truth, photo_transforms(size, mean, std, False)), batch_size=256,
                      num_workers=args.naive_workers)
    study = optuna.create_study(direction="maximize", sampler=spec.build_sampler())
    clock, points = Clock(), []

    def objective(trial: optuna.Trial) -> float:
        fitted = fit(trial_config(trial, spec), files, labels, train_idx, val_idx, CLASSES, size, mean, std, device,
                     args.naive_workers)
        searched = clock.now()
        if trial.number == 0 or fitted.best_f1 > study.best_value:  # the new submission
            began = time.perf_counter()
            f1 = macro_f1(truth, predict(fitted.model, held, device).argmax(1), CLASSES)
            scoring = time.perf_counter() - began
            points.append((searched + scoring, f1))  # a user predicts once, after the search
            clock.pause(scoring)
            print(f"  common way: trial {trial.number} at {searched:.0f} s, val F1 {fitted.best_f1:.4f},"
                  f" held-out {f1:.4f}", flush=True)
        return fitted.best_f1

    study.optimize(objective, n_trials=args.trials)
    print(f"common way: {args.trials} trials in {clock.now():.0f} s (scoring excluded)", flush=True)
    return points, clock.now()


def hpo_way(spec, args: argparse.Namespace, held_out: Path, truth: np.ndarray, seconds: float,  # noqa: ANN001
            device: torch.device) -> list[Point]:
    began, started = datetime.now(), time.perf_counter()
    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115 - the chart's lines are the output
    study = run_study(spec, f"sqlite:///{args.work / 'hpo.db'}", timeout=seconds, console=quiet, live=False).study
    states = [t.state.name for t in study.trials]
    print(f"hpo run: {len(states)} trials ({states.count('COMPLETE')} complete, {states.count('PRUNED')} pruned)"
          f" in {time.perf_counter() - started:.0f} s", flush=True)
    # COMPLETE only: a pruned trial keeps its last report as its value, one fold's F1, not a CV one
    complete = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.datetime_complete)
    points, pool = [], None
    for n, trial in enumerate(complete):
        searched = (trial.datetime_complete - began).total_seconds()
        later = {t.number for t in complete[n + 1:]}
        best = {t.number for t in sorted(complete[:n + 1], key=lambda t: -t.value)[:args.keep]}
        if best == pool:  # the submission would not change
            continue
        pool, scoring = best, time.perf_counter()
        ensemble = build_ensemble(study, artifact_location(spec), exclude=later, pool=args.keep)
        path = write_ensemble(ensemble, args.work / "ensemble.yaml")
        done = predict_folder(path, held_out, args.work / "submission.csv", tta=True, device=device)
        f1 = macro_f1(truth, done.predicted, CLASSES)  # what the submission holds, offsets applied
        points.append((searched + time.perf_counter() - scoring, f1))
        members = " ".join(f"{m.trial.trial}x{m.weight:.2f}" for m in ensemble.members)
        print(f"  hpo: {n + 1} complete at {searched:.0f} s, ensemble {members}, held-out {f1:.4f}", flush=True)
    return points


def first_reaching(points: list[Point], target: float) -> float | None:
    return next((t for t, f1 in points if f1 >= target - 1e-9), None)


def submission_at(points: list[Point], seconds: float) -> float:
    """The held-out F1 of what the user would submit at ``seconds`` (nan: nothing yet)."""
    return next((f1 for t, f1 in reversed(points) if t <= seconds), float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("runs/bench-people"), help="the people archive")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-time-to-quality"))
    parser.add_argument("--study-people", type=int, default=200)
    parser.add_argument("--held-out", type=int, default=150)
    parser.add_argument("--trials", type=int, default=12, help="the common way's trials")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--keep", type=int, default=5, help="models.keep of the user's study")
    parser.add_argument("--hpo-seconds", type=float, default=None, help="default: the common way's time")
    parser.add_argument("--naive-workers", type=int, default=0, help="DataLoader workers of the common way")
    parser.add_argument("--floor", type=float, default=1.5, help="fold_halving's floor, x chance (0: none)")
    parser.add_argument("--floor-after", type=float, nargs="+", default=[0.0],
                        help="fold_halving's floor_after (the share of the first fold after which a trial at the floor"
                             " stops); several values: one hpo run each after the same common way, in --work/floor-after-V")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    variants = [argparse.Namespace(**{**vars(args), "floor_after": value, "work": work})
                for value in args.floor_after
                for work in [args.work if len(args.floor_after) == 1 else args.work / f"floor-after-{value:g}"]]
    for variant in variants:
        variant.work.mkdir(parents=True, exist_ok=True)
        (variant.work / "hpo.db").unlink(missing_ok=True)
        shutil.rmtree(variant.work / "runs", ignore_errors=True)  # the last run's kept models
    root = args.data / f"{args.study_people}-{args.held_out}"
    truth = np.asarray(write_people(root, args.study_people, args.held_out))
    held_out = root / "held_out"
    held_files = find_inputs(held_out).paths  # info.csv's order, as hpo predict reads it
    specs = [parse_spec(study_dict(root / "study", variant)) for variant in variants]
    device = pick_device()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}; {args.study_people} people to search on, {args.held_out} new people held out"
          f" ({len(truth)} photos), {args.image_size} px", flush=True)

    naive, naive_seconds = common_way(specs[0], args, held_files, truth, device)  # the pruner is hpo's alone
    seconds = args.hpo_seconds or naive_seconds
    curves = [("common way", naive)]
    for spec, variant in zip(specs, variants, strict=True):
        shutil.rmtree(args.work / "cache", ignore_errors=True)
        os.environ["HPO_CACHE"] = str(args.work / "cache")  # an empty cache: its build is timed too
        label = "hpo" if len(variants) == 1 else f"hpo (floor_after {variant.floor_after:g})"
        if len(variants) > 1:
            print(label, flush=True)
        curves.append((label, hpo_way(spec, variant, held_out, truth, seconds, device)))

    target = naive[-1][1]
    t_naive = first_reaching(naive, target)
    print(f"\n{'':<24} {'final held-out F1':>18} {'at s':>7} {'s to ' + format(target, '.4f'):>10}"
          f" {'held-out F1 at 1/4 of that':>28}")
    for label, points in curves:
        reached = first_reaching(points, target)
        final_t, final_f1 = points[-1] if points else (float("nan"), float("nan"))
        quarter = submission_at(points, t_naive / 4)
        print(f"{label:<24} {final_f1:>18.4f} {final_t:>7.0f} {'-' if reached is None else f'{reached:.0f}':>10}"
              f" {quarter:>28.4f}")
    for label, points in curves[1:]:
        reached = first_reaching(points, target)
        if reached is None:
            print(f"{label} did not reach the common way's {target:.4f} on new people in {seconds:.0f} s")
        else:
            print(f"time to the common way's held-out F1: {label} / common way = {reached / t_naive:.2f}")


if __name__ == "__main__":
    main()
