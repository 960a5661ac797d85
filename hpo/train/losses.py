"""Loss functions and class-weighting schemes, each one registry entry.

A loss factory takes the per-class weights (or None) and its study-file arguments, and returns a
module mapping (logits, integer targets) to a scalar.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hpo.registry import Registry

# (class weights on the device, or None; *its arguments) -> the criterion.
LOSSES: Registry[Callable[..., nn.Module]] = Registry("loss")
# (training samples per class) -> a weight per class, or None.
CLASS_WEIGHTS: Registry[Callable[[np.ndarray], np.ndarray | None]] = Registry("class weighting")


@LOSSES.register("cross_entropy")
def cross_entropy(weight: torch.Tensor | None) -> nn.Module:
    """Cross-entropy, with the class weights."""
    return nn.CrossEntropyLoss(weight=weight)


@LOSSES.register("label_smoothing")
def label_smoothing(weight: torch.Tensor | None, *, epsilon: float = 0.1) -> nn.Module:
    """Cross-entropy against targets smoothed by ``epsilon``."""
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=epsilon)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_true) ** gamma."""

    def __init__(self, weight: torch.Tensor | None, gamma: float) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.gamma = gamma
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        loss = -((1 - log_p.exp()) ** self.gamma) * log_p
        if self.weight is None:
            return loss.mean()
        w = self.weight[target]
        return (loss * w).sum() / w.sum()


@LOSSES.register("focal")
def focal(weight: torch.Tensor | None, *, gamma: float = 2.0) -> nn.Module:
    """Focal loss: cross-entropy down-weighting easy samples by (1 - p)^gamma."""
    return FocalLoss(weight, gamma)


class SoftF1Loss(nn.Module):
    """1 - macro F1 computed on softmax probabilities, so it optimises the competition metric."""

    def __init__(self, weight: torch.Tensor | None, eps: float = 1e-7) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = F.softmax(logits.float(), dim=1)
        onehot = F.one_hot(target, probs.shape[1]).to(probs.dtype)
        tp = (probs * onehot).sum(0)
        precision = tp / (probs.sum(0) + self.eps)
        recall = tp / (onehot.sum(0) + self.eps)
        f1 = 2 * precision * recall / (precision + recall + self.eps)
        if self.weight is None:
            return 1 - f1.mean()
        return 1 - (f1 * self.weight).sum() / self.weight.sum()


@LOSSES.register("soft_f1")
def soft_f1(weight: torch.Tensor | None) -> nn.Module:
    """1 - soft macro F1 (differentiable, from the probabilities): optimises the metric itself."""
    return SoftF1Loss(weight)


@CLASS_WEIGHTS.register("none")
def no_weights(counts: np.ndarray) -> np.ndarray | None:
    """Every class weighs 1."""
    return None


@CLASS_WEIGHTS.register("inverse")
def inverse_frequency(counts: np.ndarray) -> np.ndarray:
    """n / (k * count_c): mean weight 1 on a balanced set; rare classes weigh more."""
    counts = np.maximum(counts, 1).astype(np.float64)
    return counts.sum() / (len(counts) * counts)


@CLASS_WEIGHTS.register("sqrt_inverse")
def sqrt_inverse_frequency(counts: np.ndarray) -> np.ndarray:
    """A milder correction: the square root of the inverse frequency, scaled to mean 1."""
    weights = np.sqrt(inverse_frequency(counts))
    return weights / weights.mean()


def build_loss(
    name: str, args: dict, weighting: str, class_counts: np.ndarray, device: torch.device
) -> nn.Module:
    weights = CLASS_WEIGHTS.get(weighting)(class_counts)
    weight = None if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    return LOSSES.get(name)(weight, **args).to(device)


class FactorizedLoss(nn.Module):
    """The summed loss of one head per label factor, computed from joint log-probabilities
    (:class:`hpo.train.models.FactorizedModel`): each factor's marginal is a logsumexp over the
    other factors, and equals that head's log-softmax."""

    def __init__(self, losses: list[nn.Module], sizes: tuple[int, ...]) -> None:
        super().__init__()
        self.losses, self.sizes = nn.ModuleList(losses), sizes
        self.strides = [int(np.prod(sizes[i + 1 :])) for i in range(len(sizes))]

    def forward(self, joint: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        grid = joint.float().view(-1, *self.sizes)
        total = joint.new_zeros((), dtype=torch.float32)
        for axis, (loss, stride, size) in enumerate(zip(self.losses, self.strides, self.sizes, strict=True)):
            others = [d + 1 for d in range(len(self.sizes)) if d != axis]
            marginal = torch.logsumexp(grid, dim=others) if others else grid
            total = total + loss(marginal, (target // stride) % size)
        return total


def build_criterion(
    name: str, args: dict, weighting: str, class_counts: np.ndarray, device: torch.device,
    factors: tuple[tuple[str, int], ...] = (), head: str = "single",
) -> nn.Module:
    """The training loss for a head: one loss, or (factorized head) one per factor, summed."""
    if head != "factorized":
        return build_loss(name, args, weighting, class_counts, device)
    sizes = tuple(size for _, size in factors)
    grid = class_counts.reshape(sizes)
    per_factor = [grid.sum(axis=tuple(d for d in range(len(sizes)) if d != axis)) for axis in range(len(sizes))]
    return FactorizedLoss([build_loss(name, args, weighting, counts, device) for counts in per_factor], sizes).to(device)
