"""What a study's result scores on people it never saw, by the flow that turns it into a
submission: (a) the best trial retrained (hpo export, hpo train, hpo predict --tta), (b) the
three best averaged (hpo export --top-k 3, same), (c) the selected ensemble (hpo ensemble, hpo
train for the members the study did not keep, hpo predict --tta), without and with its class
offsets. Each flow's wall time after the study; for (c), the nested estimate beside the
held-out F1 and, with --holdout (cv.holdout: that share of the study's people kept out of every
fold), the ensemble's score on them and its estimate, as `hpo ensemble` prints them. Data: bench/people.py's synthetic mask archive, people split before the study.

    python bench/ensemble_flows.py                  # about 15 minutes on 2 CPU cores
    python bench/ensemble_flows.py --trials 24 --study-people 300 --held-out 200
    python bench/ensemble_flows.py --holdout 0.2     # the estimate on people no fold model saw
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from people import RECIPE, write_people  # noqa: E402

from hpo.config import parse_spec  # noqa: E402
from hpo.ensemble import build_ensemble, write_ensemble  # noqa: E402
from hpo.ensemble.complete import complete_ensemble  # noqa: E402
from hpo.ensemble.selection import decide, macro_f1  # noqa: E402
from hpo.export import export_study  # noqa: E402
from hpo.final import train_final  # noqa: E402
from hpo.predict import LoadedModel, find_inputs, load_ensemble, predict_folder, predict_probabilities  # noqa: E402
from hpo.records.artifacts import artifact_location  # noqa: E402
from hpo.run import run_study  # noqa: E402
from hpo.system import pick_device  # noqa: E402


def study_dict(root: Path, args: argparse.Namespace) -> dict:
    return {
        "name": "people",
        "seed": args.seed,
        "sampler": {"type": "tpe", "n_startup_trials": 6},
        "pruner": {"type": args.pruner, **({"n_startup_trials": 4, "n_warmup_steps": 1} if args.pruner == "median" else {})},
        "budget": {"n_trials": args.trials, "max_epochs": args.epochs, "patience": 2},
        "data": {"format": "mask", "root": str(root), "image_size": args.image_size, "normalization": "half"},
        "cv": {"folds": args.folds, "seed": 0, "holdout": args.holdout},
        "models": {"keep": args.keep},
        "output_dir": str(args.work / "runs"),
        "search": {
            "backbone": {"choices": ["resnet10t", "lcnet_050"]},
            **RECIPE,
            "head": {"choices": ["single", "factorized"]},
            "sampling": {"choices": ["uniform", "weighted"]},
            "augment": {"ops": {"hflip": {"enabled": True, "p": 0.5},
                                "brightness_contrast": {"enabled": {"choices": [True, False]}, "magnitude": 0.3}}},
        },
    }


def held_out_f1(probabilities: np.ndarray, truth: np.ndarray, offsets: np.ndarray | None = None) -> float:
    return macro_f1(truth, decide(probabilities, offsets), 18)


def views(loaded: LoadedModel, paths: list[Path], device) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """One model's probabilities on the plain images and on the flipped ones (hpo predict's TTA
    averages the two; the flipped view is recovered from that average)."""
    plain = predict_probabilities([loaded], paths, device)
    return plain, 2 * predict_probabilities([loaded], paths, device, tta=True) - plain


def decompose(path: Path, held_out: Path, truth: np.ndarray, device) -> dict[str, float]:  # noqa: ANN001
    """Where the ensemble's held-out F1 comes from: its members' fold-k models alone (what the
    out-of-fold predictions and the nested estimate score), then every fold averaged, then the
    flipped views too. Each model predicts each view once; the mixes are weighted averages."""
    models, _, _ = load_ensemble(path, device)
    paths = find_inputs(held_out).paths
    plain, flipped = zip(*(views(loaded, paths, device) for loaded in models), strict=True)
    weights = np.asarray([m.weight for m in models])
    folds = np.asarray([int(m.name.rsplit("fold", 1)[1]) for m in models])

    def mix(rows: list[np.ndarray], chosen: np.ndarray) -> np.ndarray:
        return sum(w * r for w, r, c in zip(weights, rows, chosen, strict=True) if c) / weights[chosen].sum()

    per_fold = [held_out_f1(mix(plain, folds == k), truth) for k in np.unique(folds)]
    everything = np.ones(len(models), bool)
    averaged = mix(plain, everything)
    return {"one fold's models (mean over folds)": float(np.mean(per_fold)),
            "every fold averaged": held_out_f1(averaged, truth),
            "every fold, flipped views too": held_out_f1((averaged + mix(flipped, everything)) / 2, truth)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/bench-ensemble"))
    parser.add_argument("--data", type=Path, help="the people archive (default: WORK/people)")
    parser.add_argument("--study-people", type=int, default=200)
    parser.add_argument("--held-out", type=int, default=150)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--keep", type=int, default=5)
    parser.add_argument("--pool", type=int, default=0, help="hpo ensemble --pool (0: the study's models.keep)")
    parser.add_argument("--pruner", default="median")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--holdout", type=float, default=0.0, help="cv.holdout of the study")
    args = parser.parse_args()
    args.data = args.data or args.work / "people"
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HPO_CACHE", str(args.work / "cache"))
    truth = np.asarray(write_people(args.data, args.study_people, args.held_out))
    held_out = args.data / "held_out"
    spec = parse_spec(study_dict(args.data / "study", args))
    device = pick_device()
    started = time.perf_counter()
    study = run_study(spec, f"sqlite:///{args.work / 'people.db'}", live=False).study
    print(f"study: {len(study.trials)} trials in {time.perf_counter() - started:.0f} s, best CV macro F1"
          f" {study.best_value:.4f} (trial {study.best_trial.number})", flush=True)
    rows = []

    def retrained(name: str, top_k: int) -> None:
        began = time.perf_counter()
        exported = export_study(study, None, top_k)
        final = train_final(exported, args.work / f"final-{top_k}", "folds", device)
        done = predict_folder(final.out, held_out, args.work / f"{name}.csv", tta=True, device=device)
        rows.append((name, held_out_f1(done.probabilities, truth), time.perf_counter() - began, {}))

    retrained("(a) best trial retrained", 1)
    retrained("(b) top-3 retrained, averaged", 3)
    began = time.perf_counter()
    ensemble = build_ensemble(study, artifact_location(spec), offsets=True, pool=args.pool)
    path = write_ensemble(ensemble, args.work / "ensemble.yaml")
    selected = time.perf_counter() - began
    _, trained = complete_ensemble(path, args.work / "ensemble-models", device)
    done = predict_folder(path, held_out, args.work / "ensemble.csv", tta=True, device=device)
    seconds = time.perf_counter() - began
    offsets = np.asarray(ensemble.offsets)
    nested = ensemble.scores["nested"]
    without = build_ensemble(study, artifact_location(spec), offsets=False, pool=args.pool).scores

    def estimates(scores: dict, nested_f1: float) -> dict[str, float]:
        held = scores.get("held_out", {})
        return {"nested": nested_f1, "cv.holdout people": held.get("macro_f1_tta"),
                "± (people)": held.get("standard_error"), "estimate": scores.get("estimate")}

    rows.append(("(c) ensemble", held_out_f1(done.probabilities, truth), seconds,
                 estimates(without, nested["macro_f1"])))
    rows.append(("(c) ensemble + class offsets", held_out_f1(done.probabilities, truth, offsets), seconds,
                 estimates(ensemble.scores, nested["with_offsets"])))
    plain = without.get("held_out")
    members = ", ".join(f"{m.trial.trial} x{m.weight:.2f}" for m in ensemble.members)
    retrained_members = sorted({m.trial for m in trained.models}) if trained else []
    print(f"ensemble: {members}; out-of-fold macro F1 {ensemble.scores['oof_macro_f1']:.4f} (best single"
          f" {ensemble.scores['best_single']['oof_macro_f1']:.4f}); selection {selected:.1f} s; members retrained:"
          f" {retrained_members or 'none'}")
    print("\nwhere the ensemble's held-out F1 comes from (its out-of-fold macro F1:"
          f" {ensemble.scores['oof_macro_f1']:.4f}; nested estimate {nested['macro_f1']:.4f}):")
    for name, f1 in decompose(path, held_out, truth, device).items():
        print(f"  {name:<34} {f1:.4f}")
    if plain:
        print(f"\ncv.holdout: {plain['images']} study images held out of every fold; the best single trial's"
              f" fold models score {plain['best_single_tta']:.4f} there; the estimate is the nested one plus what"
              f" averaging folds and views adds there ({plain['averaging_gain']:+.4f})")
    columns = ["nested", "cv.holdout people", "± (people)", "estimate"]
    print(f"\n{'flow after the study':<32} {'held-out macro F1':>18}" + "".join(f" {c:>18}" for c in columns)
          + f" {'wall s':>8}")
    for name, f1, seconds, scored in rows:
        cells = "".join(f" {'' if scored.get(c) is None else f'{scored[c]:.4f}':>18}" for c in columns)
        print(f"{name:<32} {f1:>18.4f}{cells} {seconds:>8.1f}")

if __name__ == "__main__":
    main()
