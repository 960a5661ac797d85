"""Every kept trial's out-of-fold probabilities beside what its fold models predict on the
held-out people, in one .npz: the test bed on which a selection or an estimate of the ensemble
(hpo.ensemble.selection) is compared with the truth, in seconds, without training anything.

Run bench/ensemble_flows.py first with --keep at least its number of trials (so every complete
trial's fold models are kept), then:

    python bench/ensemble_flows.py --keep 16
    python bench/ensemble_rig.py                       # writes runs/bench-ensemble/rig.npz

The file holds ``trials`` (T,), ``oof`` (T, N, C), ``labels`` and ``folds`` (N,), ``held``
(T, K, 2, M, C: trial, fold model, view (plain, flipped), held-out image, class) and ``truth`` (M,);
with cv.holdout, ``study_held`` (T, K, 2, H, C): the same of the study's own people held out of
every fold, as the trial stored them (their rows are ``folds`` == -1).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import optuna
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ensemble_flows import views  # noqa: E402
from people import write_people  # noqa: E402

from hpo import keys  # noqa: E402
from hpo.config import parse_spec  # noqa: E402
from hpo.data.folds import HELD_OUT  # noqa: E402
from hpo.data.formats import load_table  # noqa: E402
from hpo.ensemble.selection import macro_f1, resampled_spread  # noqa: E402
from hpo.predict import find_inputs, load_kept_model  # noqa: E402
from hpo.records.artifacts import artifact_location, open_artifact_store  # noqa: E402
from hpo.records.models import kept  # noqa: E402
from hpo.records.oof import read_oof  # noqa: E402
from hpo.system import pick_device  # noqa: E402

CLASSES = 18


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/bench-ensemble"))
    parser.add_argument("--data", type=Path, help="the people archive (default: WORK/people)")
    parser.add_argument("--study", default="people")
    args = parser.parse_args()
    args.data = args.data or args.work / "people"
    study = optuna.load_study(study_name=args.study, storage=f"sqlite:///{args.work / 'people.db'}")
    spec = parse_spec(study.user_attrs[keys.SPEC])
    store = open_artifact_store(artifact_location(spec))
    truth = np.asarray(write_people(args.data, 0, 0))  # the held-out classes it wrote
    paths = find_inputs(args.data / "held_out").paths
    device = pick_device()
    by_number = {t.number: t for t in study.trials}
    trials, oof, held, study_held = [], [], [], []
    for entry in sorted(kept(study), key=lambda k: k.trial):
        stored = read_oof(store, by_number[entry.trial].user_attrs[keys.OOF], entry.trial)
        predicted = []
        for checkpoint in sorted(entry.checkpoints, key=lambda c: c.fold):
            predicted.append(views(load_kept_model(store, checkpoint.artifact_id, device), paths, device))
        trials.append(entry.trial)
        oof.append(stored.probabilities)
        held.append(predicted)
        if stored.held_out is not None:
            study_held.append(stored.held_out)
        labels, folds = stored.labels, stored.fold
        print(f"trial {entry.trial}: CV {entry.value:.4f}, {len(predicted)} fold models", flush=True)
    out = args.work / "rig.npz"
    np.savez_compressed(out, trials=np.asarray(trials), oof=np.asarray(oof, np.float32), labels=labels, folds=folds,
                        held=np.asarray(held, np.float32), truth=truth,
                        **({"study_held": np.asarray(study_held, np.float32)} if study_held else {}))
    print(f"{out}: {len(trials)} trials, {len(truth)} held-out images")
    if study_held:
        rows = folds == HELD_OUT
        people = load_table(spec.data.format, spec.data.options).groups[rows]
        compare_estimate(args.work / "ensemble.yaml", trials, np.asarray(held), np.asarray(study_held), truth,
                         labels[rows], people)


def compare_estimate(path: Path, trials: list[int], held: np.ndarray, study_held: np.ndarray, truth: np.ndarray,
                     labels: np.ndarray, people: np.ndarray) -> None:
    """The ensemble's (WORK/ensemble.yaml, without offsets) score on the study people held out of
    every fold, with its spread over them, beside its score on the held-out people."""
    members = yaml.safe_load(path.read_text())["members"]
    index = {t: i for i, t in enumerate(trials)}

    def submitted(probabilities: np.ndarray) -> np.ndarray:  # (T, K, 2, M, C) -> the --tta vote
        return sum(m["weight"] * probabilities[index[m["trial"]]].mean((0, 1)) for m in members).argmax(1)

    estimate = submitted(study_held)
    print(f"cv.holdout estimate ({len(np.unique(people))} people): {macro_f1(labels, estimate, CLASSES):.4f}"
          f" ± {resampled_spread(labels, estimate, people, CLASSES):.4f};"
          f" on the held-out people: {macro_f1(truth, submitted(held), CLASSES):.4f}")


if __name__ == "__main__":
    main()
