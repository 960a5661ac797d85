"""The same search done the common way against `hpo run`: wall time, trials, best macro F1.

Both run the same study (backbones, search space, sampler and seed, budget, folds, data: a
folder of 384 x 512 JPEGs). The common way, as public solutions of the mask competition do it:
one process, every image decoded with PIL and transformed with torchvision in every epoch of
every fold, every trial trained for all its epochs (no pruning, no early stopping), the same
recipe otherwise (hpo's model, optimizer, schedule and loss registries). hpo: `run_study` with
the decoded cache (built inside the timed run), the median pruner and early stopping.

    python bench/naive_vs_hpo.py                       # about 10 minutes on 2 CPU cores
    python bench/naive_vs_hpo.py --trials 20 --per-class 200 --image-size 128
    python bench/naive_vs_hpo.py --equal-time          # and hpo's best F1 in the common way's time
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_photos  # noqa: E402
from common_way import fit  # noqa: E402

from hpo.config import (
    parse_spec,  # noqa: E402
    trial_config,  # noqa: E402
)
from hpo.data import cache  # noqa: E402
from hpo.data.folds import iter_folds, make_fold_plan  # noqa: E402
from hpo.data.formats import load_table  # noqa: E402
from hpo.system import pick_device  # noqa: E402


def study_dict(root: Path, args: argparse.Namespace) -> dict:
    return {
        "name": "naive_vs_hpo",
        "seed": 0,
        "sampler": {"type": "tpe", "n_startup_trials": 4},
        "pruner": {"type": "median", "n_startup_trials": 3, "n_warmup_steps": 1},
        "budget": {"n_trials": args.trials, "max_epochs": args.epochs, "patience": 2},
        "data": {"format": "imagefolder", "root": str(root), "image_size": args.image_size,
                 "normalization": "half"},
        "cv": {"folds": args.folds, "seed": 0},
        "search": {
            "backbone": {"choices": ["resnet10t", "lcnet_050"]},
            "optimizer": {"choose": {"adamw": {}, "sgd": {"momentum": 0.9}}},
            "lr": {"low": 3e-4, "high": 3e-2, "log": True},
            "weight_decay": {"low": 1e-5, "high": 1e-2, "log": True},
            "scheduler": {"choose": ["cosine", "constant"]},
            "loss": {"choose": {"cross_entropy": {}, "label_smoothing": {"epsilon": 0.1}}},
            "batch_size": 32,
            "augment": {"preset": "none", "ops": {"hflip": {"p": 0.5}}},
        },
    }


def naive_objective(spec, table, plan, device: torch.device, workers: int):
    files = list(table.files)

    def objective(trial: optuna.Trial) -> float:
        cfg = trial_config(trial, spec)
        return float(np.mean([fit(cfg, files, table.labels, train_idx, val_idx, table.num_classes,
                                  spec.data.image_size, spec.data.mean, spec.data.std, device, workers).best_f1
                              for _, train_idx, val_idx in iter_folds(plan)]))

    return objective


def tally(study: optuna.Study) -> str:
    states = [t.state.name for t in study.trials]
    return (f"{states.count('COMPLETE')} complete + {states.count('PRUNED')} pruned, best macro F1"
            f" {study.best_value:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=60, help="photos per class (6 classes)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--naive-workers", type=int, default=0, help="DataLoader workers of the common way")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "hpo-bench-photos")
    parser.add_argument("--equal-time", action="store_true",
                        help="then resume hpo's study for the rest of the common way's wall time: its best F1 in equal time")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root = write_photos(args.data / f"6x{args.per_class}", 6, args.per_class)
    spec = parse_spec(study_dict(root, args))
    device = pick_device()
    table = load_table("imagefolder", {"root": str(root)})
    plan = make_fold_plan(table, spec.cv.folds, spec.cv.seed)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}; {len(table)} photos 384x512, {args.image_size} px, {args.trials} trials x"
          f" {args.folds} folds x up to {args.epochs} epochs", flush=True)

    # hpo first: where the common way is cut short by a time limit, hpo's figure is already out.
    from hpo.run import run_study

    work = Path(tempfile.mkdtemp(prefix="hpo-bench-"))
    os.environ[cache.ENV_CACHE] = str(work / "cache")  # an empty cache: its build is timed too
    started = time.perf_counter()
    spec = spec.model_copy(update={"output_dir": work / "runs"})
    storage = f"sqlite:///{work / 'study.db'}"
    result = run_study(spec, storage, live=False)
    hpo_seconds = time.perf_counter() - started
    print(f"hpo run:    {hpo_seconds:.0f} s, {tally(result.study)}", flush=True)
    started = time.perf_counter()
    naive = optuna.create_study(direction="maximize", sampler=spec.build_sampler())
    def progress(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:  # figures even if cut short
        print(f"  common way: {trial.number + 1} trials in {time.perf_counter() - started:.0f} s, best macro F1"
              f" {study.best_value:.4f}", flush=True)

    naive.optimize(naive_objective(spec, table, plan, device, args.naive_workers), n_trials=args.trials,
                   callbacks=[progress])
    naive_seconds = time.perf_counter() - started
    print(f"common way: {naive_seconds:.0f} s, {len(naive.trials)} trials complete, best macro F1"
          f" {naive.best_value:.4f}", flush=True)

    print(f"speed-up: x{naive_seconds / hpo_seconds:.2f} for the same {args.trials} trials", flush=True)
    if args.equal_time and naive_seconds <= hpo_seconds:
        print("hpo run in the common way's time: none left, hpo took longer", flush=True)
    elif args.equal_time:  # the same study resumed: its trials so far count, and so does their time
        started = time.perf_counter()
        result = run_study(spec, storage, n_trials=10**6, timeout=naive_seconds - hpo_seconds, live=False)
        print(f"hpo run in the common way's time: {hpo_seconds + time.perf_counter() - started:.0f} s,"
              f" {tally(result.study)}", flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
