"""The study file: read once, validated once, into a frozen :class:`StudySpec`; and the one
function that turns a trial into a training config (:func:`trial_config`).

This is the only module that reads YAML. Every error is a :class:`ConfigError` naming the key.
Validation runs in two passes: the file's shape (keys, types, ranges) first, with nothing heavier
than pydantic imported, so that a typo is reported at once; then every name against its registry
(data formats, backbones, losses...), which imports them.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Callable, Sequence
from operator import attrgetter
from pathlib import Path
from typing import Any, Literal

import optuna
import yaml
from optuna.exceptions import ExperimentalWarning
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hpo.errors import ConfigError, HpoError, did_you_mean
from hpo.space import SearchSpace, check_params, parse_search, sample
from hpo.strategy import PRUNERS, SAMPLERS, check_folds_for_pruner, max_report_steps
from hpo.train.config import AUGMENT_ON, TrainConfig, knobs

STUDIES_DIR = Path(__file__).resolve().parent.parent / "studies"
NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Named(BaseModel):
    """A registry entry by ``type``, with its arguments as the other keys."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str

    @field_validator("type")
    @classmethod
    def _underscores(cls, value: str) -> str:
        return value.replace("-", "_")

    @property
    def args(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SamplerSpec(_Named):
    type: str = "tpe"
    seed: int | None = None


class PrunerSpec(_Named):
    type: str = "median"


def parse_duration(value: Any) -> float | None:
    """Seconds from a number or text like "90", "45s", "30m", "8h", "1h30m", "2d"."""
    if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
        return None if value is None else float(value)
    text = str(value).strip().lower()
    parts = re.fullmatch(
        r"(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?", text
    )
    if not text or not parts or not any(parts.groups()):
        raise ValueError(f"cannot read duration {value!r}; write e.g. 90, 45s, 30m, 8h or 1h30m")
    days, hours, minutes, seconds = (float(g or 0) for g in parts.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


class BudgetSpec(_Model):
    n_trials: int = Field(20, ge=1)
    timeout: float | None = Field(None, gt=0, description="seconds of one `hpo run`")
    max_epochs: int = Field(10, ge=1, description="epochs per fold at most")
    patience: int | None = Field(3, ge=1, description="early stopping within a fold")

    @field_validator("timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float | None:
        return parse_duration(value)


class DataSpec(BaseModel):
    """``format`` plus the format's own options (root, file, columns...) as further keys."""

    model_config = ConfigDict(extra="allow", frozen=True)
    format: str
    image_size: int = Field(224, ge=8, le=4096)
    normalization: str | dict[str, list[float]] = "imagenet"
    crop: tuple[int, int] | None = Field(None, description="centred crop [height, width] of the original, before resize")

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @field_validator("normalization", mode="before")
    @classmethod
    def _normalization(cls, value: Any) -> Any:
        if isinstance(value, str) and value in NORMALIZATIONS:
            return value
        if isinstance(value, dict) and set(value) == {"mean", "std"} and all(
            isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
            for v in value.values()
        ) and min(value["std"]) > 0:
            return value
        raise ValueError(f"{value!r}: use {', '.join(NORMALIZATIONS)} or {{mean: [r, g, b], std: [r, g, b]}}"
                         " with numbers, std > 0")

    def _stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if isinstance(self.normalization, str):
            return NORMALIZATIONS[self.normalization]
        return tuple(self.normalization["mean"]), tuple(self.normalization["std"])

    @property
    def mean(self) -> tuple[float, float, float]:
        return self._stats()[0]  # type: ignore[return-value]

    @property
    def std(self) -> tuple[float, float, float]:
        return self._stats()[1]  # type: ignore[return-value]

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> DataSpec:
        if self.crop is not None and min(self.crop) < 1:
            raise ValueError("crop: give [height, width] in pixels, both positive")
        if shape_only(info):
            return self
        from hpo.data.formats import FORMATS

        FORMATS.get(self.format, "data.format")
        known = FORMATS.arguments(self.format)
        unknown = set(self.options) - set(known)
        if unknown:
            raise ValueError(
                f"unknown option(s) {sorted(unknown)} for format {self.format!r}; known: {', '.join(known) or 'none'}"
            )
        return self


class CVSpec(_Model):
    folds: int = Field(5, ge=2, le=50)
    seed: int = 0


class WorkersSpec(_Model):
    """How workers guard their trials (see README, "Parallel workers")."""

    heartbeat_interval: int = Field(10, ge=1, description="seconds between heartbeats")
    grace_period: int = Field(60, ge=2, description="seconds without heartbeat before a trial is stale")
    max_retry: int = Field(2, ge=0, description="retries of a stale trial with the same parameters")

    @model_validator(mode="after")
    def _grace(self) -> WorkersSpec:
        if self.grace_period < 3 * self.heartbeat_interval:
            raise ValueError(
                f"grace_period ({self.grace_period}s) must be at least 3 x heartbeat_interval"
                f" ({self.heartbeat_interval}s), or live trials under load are failed as stale"
            )
        return self

    @property
    def sweep_interval(self) -> float:
        """Seconds between a worker's sweeps for stale trials (and its "last seen" for `hpo
        status`): a third of the grace period is prompt enough, and on SQLite every sweep and
        every write queues for the one write lock with the heartbeats."""
        return self.grace_period / 3  # never below the heartbeat interval (see _grace)


COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class TrainSpec(_Model):
    """How trials run on the machine; not searched. ``compile`` leaves a recipe's results as they
    are (up to rounding); ``augment_on`` draws the augmentations differently (other random
    streams, float ops for uint8 ones), so keep it as it is within a study."""

    compile: str = Field("off", description="torch.compile mode, or off")
    augment_on: Literal[AUGMENT_ON] = Field(  # type: ignore[valid-type]
        "workers", description="augmentation image by image in the loader's workers (albumentations), or in"
        " batch on the GPU (hpo.data.batch_augment; without a GPU, and for ops without a batch version, the workers)")

    @field_validator("compile", mode="before")
    @classmethod
    def _mode(cls, value: Any) -> str:
        if value is None or isinstance(value, bool):
            return "default" if value else "off"
        if value not in COMPILE_MODES:
            raise ValueError(f"{value!r} is not a torch.compile mode; use true, false or one of: {', '.join(COMPILE_MODES)}")
        return value


class TrackingSpec(_Model):
    """Where every trial's curves are logged besides the study (see hpo.tracking)."""

    tensorboard: Path | None = Field(None, description="folder of TensorBoard runs: <study>/trial-N/fold-K")


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
    train: TrainSpec = TrainSpec()
    tracking: TrackingSpec = TrackingSpec()
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
    def max_report_steps(self) -> int:
        return max_report_steps(self.pruner.type, self.cv.folds, self.budget.max_epochs)

    @property
    def sampler_seed(self) -> int:
        return self.seed if self.sampler.seed is None else self.sampler.seed

    def build_sampler(self, seed: int | None = None):
        """The study's sampler, seeded with ``seed`` (default: the study file's sampler seed)."""
        seed = self.sampler_seed if seed is None else seed
        return _construct("sampler", SAMPLERS.get(self.sampler.type), seed, self.sampler.args)

    def build_pruner(self):
        return _construct("pruner", PRUNERS.get(self.pruner.type), self.max_report_steps, self.pruner.args)


def shape_only(info: ValidationInfo) -> bool:
    """The first pass of validation: the file's shape only, no registry imported."""
    return bool(info.context and info.context.get("shape_only"))


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


def find_study_file(study: str | Path) -> Path:
    """A path, or a name in ./studies/ or the studies/ folder shipped beside the package."""
    path = Path(study).expanduser()
    if path.is_file():
        return path
    for folder in (Path("studies"), STUDIES_DIR):
        candidate = folder / f"{study}.yaml"
        if candidate.is_file():
            return candidate
    names = sorted({p.stem for d in (Path("studies"), STUDIES_DIR) if d.is_dir() for p in d.glob("*.yaml")})
    raise ConfigError(
        f"study {str(study)!r} not found: give a path to a YAML file or one of: {', '.join(names) or '(none)'}"
    )


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """``a.b.c=value``: the value is read as YAML (numbers, booleans, lists)."""
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected key.path=value, e.g. --set cv.folds=3")
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {assignment!r}: {part!r} is not a section of the study file")
        node = child
    try:
        node[leaf] = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {assignment!r}: value is not valid YAML ({e.problem})") from e


def parse_spec(raw: Any, source: str = "study file", overrides: Sequence[str] = ()) -> StudySpec:
    """Validate a study mapping after applying ``--set`` overrides to a copy of it."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level (name:, data:, search: ...)")
    raw = copy.deepcopy(raw)
    for assignment in overrides:
        apply_override(raw, assignment)
    _validate(raw, source, shape_only=True)  # the file's shape: a typo is reported before torch loads
    spec = _validate(raw, source, shape_only=False)
    spec._raw = raw
    return spec


def _validate(raw: dict[str, Any], source: str, shape_only: bool) -> StudySpec:
    try:
        return StudySpec.model_validate(raw, context={"shape_only": shape_only})
    except ValidationError as e:
        errors = e.errors()
        # An unknown key first: a typo (serach:) also leaves its key missing, and the typo is the news.
        first = next((error for error in errors if error["type"] == "extra_forbidden"), errors[0])
        location = ".".join(str(part) for part in first["loc"]) or "(top level)"
        message = first["msg"].removeprefix("Value error, ")
        cause = first.get("ctx", {}).get("error")
        if first["type"] == "extra_forbidden" and (known := _known_keys(first["loc"][:-1])):
            message = f"unknown key{did_you_mean(first['loc'][-1], known)}; use one of: {', '.join(known)}"
        if isinstance(cause, ConfigError):  # already names its key
            location, message = "", str(cause)
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        prefix = f"{location}: " if location else ""
        raise ConfigError(f"{source}: {prefix}{message}{more}") from None


def _known_keys(location: tuple[Any, ...]) -> list[str]:
    """The keys the study file allows at ``location`` (a section's fields), or [] if unknown."""
    model: Any = StudySpec
    for part in location:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        model = field.annotation if field else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
    return list(model.model_fields)


def read_yaml(path: Path, what: str, error: type[HpoError] = ConfigError) -> Any:
    """A YAML file's content; an unreadable file or bad syntax is one line naming the place.
    ``what`` says what the file should be, e.g. "a file written by hpo export"."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e}); give {what}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise error(f"{path}:{where} is not valid YAML ({getattr(e, 'problem', None) or e}); fix the syntax") from None


def load_spec(study: str | Path, overrides: Sequence[str] = ()) -> StudySpec:
    """Find, read, override and validate a study file."""
    path = find_study_file(study)
    return parse_spec(read_yaml(path, "a study file"), str(path), overrides)


def load_spec_or_stored(study: str, overrides: Sequence[str], stored: Callable[[], dict[str, Any]]) -> StudySpec:
    """The study file when this machine has it; else the spec the study was created with, as
    kept in its storage (``stored``), so a worker can join from a machine without the file."""
    try:
        find_study_file(study)
    except ConfigError:
        return parse_spec(stored(), f"study {study!r} (from storage)", overrides)
    return load_spec(study, overrides)


def load_params_file(path: Path) -> list[dict[str, Any]]:
    """Trial parameters to enqueue: one mapping, or a list of mappings (YAML)."""
    raw = read_yaml(path, "a YAML mapping of parameter: value, or a list of them")
    trials = raw if isinstance(raw, list) else [raw]
    if not trials or not all(isinstance(t, dict) and t for t in trials):
        raise ConfigError(f"{path}: expected a mapping of parameter: value, or a list of them")
    return trials
