"""The common way to train one configuration, as public solutions of the mask competition do it
(one `train.py`): every image opened, decoded with PIL and transformed with torchvision in every
epoch, every epoch trained (no pruning, no early stopping), the best epoch's weights kept by
validation macro F1. The recipe itself (model, optimizer, schedule, loss) comes from hpo's
registries, so the benchmarks compare the way of working, not the recipe."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import f1_score
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from hpo.train.config import TrainConfig
from hpo.train.losses import build_criterion
from hpo.train.models import build_freeze, create_model, to_device
from hpo.train.optim import build_optimizer, build_schedule


class PhotoFiles(Dataset):
    """Open, decode and transform each photo every time it is drawn."""

    def __init__(self, files: list[Path], labels: np.ndarray, transform: transforms.Compose) -> None:
        self.files, self.labels, self.transform = files, labels, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.files[i]) as image:
            return self.transform(image.convert("RGB")), int(self.labels[i])


def photo_transforms(size: int, mean, std, train: bool) -> transforms.Compose:  # noqa: ANN001 - RGB triples
    steps = [transforms.Resize((size, size))] + ([transforms.RandomHorizontalFlip()] if train else [])
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(mean, std)])


@dataclass
class Fitted:
    best_f1: float  # on the validation images, at the best epoch
    model: torch.nn.Module  # holding the best epoch's weights, in eval mode


def fit(cfg: TrainConfig, files: list[Path], labels: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray,
        classes: int, size: int, mean, std, device: torch.device, workers: int = 0) -> Fitted:  # noqa: ANN001
    """Train ``cfg`` on ``train_idx`` for all its epochs; keep the epoch with the best val macro F1."""
    def photos(idx: np.ndarray, train: bool) -> PhotoFiles:
        return PhotoFiles([files[i] for i in idx], labels[idx], photo_transforms(size, mean, std, train))

    torch.manual_seed(cfg.seed)
    model = to_device(create_model(cfg.backbone, False, classes), device)
    optimizer = build_optimizer(cfg.optimizer.name, cfg.optimizer.args, model, cfg.lr, cfg.weight_decay)
    loader = DataLoader(photos(train_idx, True), batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                        num_workers=workers)
    val_loader = DataLoader(photos(val_idx, False), batch_size=256, num_workers=workers)
    schedule = build_schedule(cfg.scheduler.name, cfg.scheduler.args, optimizer, len(loader), cfg.max_epochs)
    criterion = build_criterion(cfg.loss.name, cfg.loss.args, cfg.class_weights,
                                np.bincount(labels[train_idx], minlength=classes), device)
    freeze, best, best_state = build_freeze("none", {}), -1.0, None
    for epoch in range(cfg.max_epochs):
        model.train()
        freeze.apply(model, epoch)
        for x, y in loader:
            loss = criterion(model(x.to(device)), y.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.after_batch()
        f1 = f1_score(labels[val_idx], predict(model, val_loader, device).argmax(1), average="macro")
        if f1 > best:
            best, best_state = f1, copy.deepcopy(model.state_dict())
        schedule.after_epoch(f1)
    model.load_state_dict(best_state)
    return Fitted(float(best), model.eval())


@torch.no_grad()
def predict(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> np.ndarray:
    """Class probabilities of the loader's images, in its order."""
    model.eval()
    return torch.cat([model(x.to(device)).softmax(1).float().cpu() for x, _ in loader]).numpy()
