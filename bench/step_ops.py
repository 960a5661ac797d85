"""What hpo's epoch loop adds to the model's own training step, counted in aten ops on the CPU,
with the fused optimizer a GPU gets: on a GPU most ops are a kernel launch (views are not), and
resnet18 at batch 128 is close to bound by launching them (BENCHMARKS.md). The model alone is the
step bench/throughput.py times as (a); hpo's is one epoch of fit_fold (copy and normalisation,
mixing, loss, optimizer and scheduler steps, the running loss) on synthetic uint8 images,
counted over its second epoch and divided by its steps. Not counted: what runs on a GPU only
(the side stream's events, record_stream, the copy waits), which are not kernels.

    python bench/step_ops.py --backbone resnet18 --image-size 64
    python bench/step_ops.py --backbone resnet18 --image-size 64 --scheduler cosine --mixup 0.2
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import recipe  # noqa: E402

from hpo.train import loop, optim  # noqa: E402
from hpo.train.config import Component  # noqa: E402
from hpo.train.loop import FoldData, Stepper, autocast_for, fit_fold  # noqa: E402
from hpo.train.models import create_model, to_device  # noqa: E402
from hpo.train.optim import build_optimizer  # noqa: E402

CLASSES = 6


class OpCount(TorchDispatchMode):
    """Every aten op run in the block, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def model_alone_ops(args: argparse.Namespace, device: torch.device, steps: int = 4) -> Counter[str]:
    """Aten ops of one training step on a batch already on the device (bench/throughput.py's (a))."""
    model = to_device(create_model(args.backbone, False, CLASSES), device)
    optimizer = build_optimizer("adamw", {}, model, 1e-3, 0.01)
    autocast, scaler = autocast_for(device)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, CLASSES, (args.batch_size,), device=device)
    stepper = Stepper(optimizer, scaler, accumulate=1, batches_per_epoch=1)

    def step() -> None:
        with autocast():
            loss = torch.nn.functional.cross_entropy(model(x), y)
        stepper.backward(loss, 0)

    step()  # the optimizer's state is made on the first step
    with OpCount() as counted:
        for _ in range(steps):
            step()
    return Counter({op: n / steps for op, n in counted.ops.items()})


def epoch_loop_ops(args: argparse.Namespace, device: torch.device, steps: int = 16) -> Counter[str]:
    """Aten ops per step of hpo's epoch loop (_Epochs.train), over a trial's second epoch."""
    count = steps * args.batch_size
    images = np.random.default_rng(0).integers(0, 256, (count, args.image_size, args.image_size, 3), dtype=np.uint8)
    data = FoldData(images, np.arange(count) % CLASSES, np.arange(count), np.arange(0), CLASSES)
    cfg = recipe(args.backbone, args.image_size, args.batch_size, 2, scheduler=Component(args.scheduler),
                 mixup=args.mixup)
    train, epochs = loop._Epochs.train, []

    def counted(self: loop._Epochs):
        if not epochs:
            epochs.append(None)  # the first epoch makes the optimizer's state
            return train(self)
        with OpCount() as counting:
            figures = train(self)
        epochs.append(counting.ops)
        return figures

    loop._Epochs.train = counted
    try:
        fit_fold(cfg, data, device)
    finally:
        loop._Epochs.train = train
    return Counter({op: n / steps for op, n in epochs[1].items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--scheduler", default="constant")
    parser.add_argument("--mixup", type=float, default=0.0)
    parser.add_argument("--data", type=Path, help="unused: the images are made in memory")
    args = parser.parse_args()
    device, fused = torch.device("cpu"), optim.fused
    optim.fused = lambda model: {"fused": True}  # as on CUDA: one optimizer op for all the weights
    try:
        alone, hpo = model_alone_ops(args, device), epoch_loop_ops(args, device)
    finally:
        optim.fused = fused  # the tests run this script in their process
    added = hpo - alone
    print(f"{args.backbone} at {args.image_size} px, batch {args.batch_size}, scheduler {args.scheduler},"
          f" mixup {args.mixup}", flush=True)
    print(f"model alone: {alone.total():.0f} aten ops per step", flush=True)
    print(f"hpo's epoch loop: {hpo.total():.1f} aten ops per step, {added.total():.1f} more"
          f" ({added.total() / alone.total():.1%})", flush=True)
    print("  added: " + ", ".join(f"{op} {n:g}" for op, n in added.most_common()), flush=True)


if __name__ == "__main__":
    main()
