"""The typed training configuration: everything one training run needs, and nothing of Optuna.

A field declared with :func:`knob` is a hyperparameter the study file may search: its metadata
says its default, what values it takes and which registry names them. :mod:`hpo.space` reads the
metadata, so searching a new hyperparameter is this field and its use in training, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Literal

from hpo.data.ops import AugmentOp

Kind = Literal["value", "component", "augment", "labels"]


@dataclass(frozen=True)
class Component:
    """A registry entry chosen by name, with its arguments (an optimizer, a loss, a scheduler...)."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Knob:
    """How the study file's ``search.<key>`` sets a field.

    ``accepts``/``expected``: every value the study can sample must pass ``accepts``; the error
    says it should be ``expected``. ``names``: where the allowed names live, as
    ``"module:attribute"`` (a :class:`~hpo.registry.Registry`, or a ``check(name, key)`` that
    raises), imported only when names are checked. ``kind``: a plain value (fixed or searched), a
    registry entry with arguments (``component``), or one of the two sections with a shape of their
    own (``augment``, ``labels``). ``default_from``: a study-file key whose value is the default
    (``data.image_size``)."""

    default: Any = MISSING
    accepts: Callable[[Any], bool] | None = None
    expected: str = ""
    names: str | None = None
    kind: Kind = "value"
    key: str | None = None  # the study file's key, when it is not the field's name
    default_from: str | None = None
    required_hint: str = ""


def knob(default: Any = MISSING, **options: Any) -> Any:
    """A searchable field (see :class:`Knob`); its dataclass default is the search default."""
    spec = Knob(default=default, **options)
    meta = {"knob": spec}
    if default is MISSING:
        return field(metadata=meta)
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    if options.get("kind") == "component":
        return field(default_factory=lambda: Component(default), metadata=meta)
    return field(default=default, metadata=meta)


def number(low: float, high: float = float("inf"), integer: bool = False) -> Callable[[Any], bool]:
    """Accepts numbers (whole ones with ``integer``) in [low, high]; not booleans."""

    def ok(value: Any) -> bool:
        if isinstance(value, bool):
            return False
        typed = isinstance(value, int) if integer else isinstance(value, (int, float))
        return typed and low <= value <= high

    return ok


def is_text(value: Any) -> bool:
    return isinstance(value, str)


def is_flag_or_text(value: Any) -> bool:
    return isinstance(value, (bool, str))


AUGMENT_ON = ("workers", "gpu")  # TrainConfig.augment_on: the loader's workers, or the GPU in batch


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training recipe; produced from a trial by :func:`hpo.config.trial_config`. The
    searchable fields come first, in the order a trial samples them."""

    backbone: str = knob(accepts=is_text, expected="a timm model name", names="hpo.train.models:check_backbone",
                         required_hint="a timm model name or {choices: [...]}")
    # False, True (timm/HF cache) or a local weights file
    pretrained: bool | str = knob(False, accepts=is_flag_or_text, expected="true, false or a weights file path")
    freeze: Component = knob("none", kind="component", names="hpo.train.models:FREEZE")
    optimizer: Component = knob("adamw", kind="component", names="hpo.train.optim:OPTIMIZERS")
    lr: float = knob(1e-3, accepts=number(1e-12, 10), expected="a learning rate in (0, 10]")
    weight_decay: float = knob(0.0, accepts=number(0, 1), expected="in [0, 1]")
    scheduler: Component = knob("constant", kind="component", names="hpo.train.optim:SCHEDULERS")
    loss: Component = knob("cross_entropy", kind="component", names="hpo.train.losses:LOSSES")
    class_weights: str = knob("none", names="hpo.train.losses:CLASS_WEIGHTS")
    batch_size: int = knob(32, accepts=number(1, 65536, integer=True), expected="a positive integer")
    image_size: int = knob(224, accepts=number(8, 4096, integer=True), expected="an integer in [8, 4096]",
                           default_from="data.image_size")
    augment: tuple[AugmentOp, ...] = knob((), kind="augment")
    mixup: float = knob(0.0, accepts=number(0, 1), expected="a probability in [0, 1]")
    cutmix: float = knob(0.0, accepts=number(0, 1), expected="a probability in [0, 1]")
    head: str = knob("single", names="hpo.train.models:HEADS")
    sampling: str = knob("uniform", names="hpo.data.sampling:SAMPLING")
    # Training-label options of the data format (the mask format's age_boundary).
    label_options: dict[str, Any] = knob({}, kind="labels", key="labels")
    # Batches per optimizer step: effective batch = batch_size x accumulate.
    accumulate: int = knob(1, accepts=number(1, 1024, integer=True), expected="an integer in [1, 1024]")
    # The gradient's largest norm at each optimizer step (0: not clipped).
    grad_clip: float = knob(0.0, accepts=number(0, 1e6), expected="a norm >= 0 (0: no clipping)")

    # Set by the study file's other sections, not searched.
    max_epochs: int
    patience: int | None
    seed: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop: tuple[int, int] | None = None  # centred crop of the original before resize
    compile: str = "off"  # torch.compile mode (default, reduce-overhead, max-autotune) or off
    augment_on: str = "workers"  # augment image by image in loader workers, or "gpu": in batch there

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists, dicts, scalars), ready for YAML or JSON."""
        out = asdict(self)
        out["augment"] = [asdict(op) for op in self.augment]
        out["mean"], out["std"] = list(self.mean), list(self.std)
        out["crop"] = list(self.crop) if self.crop else None
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        values = dict(raw)
        for f in knobs():
            if f.metadata["knob"].kind == "component":
                values[f.name] = Component(**values[f.name])
        values["augment"] = tuple(AugmentOp(**op) for op in values["augment"])
        values["mean"], values["std"] = tuple(values["mean"]), tuple(values["std"])
        if values.get("crop"):
            values["crop"] = tuple(values["crop"])
        return cls(**values)


def knobs() -> list[Any]:
    """The searchable fields of :class:`TrainConfig` (dataclass fields), in sampling order."""
    return [f for f in fields(TrainConfig) if "knob" in f.metadata]


__all__ = ["AUGMENT_ON", "AugmentOp", "Component", "Knob", "TrainConfig", "knob", "knobs", "number"]
