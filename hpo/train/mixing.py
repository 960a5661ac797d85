"""Mixup and cutmix on a batch."""

from __future__ import annotations

import numpy as np
import torch


class Mixer:
    """Batch-level mixup / cutmix: mixup with probability p_mixup, else cutmix with p_cutmix."""

    def __init__(self, p_mixup: float, p_cutmix: float, seed: int) -> None:
        self.p_mixup, self.p_cutmix = p_mixup, p_cutmix
        self.rng = np.random.default_rng(seed)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        draw = self.rng.random()
        if draw < self.p_mixup:
            lam = float(self.rng.beta(0.4, 0.4))
            perm = torch.randperm(len(x), device=x.device)
            return lam * x + (1 - lam) * x[perm], y[perm], lam
        if self.rng.random() < self.p_cutmix:
            lam = float(self.rng.beta(1.0, 1.0))
            h, w = x.shape[2:]
            cut_h, cut_w = int(h * np.sqrt(1 - lam)), int(w * np.sqrt(1 - lam))
            cy, cx = self.rng.integers(h), self.rng.integers(w)
            y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
            x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
            perm = torch.randperm(len(x), device=x.device)
            x = x.clone()
            x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
            return x, y[perm], 1 - (y1 - y0) * (x1 - x0) / (h * w)
        return x, y, 1.0
