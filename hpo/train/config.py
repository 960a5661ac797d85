"""The typed training configuration: everything one training run needs, and nothing of Optuna."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Component:
    """A registry entry chosen by name, with its arguments (an optimizer, a loss, a scheduler...)."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AugmentOp:
    """One albumentations op: applied with probability ``p`` at strength ``magnitude`` in [0, 1]."""

    name: str
    magnitude: float
    p: float


AUGMENT_ON = ("workers", "gpu")  # TrainConfig.augment_on: the loader's workers, or the GPU in batch


@dataclass(frozen=True)
class TrainConfig:
    """One training recipe; produced from a trial by :func:`hpo.space.trial_config`."""

    backbone: str
    pretrained: bool | str  # False, True (timm/HF cache) or a local weights file
    freeze: Component
    optimizer: Component
    lr: float
    weight_decay: float
    scheduler: Component
    loss: Component
    class_weights: str
    batch_size: int
    image_size: int
    augment: tuple[AugmentOp, ...]
    mixup: float
    cutmix: float
    max_epochs: int
    patience: int | None
    seed: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop: tuple[int, int] | None = None  # centred crop of the original before resize
    head: str = "single"  # a registry entry of hpo.train.models.HEADS
    sampling: str = "uniform"  # a registry entry of hpo.data.loader.SAMPLING
    label_options: dict[str, Any] = field(default_factory=dict)  # training labels, e.g. age_boundary
    accumulate: int = 1  # batches per optimizer step: effective batch = batch_size x accumulate
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
        for key in ("freeze", "optimizer", "scheduler", "loss"):
            values[key] = Component(**values[key])
        values["augment"] = tuple(AugmentOp(**op) for op in values["augment"])
        values["mean"], values["std"] = tuple(values["mean"]), tuple(values["std"])
        if values.get("crop"):
            values["crop"] = tuple(values["crop"])
        return cls(**values)
