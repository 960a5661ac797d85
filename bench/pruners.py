"""The pruners compared at equal wall time on the same data and seeds: how soon each reaches a
target CV macro F1, its best CV F1 at half and all of the time, and the held-out macro F1 of
what the study gives a user (the `hpo ensemble` of its kept fold models, no training).

Data: scikit-learn's digits written as an image folder, a stratified fifth held out of the
study (images never seen by any trial); the search is studies/digits.yaml's, only the pruner
changes. Every study runs in this process (one worker, as `hpo run --study digits` does).

    python bench/pruners.py                         # 6 pruners x 150 s, about 17 minutes on 2 CPU cores
    python bench/pruners.py --seconds 300 --pruners median fold_halving
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import yaml
from optuna.trial import TrialState
from PIL import Image
from rich.console import Console
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from hpo.config import parse_spec
from hpo.ensemble import build_ensemble, write_ensemble
from hpo.ensemble.selection import macro_f1
from hpo.predict import predict_folder
from hpo.records.artifacts import artifact_location
from hpo.run import run_study

ROOT = Path(__file__).resolve().parent.parent
PRUNERS = {
    "none": {},
    "median": {"n_startup_trials": 3, "n_warmup_steps": 1},
    "successive_halving": {},
    "hyperband": {},
    "wilcoxon": {"p_threshold": 0.3},  # 3 folds: 0.1 could never stop a trial before its last fold
    "fold_halving": {"eta": 3, "within_fold_args": {"n_startup_trials": 3, "n_warmup_steps": 1}},
}


def write_digits(folder: Path, seed: int) -> np.ndarray:
    """study/<class>/*.png and held_out/*.png (sorted = truth order); returns the held-out labels."""
    digits = load_digits()
    pixels = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    index = np.arange(len(pixels))
    study, held = train_test_split(index, test_size=0.2, stratify=digits.target, random_state=seed)
    for i in study:
        path = folder / "study" / str(digits.target[i]) / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i]).convert("RGB").save(path)
    (folder / "held_out").mkdir(parents=True, exist_ok=True)
    for n, i in enumerate(held):
        Image.fromarray(pixels[i]).convert("RGB").save(folder / "held_out" / f"{n:05d}.png")
    return digits.target[held]


def study_dict(pruner: str, data: Path, work: Path, seed: int) -> dict:
    study = yaml.safe_load((ROOT / "studies" / "digits.yaml").read_text())
    study.update(name=f"digits-{pruner}", seed=seed, output_dir=str(work / pruner))
    study["pruner"] = {"type": pruner, **PRUNERS[pruner]}
    study["data"] = {**study["data"], "format": "imagefolder", "root": str(data)}
    study["budget"]["n_trials"] = 1000  # the time decides
    return study


def best_by_time(study) -> list[tuple[float, float]]:
    """(seconds since the first trial started, best CV F1 so far) at each complete trial."""
    start = min(t.datetime_start for t in study.trials)
    # COMPLETE only: a pruned trial keeps its last report as its value, one fold's F1, not a CV one
    complete = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.datetime_complete)
    best, curve = -1.0, []
    for t in complete:
        best = max(best, t.value)
        curve.append(((t.datetime_complete - start).total_seconds(), best))
    return curve


def best_at(curve: list[tuple[float, float]], seconds: float) -> float:
    return max((f1 for t, f1 in curve if t <= seconds), default=float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/bench-pruners"))
    parser.add_argument("--seconds", type=float, default=150)
    parser.add_argument("--target", type=float, default=0.95, help="CV macro F1 to reach")
    parser.add_argument("--pruners", nargs="+", default=list(PRUNERS), choices=list(PRUNERS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HPO_CACHE", str(args.work / "cache"))
    truth = write_digits(args.work / "digits", args.seed)
    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115 - the table below is the output
    rows = []
    for pruner in args.pruners:
        spec = parse_spec(study_dict(pruner, args.work / "digits" / "study", args.work, args.seed))
        db = args.work / f"{pruner}.db"
        db.unlink(missing_ok=True)
        started = time.perf_counter()
        study = run_study(spec, f"sqlite:///{db}", timeout=args.seconds, console=quiet, live=False).study
        wall = time.perf_counter() - started
        curve = best_by_time(study)
        reached = next((t for t, f1 in curve if f1 >= args.target), None)
        ensemble = build_ensemble(study, artifact_location(spec))
        path = write_ensemble(ensemble, args.work / f"{pruner}-ensemble.yaml")
        done = predict_folder(path, args.work / "digits" / "held_out", args.work / f"{pruner}.csv")
        held_out = macro_f1(truth, done.predicted, 10)  # the submission's classes, offsets applied
        states = [t.state.name for t in study.trials]
        rows.append((pruner, len(states), states.count("COMPLETE"), states.count("PRUNED"), wall, reached,
                     best_at(curve, args.seconds / 2), best_at(curve, args.seconds), held_out))
        print(f"{pruner}: done in {wall:.0f} s", flush=True)
    print(f"\n{'pruner':<20} {'trials':>6} {'complete':>8} {'pruned':>6} {'wall s':>7} "
          f"{'s to CV ' + format(args.target, 'g'):>11} {'best CV @1/2':>12} {'best CV':>8} {'held-out F1':>11}")
    for pruner, n, complete, pruned, wall, reached, half, full, held in rows:
        print(f"{pruner:<20} {n:>6} {complete:>8} {pruned:>6} {wall:>7.0f} "
              f"{'-' if reached is None else f'{reached:.0f}':>11} {half:>12.4f} {full:>8.4f} {held:>11.4f}")


if __name__ == "__main__":
    main()
