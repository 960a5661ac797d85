"""`hpo ensemble`: the study's complete trials, combined into the ensemble that scores best out
of fold (hpo.ensemble.selection), written as one file that `hpo predict` uses with the fold models
the study kept, and `hpo train` completes where it kept none.

The file holds the study file, the data fingerprint and fold-plan digest, the classes, each
member (its trial's parameters and training config, its weight, and its fold checkpoints: kept
artifacts, or files `hpo train` wrote), the per-class offsets, and the scores: the best single
trial's out-of-fold macro F1, the ensemble's, the nested estimate of its F1 on new data and,
with cv.holdout, its F1 on the people held out of every fold (what is submitted, scored).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.trial import TrialState

from hpo import keys
from hpo.config import read_yaml
from hpo.data.folds import HELD_OUT
from hpo.ensemble.selection import (
    Estimate,
    decide,
    fit_offsets,
    macro_f1,
    nested_estimate,
    resampled_spread,
    select,
)
from hpo.errors import ConfigError, DataError
from hpo.export import Export, ExportedTrial, exported
from hpo.files import write_whole
from hpo.records.artifacts import open_artifact_store
from hpo.records.models import kept
from hpo.records.oof import read_oof

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Member:
    """One trial of the ensemble: what `hpo export` holds of it, its weight and its fold models
    (each ``{fold, sha256, artifact_id}`` in the study's artifact store, or ``{fold, sha256,
    file}`` written by `hpo train`; empty: none yet)."""

    trial: ExportedTrial
    weight: float
    oof_f1: float
    checkpoints: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"weight": self.weight, "oof_f1": self.oof_f1, "checkpoints": self.checkpoints, **self.trial.to_dict()}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Member:
        return cls(ExportedTrial.from_dict(raw), float(raw["weight"]), float(raw["oof_f1"]), list(raw["checkpoints"]))


@dataclass(frozen=True)
class Ensemble:
    study: str
    spec: dict[str, Any]
    data_fingerprint: str
    fold_plan: str
    classes: list[str]
    artifacts: str  # the artifact store its kept checkpoints are in
    members: list[Member]
    offsets: list[float] | None
    scores: dict[str, Any]

    def export(self, members: list[Member] | None = None) -> Export:
        """The members as an export, for `hpo train` (the study's folds and seeds)."""
        chosen = self.members if members is None else members
        return Export(self.study, self.spec, self.data_fingerprint, self.fold_plan, [m.trial for m in chosen])

    def missing(self) -> list[Member]:
        """Members without fold models."""
        return [m for m in self.members if not m.checkpoints]

    def to_dict(self) -> dict[str, Any]:
        return {"hpo_ensemble": FORMAT_VERSION, "study": self.study, "data_fingerprint": self.data_fingerprint,
                "fold_plan": self.fold_plan, "classes": self.classes, "artifacts": self.artifacts,
                "scores": self.scores, "offsets": self.offsets, "members": [m.to_dict() for m in self.members],
                "spec": self.spec}


def is_ensemble_file(path: Path) -> bool:
    path = Path(path)
    if not path.is_file() or path.suffix not in (".yaml", ".yml"):
        return False
    raw = read_yaml(path, "a file written by hpo ensemble", DataError)
    return isinstance(raw, dict) and "hpo_ensemble" in raw


def read_ensemble(path: Path) -> Ensemble:
    raw = read_yaml(Path(path), "a file written by hpo ensemble", DataError)
    if not isinstance(raw, dict) or raw.get("hpo_ensemble") != FORMAT_VERSION:
        raise DataError(f"{path}: not an hpo ensemble (version {FORMAT_VERSION}); write one with hpo ensemble")
    try:
        return Ensemble(raw["study"], raw["spec"], raw["data_fingerprint"], raw["fold_plan"], list(raw["classes"]),
                        raw["artifacts"], [Member.from_dict(m) for m in raw["members"]],
                        list(raw["offsets"]) if raw.get("offsets") is not None else None, dict(raw["scores"]))
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: incomplete ensemble file ({type(e).__name__}: {e}); write it again with hpo ensemble") from None


def write_ensemble(ensemble: Ensemble, path: Path) -> Path:
    return write_whole(path, yaml.safe_dump(ensemble.to_dict(), sort_keys=False))


@dataclass(frozen=True)
class Candidates:
    trials: list[optuna.trial.FrozenTrial]
    probabilities: list[np.ndarray]
    labels: np.ndarray
    folds: np.ndarray
    without: list[int]  # complete trials that stored no out-of-fold predictions
    held_out: list[np.ndarray] | None = None  # per trial (folds, 2 views, samples, classes), with cv.holdout
    held_out_labels: np.ndarray | None = None
    held_out_groups: np.ndarray | None = None  # their people (None in records written before groups)


def candidates(study: optuna.Study, artifacts: str, exclude: set[int] = frozenset(), pool: int | None = None) -> Candidates:
    """The out-of-fold probabilities of the best ``pool`` complete trials (all: None), checked
    against the study's data and folds."""
    from hpo.data.folds import plan_digest

    attrs = study.user_attrs
    if keys.SPEC not in attrs:
        raise ConfigError(f"study {study.study_name!r} was not created by hpo; nothing to ensemble")
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.number not in exclude]
    if not complete:
        raise ConfigError(f"study {study.study_name!r} has no complete trial yet; run it first (hpo run)")
    with_oof = sorted((t for t in complete if keys.OOF in t.user_attrs), key=lambda t: (-t.value, t.number))[:pool]
    if not with_oof:
        raise ConfigError(f"no complete trial of study {study.study_name!r} stored its out-of-fold predictions"
                          " (trials run before hpo kept them); run more trials, or use hpo export --top-k")
    store = open_artifact_store(artifacts)
    fingerprint, digest = attrs[keys.DATA_FINGERPRINT], plan_digest(np.asarray(attrs[keys.FOLD_PLAN]))
    probabilities, held, labels, folds, groups = [], [], None, None, None
    for trial in with_oof:
        oof = read_oof(store, trial.user_attrs[keys.OOF], trial.number)
        if oof.fingerprint != fingerprint or oof.plan_digest != digest:
            raise DataError(f"trial {trial.number}: its out-of-fold predictions are of other data or folds than"
                            f" study {study.study_name!r} (fingerprint {oof.fingerprint}, plan {oof.plan_digest});"
                            f" leave it out (--exclude {trial.number})")
        if labels is None:
            labels, folds, groups = oof.labels, oof.fold, oof.groups
            in_folds = folds != HELD_OUT  # selection sees out-of-fold rows only; held-out ones score it
        probabilities.append(oof.probabilities[in_folds])
        held.append(oof.held_out)
    without = [t.number for t in complete if keys.OOF not in t.user_attrs]
    if any(h is None for h in held):
        return Candidates(with_oof, probabilities, labels[in_folds], folds[in_folds], without)
    return Candidates(with_oof, probabilities, labels[in_folds], folds[in_folds], without, held, labels[~in_folds],
                      groups[~in_folds] if groups is not None else None)


def held_out_scores(found: Candidates, weights: dict[int, float], offsets: np.ndarray | None,
                    best: int) -> dict[str, Any]:
    """Macro F1 on the samples held out of every fold (cv.holdout) of what is submitted: every
    member's fold models averaged by the members' weights (and the two views, with --tta), the
    offsets applied; beside it, the fold models of the ``best`` single trial alike. No fold model trained
    on these samples and the selection never saw them: an unbiased estimate on new people, whose
    standard error is the spread of the score over the held-out people resampled."""
    labels, classes = found.held_out_labels, found.held_out[0].shape[-1]
    views = sum(w * found.held_out[m].mean(0) for m, w in weights.items())  # (2 views, samples, classes)
    submitted = decide(views.mean(0), offsets)
    f1 = macro_f1(labels, submitted, classes)
    folds = found.held_out[0].shape[0]
    one_fold = np.mean([macro_f1(labels, decide(sum(w * found.held_out[m][k, 0] for m, w in weights.items()), offsets),
                                 classes) for k in range(folds)])
    scores = {"images": len(labels),
              "macro_f1": round(macro_f1(labels, decide(views[0], offsets), classes), 5),
              "macro_f1_tta": round(f1, 5),
              "best_single_tta": round(macro_f1(labels, found.held_out[best].mean((0, 1)).argmax(1), classes), 5),
              # What averaging every fold's models and both views adds to one fold's models, which
              # is all an out-of-fold row (and so the nested estimate) sees: a difference on the
              # same people, far steadier than either score on a few people.
              "averaging_gain": round(f1 - float(one_fold), 5)}
    if found.held_out_groups is not None:
        people = np.unique(found.held_out_groups)
        scores["people"] = len(people)
        scores["standard_error"] = round(resampled_spread(labels, submitted, found.held_out_groups, classes), 5)
    return scores


def build_ensemble(study: optuna.Study, artifacts: str, max_members: int = 20, init: int = 3,
                   offsets: bool = False, exclude: set[int] = frozenset(), pool: int | None = 0) -> Ensemble:
    """Select members, weights and (with ``offsets``) per-class offsets from the out-of-fold
    probabilities of the best ``pool`` complete trials: 0 (the default) takes the study's
    ``models.keep``, whose fold models are kept, so the ensemble needs no training (measured: a
    pool of weak trials too fits noise out of fold, BENCHMARKS.md); None takes every trial.
    Offsets are off unless asked: fitted out of fold, they lost on new people in 4 of 5 benchmark
    studies (BENCHMARKS.md), and the nested estimate did not tell which."""
    from hpo.config import parse_spec
    from hpo.data.folds import plan_digest

    spec = parse_spec(study.user_attrs[keys.SPEC], f"study {study.study_name!r} (from storage)")
    if pool == 0:
        pool = spec.models.keep or None
    found = candidates(study, artifacts, exclude, pool)
    classes = len(study.user_attrs[keys.CLASSES])
    singles = [macro_f1(found.labels, p.argmax(1), classes) for p in found.probabilities]
    best = int(np.argmax(singles))
    chosen = select(found.probabilities, found.labels, max_members, init)
    average = chosen.average(found.probabilities)
    fitted, with_offsets = fit_offsets(average, found.labels)
    estimate: Estimate = nested_estimate(found.probabilities, found.labels, found.folds, max_members, init)
    stored = {k.trial: k for k in kept(study)}
    members = []
    for index, weight in chosen.weights.items():
        trial = found.trials[index]
        checkpoints = [{"fold": c.fold, "sha256": c.sha256, "artifact_id": c.artifact_id}
                       for c in stored[trial.number].checkpoints] if trial.number in stored else []
        members.append(Member(exported(trial, spec), round(weight, 6), round(singles[index], 5), checkpoints))
    members.sort(key=lambda m: -m.weight)
    offset_values = np.round(fitted, 4) if offsets else None
    scores = {
        "candidates": len(found.trials), "pool": [t.number for t in found.trials], "left_out": found.without,
        "best_single": {"trial": found.trials[best].number, "oof_macro_f1": round(singles[best], 5)},
        "oof_macro_f1": round(chosen.score, 5), "oof_macro_f1_with_offsets": round(with_offsets, 5),
        "nested": {"macro_f1": round(estimate.mean, 5), "with_offsets": round(estimate.mean_with_offsets, 5),
                   "per_fold": [round(f, 5) for f in estimate.per_fold],
                   "with_offsets_per_fold": [round(f, 5) for f in estimate.with_offsets]},
        "offsets_used": bool(offsets),
    }
    if found.held_out is not None:
        held = scores["held_out"] = held_out_scores(found, chosen.weights, offset_values, best)
        nested = estimate.mean_with_offsets if offsets else estimate.mean
        scores["estimate"] = round(nested + held["averaging_gain"], 5)
    attrs = study.user_attrs
    return Ensemble(study.study_name, attrs[keys.SPEC], attrs[keys.DATA_FINGERPRINT],
                    plan_digest(np.asarray(attrs[keys.FOLD_PLAN])), list(attrs[keys.CLASSES]), artifacts, members,
                    offset_values.tolist() if offset_values is not None else None, scores)


def with_files(ensemble: Ensemble, trained: dict[int, list[dict[str, Any]]]) -> Ensemble:
    """The ensemble with the fold models `hpo train` wrote for the members it lacked."""
    return replace(ensemble, members=[replace(m, checkpoints=trained.get(m.trial.trial, m.checkpoints))
                                      for m in ensemble.members])


__all__ = ["Ensemble", "Member", "build_ensemble", "is_ensemble_file", "read_ensemble", "with_files", "write_ensemble"]
