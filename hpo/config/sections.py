"""The study file's sections other than ``search``: typed, frozen, each checked where it is
declared. Registry names are checked only in the second pass (see :func:`shape_only`)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from hpo.train.config import AUGMENT_ON

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
    holdout: float = Field(0.0, ge=0.0, le=0.5, description="share of the groups (people) held out of every"
                           " fold: no model trains on them, and hpo ensemble scores its submission there")


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


class ModelsSpec(_Model):
    """The fold models the study keeps for the ensemble (see hpo.records.models)."""

    keep: int = Field(5, ge=0, le=1000, description="fold models of the best N complete trials kept; 0: none")


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


def shape_only(info: ValidationInfo) -> bool:
    """The first pass of validation: the file's shape only, no registry imported."""
    return bool(info.context and info.context.get("shape_only"))
