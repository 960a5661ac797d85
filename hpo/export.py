"""`hpo export`: the best trial(s) of a study as one YAML file that `hpo train` reproduces.

The file holds the study file the study was created with (data, cv, normalization), the data's
fingerprint and the fold plan's digest, and per exported trial: its parameters, the typed training
config rebuilt from them by :func:`hpo.config.trial_config` (the function trials use), and the
F1 it measured (mean, std, per fold, best epochs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.trial import FixedTrial, FrozenTrial, TrialState

from hpo import keys
from hpo.config import StudySpec, parse_spec, read_yaml, trial_config
from hpo.data.folds import plan_digest
from hpo.errors import ConfigError
from hpo.files import write_whole
from hpo.train.config import TrainConfig

FORMAT_VERSION = 1
EXPORTABLE = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class ExportedTrial:
    trial: int
    state: str
    value: float | None
    fold_f1: list[float]
    f1_std: float | None
    best_epochs: list[int]
    params: dict[str, Any]
    config: TrainConfig

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial": self.trial, "state": self.state, "value": self.value,
            "f1": {"mean": self.value, "std": self.f1_std, "folds": self.fold_f1},
            "best_epochs": self.best_epochs, "params": self.params, "config": self.config.to_dict(),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ExportedTrial:
        return cls(trial=raw["trial"], state=raw["state"], value=raw["value"],
                   fold_f1=list(raw["f1"]["folds"]), f1_std=raw["f1"]["std"],
                   best_epochs=list(raw["best_epochs"]), params=dict(raw["params"]),
                   config=TrainConfig.from_dict(raw["config"]))


@dataclass(frozen=True)
class Export:
    study: str
    spec: dict[str, Any]  # the study file as the study was created
    data_fingerprint: str
    fold_plan: str  # digest of the stored fold plan
    trials: list[ExportedTrial]

    def study_spec(self, overrides: list[str] | tuple[str, ...] = ()) -> StudySpec:
        """The study's spec; overrides such as ``data.root=/new/place`` for moved data."""
        return parse_spec(self.spec, f"export of study {self.study!r}", overrides)

    def to_dict(self) -> dict[str, Any]:
        return {"hpo_export": FORMAT_VERSION, "study": self.study, "data_fingerprint": self.data_fingerprint,
                "fold_plan": self.fold_plan, "trials": [t.to_dict() for t in self.trials], "spec": self.spec}


def exported(trial: FrozenTrial, spec: StudySpec) -> ExportedTrial:
    attrs = trial.user_attrs
    return ExportedTrial(
        trial=trial.number, state=trial.state.name, value=trial.value,
        fold_f1=list(attrs.get(keys.FOLD_F1, [])), f1_std=attrs.get(keys.F1_STD),
        best_epochs=list(attrs.get(keys.BEST_EPOCHS, [])), params=dict(trial.params),
        config=trial_config(FixedTrial(trial.params, trial.number), spec),
    )


def choose_trials(study: optuna.Study, trial: int | None, top_k: int) -> list[FrozenTrial]:
    """The trial numbered ``trial``, else the ``top_k`` best complete trials (best first)."""
    trials = study.get_trials(deepcopy=False)
    if trial is not None:
        found = [t for t in trials if t.number == trial]
        if not found:
            raise ConfigError(f"study {study.study_name!r} has no trial {trial}; it has trials 0..{len(trials) - 1}")
        if found[0].state not in EXPORTABLE:
            raise ConfigError(f"trial {trial} is {found[0].state.name}; export a COMPLETE (or PRUNED) trial")
        return found
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: -t.value)
    if not complete:
        raise ConfigError(f"study {study.study_name!r} has no complete trial yet; run it first (hpo run)")
    return complete[:top_k]


def export_study(study: optuna.Study, trial: int | None = None, top_k: int = 1) -> Export:
    attrs = study.user_attrs
    if keys.SPEC not in attrs:
        raise ConfigError(f"study {study.study_name!r} was not created by hpo; nothing to export")
    spec = parse_spec(attrs[keys.SPEC], f"study {study.study_name!r} (from storage)")
    chosen = choose_trials(study, trial, top_k)
    return Export(study=study.study_name, spec=attrs[keys.SPEC], data_fingerprint=attrs[keys.DATA_FINGERPRINT],
                  fold_plan=plan_digest(np.asarray(attrs[keys.FOLD_PLAN])),
                  trials=[exported(t, spec) for t in chosen])


def write_export(export: Export, path: Path) -> Path:
    return write_whole(path, yaml.safe_dump(export.to_dict(), sort_keys=False))


def read_export(path: Path) -> Export:
    path = Path(path)
    raw = read_yaml(path, "a file written by hpo export")
    if not isinstance(raw, dict) or raw.get("hpo_export") != FORMAT_VERSION:
        raise ConfigError(f"--config {path}: not an hpo export (version {FORMAT_VERSION}); write one with hpo export")
    try:
        export = Export(study=raw["study"], spec=raw["spec"], data_fingerprint=raw["data_fingerprint"],
                        fold_plan=raw["fold_plan"], trials=[ExportedTrial.from_dict(t) for t in raw["trials"]])
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"--config {path}: incomplete export ({type(e).__name__}: {e}); export it again") from None
    if not export.trials:
        raise ConfigError(f"--config {path}: the export holds no trial; export one (hpo export --trial N or --top-k K)")
    return export
