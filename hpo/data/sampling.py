"""How a fold's training samples are drawn each epoch, one registry entry each."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Sampler, WeightedRandomSampler

from hpo.registry import Registry

# (labels of the training side, seeded generator) -> a torch Sampler, or None for a plain shuffle.
SamplingFactory = Callable[[np.ndarray, torch.Generator], Sampler | None]
SAMPLING: Registry[SamplingFactory] = Registry("sampling")


@SAMPLING.register("uniform")
def uniform(labels: np.ndarray, generator: torch.Generator) -> Sampler | None:
    """A plain shuffle: classes drawn as often as they occur."""
    return None


@SAMPLING.register("weighted")
def weighted(labels: np.ndarray, generator: torch.Generator) -> Sampler:
    """Every class drawn equally often on average (with replacement), against imbalance."""
    counts = np.bincount(labels)
    weights = 1.0 / counts[labels]
    return WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), len(labels),
                                 replacement=True, generator=generator)
