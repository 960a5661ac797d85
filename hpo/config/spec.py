"""The whole study file as one typed object, and the one function that turns a trial into a
training config."""

from __future__ import annotations

import warnings
from operator import attrgetter
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.exceptions import ExperimentalWarning
from pydantic import ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from hpo.config.sections import (
    BudgetSpec,
    CVSpec,
    DataSpec,
    ModelsSpec,
    PrunerSpec,
    SamplerSpec,
    TrainSpec,
    WorkersSpec,
    _Model,
    shape_only,
)
from hpo.errors import ConfigError
from hpo.space import SearchSpace, check_params, parse_search, sample
from hpo.strategy import PRUNERS, SAMPLERS, ReportSteps, check_folds_for_pruner, report_steps
from hpo.train.config import TrainConfig, knobs


class StudySpec(_Model):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    direction: Literal["maximize"] = "maximize"
    metric: Literal["macro_f1"] = "macro_f1"
    seed: int = 0
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()
    budget: BudgetSpec = BudgetSpec()
    data: DataSpec
    cv: CVSpec = CVSpec()
    workers: WorkersSpec = WorkersSpec()
    models: ModelsSpec = ModelsSpec()
    train: TrainSpec = TrainSpec()
    # Trackers by name, with their arguments (a mapping once validated; see the validator).
    tracking: dict[str, Any] = Field(default_factory=dict, description="trackers by name, with their arguments")
    search: SearchSpace
    seed_trials: list[dict[str, Any]] = Field(default_factory=list, description="parameters run first")
    output_dir: Path | None = None
    artifacts: str | None = Field(None, description="artifact store: a folder or s3://bucket")
    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)

    @property
    def raw(self) -> dict[str, Any]:
        """The study file as written (with overrides applied): stored with the study."""
        return self._raw

    @field_validator("search", mode="before")
    @classmethod
    def _search(cls, value: Any, info: ValidationInfo) -> SearchSpace:
        if isinstance(value, SearchSpace):
            return value
        if not isinstance(value, dict):
            raise ConfigError("search: expected a mapping of parameters")
        return parse_search(value, names=not shape_only(info))

    @field_validator("tracking", mode="before")
    @classmethod
    def _tracking(cls, value: Any, info: ValidationInfo) -> dict[str, dict[str, Any]]:
        """``{name: {arguments}}`` (a scalar: the first argument; true: the defaults; null or
        false: off), each name a tracker entry and each argument one it takes."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError("tracking: expected a mapping of trackers, e.g. {tensorboard: {folder: runs/tb}}")
        if shape_only(info):
            return {name: args for name, args in value.items() if args not in (None, False)}
        from hpo.tracking import check_tracking, tracker_arguments

        for name in value:  # the name first: an unknown one takes no arguments to look up
            check_tracking({name: {}})
        tracking = {name: args for name, raw in value.items() if (args := tracker_arguments(name, raw)) is not None}
        check_tracking(tracking)
        return tracking

    @model_validator(mode="after")
    def _seed_trials(self) -> StudySpec:
        for i, params in enumerate(self.seed_trials):
            check_params(self.search, params, f"seed_trials[{i}]")
        return self

    @model_validator(mode="after")
    def _strategies(self, info: ValidationInfo) -> StudySpec:
        if shape_only(info):
            return self
        SAMPLERS.get(self.sampler.type, "sampler.type")
        PRUNERS.get(self.pruner.type, "pruner.type")
        self.build_sampler()
        self.build_pruner()
        check_folds_for_pruner(self.pruner.type, self.pruner.args, self.cv.folds)
        return self

    @property
    def outputs(self) -> Path:
        return self.output_dir or Path("runs") / self.name

    @property
    def report_steps(self) -> ReportSteps:
        return report_steps(self.pruner.type, self.cv.folds, self.budget.max_epochs)

    @property
    def sampler_seed(self) -> int:
        return self.seed if self.sampler.seed is None else self.sampler.seed

    def build_sampler(self, seed: int | None = None):
        """The study's sampler, seeded with ``seed`` (default: the study file's sampler seed)."""
        seed = self.sampler_seed if seed is None else seed
        return _construct("sampler", SAMPLERS.get(self.sampler.type), seed, self.sampler.args)

    def build_pruner(self):
        return _construct("pruner", PRUNERS.get(self.pruner.type), self.report_steps, self.pruner.args)


def trial_config(trial: optuna.Trial, spec: StudySpec) -> TrainConfig:
    """The one function that turns a trial's parameters into a training config.

    Pass ``optuna.trial.FixedTrial(params)`` to rebuild the config of a stored trial (as
    ``hpo export`` does). The searched fields come from the trial, the others from the study file.
    """
    defaults = {f.metadata["knob"].default_from: attrgetter(f.metadata["knob"].default_from)(spec)
                for f in knobs() if f.metadata["knob"].default_from}
    return TrainConfig(
        **sample(trial, spec.search, defaults),
        max_epochs=spec.budget.max_epochs,
        patience=spec.budget.patience,
        seed=spec.seed,
        crop=tuple(spec.data.crop) if spec.data.crop else None,
        compile=spec.train.compile,
        augment_on=spec.train.augment_on,
        mean=spec.data.mean,
        std=spec.data.std,
    )


def _construct(key: str, factory: Any, first: Any, args: dict[str, Any]) -> Any:
    try:
        with warnings.catch_warnings():
            # TPE's group=True and QMC are marked experimental; we chose them knowingly.
            warnings.simplefilter("ignore", ExperimentalWarning)
            return factory(first, **args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key}: invalid arguments {args} ({e}); see Optuna's docs for this {key}") from e
