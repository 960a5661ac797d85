"""Training images/second: the model alone (the limit) against a real hpo trial on cached data.

(a) the model alone: forward, backward and optimizer step on a synthetic batch already on the
    device, with the same mixed precision, channels_last and (optionally) torch.compile a trial
    uses;
(b) a real trial: hpo's fit_fold on a folder of 384 x 512 JPEGs decoded once into the cache,
    batches gathered from the memory map, augmented (--augment), moved and normalised on the
    device; its training images/second (epochs after the first, which warms up) is the figure.

(c) the loader alone: the trial's own DataLoader (workers, augmentation, pinned memory) and the
    copy to the device, no model: the most images/second the data path can feed.

Prints (b)/(a) and the share of (b)'s time spent waiting for the loader (loader-bound when
large); ``--profile`` then profiles one more trial's second epoch (host time by op, GPU busy,
calls that make the host wait for the GPU); ``--augment-on gpu`` augments as the study option
``train.augment_on: gpu``. Also prints what the data path costs per image on this machine:
decoding a JPEG once (cache build), the albumentations preset per image on one core, and the
common way (PIL decode + torchvision transforms every epoch) for comparison.

    python bench/throughput.py --backbone resnet18 --image-size 224 --batch-size 64
    python bench/throughput.py --backbone efficientnet_b0 --image-size 224 --batch-size 64 --augment medium
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import recipe, tiled, write_photos  # noqa: E402

from hpo.data import cache  # noqa: E402
from hpo.data.augment import build_pipeline, preset_ops  # noqa: E402
from hpo.data.formats import load_table  # noqa: E402
from hpo.data.loader import RING_BYTES, on_device, opencv_threads, side_stream  # noqa: E402
from hpo.system import available_cpus, pick_device  # noqa: E402
from hpo.train.config import AUGMENT_ON, AugmentOp  # noqa: E402
from hpo.train.loop import FoldData, Stepper, autocast_for, compiled, fit_fold, fold_batches  # noqa: E402
from hpo.train.models import create_model, to_device  # noqa: E402
from hpo.train.optim import build_optimizer  # noqa: E402

CLASSES = 6


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def model_alone(args: argparse.Namespace, device: torch.device) -> float:
    """Images/second of training steps on one synthetic batch resident on the device."""
    model = compiled(to_device(create_model(args.backbone, False, CLASSES), device), trial_recipe(args))
    optimizer = build_optimizer("adamw", {}, model, 1e-3, 0.01)
    autocast, scaler = autocast_for(device)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, CLASSES, (args.batch_size,), device=device)
    model.train()
    stepper = Stepper(optimizer, scaler, accumulate=1, batches_per_epoch=1)  # the trial's own step

    def step() -> None:
        with autocast():
            loss = torch.nn.functional.cross_entropy(model(x), y)
        stepper.backward(loss, 0)

    for _ in range(args.warmup_steps):
        step()
    sync(device)
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    return args.steps * args.batch_size / (time.perf_counter() - started)


@contextlib.contextmanager
def workers_starting_with(setting: Callable[[], None]) -> Iterator[None]:
    """For the block, each loader worker applies ``setting`` to itself as it starts (an
    experiment: hpo does not do this)."""
    from hpo.data import loader

    start = loader._seed_worker

    def started(worker_id: int) -> None:
        setting()
        start(worker_id)

    loader._seed_worker = started
    try:
        yield
    finally:
        loader._seed_worker = start


@contextlib.contextmanager
def cores_apart(own: int = 2) -> Iterator[None]:
    """For the block, the training process (its launching thread, the pin thread) on ``own`` cores
    of its own and the loader workers, one fewer, on the others: does the launching thread lose
    time to workers on its core?"""
    cores = sorted(os.sched_getaffinity(0))
    os.environ["HPO_LOADER_WORKERS"] = str(len(cores) - own)
    os.sched_setaffinity(0, cores[:own])
    try:
        with workers_starting_with(lambda: os.sched_setaffinity(0, cores[own:])):
            yield
    finally:
        os.sched_setaffinity(0, cores)
        os.environ.pop("HPO_LOADER_WORKERS", None)


def unfused() -> None:
    """Optimizers from now on with torch's default kernels (foreach) instead of the fused ones
    hpo takes on CUDA (an experiment: what fusing gains)."""
    from hpo.train import optim

    optim.fused = lambda model: {}


@contextlib.contextmanager
def counted_copy_waits() -> Iterator[list[int]]:
    """For the block, [copies on_device waited for, those it found still running (the host
    blocked)]; on_device waits for copies on a GPU only."""
    from hpo.data import prefetch

    counts, wait = [0, 0], prefetch._wait

    def counted(copy: torch.cuda.Event) -> None:
        counts[0] += 1
        counts[1] += not copy.query()
        wait(copy)

    prefetch._wait = counted
    try:
        yield counts
    finally:
        prefetch._wait = wait


def copied_ring() -> None:
    """Loader rings from now on left pageable: DataLoader's pin thread copies each batch out of
    its slot into pinned memory, as before hpo page-locked the ring (an experiment: what that gains)."""
    from hpo.data import loader

    loader.page_lock = lambda ring: False


def page_lock_seconds() -> float:
    """Seconds to page-lock a ring of the largest size (once per fold, on a GPU) and let it go;
    nan where /dev/shm has no room for it or the lock is refused."""
    from hpo.data.ring import page_lock, shared_memory_free

    if (shared_memory_free() or 0) < 2 * RING_BYTES:
        return float("nan")
    ring = torch.empty(RING_BYTES, dtype=torch.uint8).share_memory_()
    started = time.perf_counter()
    locked = page_lock(ring)
    del ring  # unlocked as it is freed
    seconds = time.perf_counter() - started
    return seconds if locked else float("nan")


def preset(name: str) -> tuple[AugmentOp, ...]:
    return tuple(AugmentOp(op, magnitude, p) for op, (magnitude, p) in preset_ops(name).items())


def trial_recipe(args: argparse.Namespace):
    return recipe(args.backbone, args.image_size, args.batch_size, args.epochs, augment=preset(args.augment),
                  mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), compile=args.compile,
                  augment_on=args.augment_on)


def real_trial(args: argparse.Namespace, device: torch.device, images: np.ndarray, labels: np.ndarray,
               on_epoch=None) -> tuple[float, float]:
    """The trial's training images/second and share of time waiting for batches (medians of the
    epochs after the first). Also prints what the first epoch took beyond the others (compiling,
    starting the loader's workers)."""
    everything = np.arange(len(labels))
    val = everything[:: max(2, len(labels) // (2 * args.batch_size))][: args.batch_size]
    train = np.setdiff1d(everything, val)
    ends = [time.perf_counter()]

    def timed_epoch(result) -> None:
        ends.append(time.perf_counter())
        if on_epoch is not None:
            on_epoch(result)

    result = fit_fold(trial_recipe(args), FoldData(images, labels, train, val, CLASSES), device, on_epoch=timed_epoch)
    seconds = np.diff(ends)
    if len(seconds) > 1:
        print(f"    first epoch {seconds[0]:.2f} s, the others {statistics.median(seconds[1:]):.2f} s", flush=True)
    timed = result.history[1:] or result.history
    return statistics.median(e.images_per_second for e in timed), statistics.median(e.data_wait for e in timed)


def cold_trial(args: argparse.Namespace, device: torch.device, images: np.ndarray, labels: np.ndarray) -> None:
    """A trial compiled from nothing, before anything else here compiles: empty on-disk caches
    (inductor's graphs, Triton's kernels), as a study meets for each new backbone, batch or image
    size. Its first epoch beyond the others is the compile, plus the loader workers' start."""
    fresh = Path(tempfile.mkdtemp(prefix="hpo-cold-compile-"))
    os.environ.update(TORCHINDUCTOR_CACHE_DIR=str(fresh / "inductor"), TRITON_CACHE_DIR=str(fresh / "triton"))
    torch.compiler.reset()
    print(f"a cold compile ({args.compile}), caches in {fresh}:", flush=True)
    print(f"(b) cold:        {rate_and_wait(real_trial(args, device, images, labels))}", flush=True)


def profiled_trial(args: argparse.Namespace, device: torch.device, images: np.ndarray, labels: np.ndarray) -> None:
    """torch.profiler over the trial's second epoch (training, then evaluation): where the host's
    time goes, how busy the GPU was, and the calls that make the host wait for the GPU."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    profiler, window = profile(activities=activities), {}

    def second_epoch(result) -> None:
        if result.epoch == 0:
            profiler.start()
            window["started"] = time.perf_counter()
        elif result.epoch == 1:
            sync(device)
            window["seconds"] = time.perf_counter() - window["started"]
            profiler.stop()

    real_trial(args, device, images, labels, on_epoch=second_epoch)
    totals = profiler.key_averages()
    print(totals.table(sort_by="self_cpu_time_total", row_limit=15), flush=True)
    if device.type == "cuda":
        print(totals.table(sort_by="self_device_time_total", row_limit=10), flush=True)
        busy = _union_seconds((e.time_range.start, e.time_range.end) for e in profiler.events()
                              if e.device_type == torch.autograd.DeviceType.CUDA)
        print(f"GPU busy {busy / window['seconds']:.0%} of the profiled {window['seconds']:.2f} s", flush=True)
    calls = {e.key: e.count for e in totals}
    waits = {name: calls[name] for name in HOST_WAITS if calls.get(name)}
    print(f"calls that can make the host wait, over the epoch: {waits or 'none'}", flush=True)


# CUDA runtime calls that block the host until the GPU (or a stream) is done, or may; a .item()
# of a tensor on the GPU shows as cudaStreamSynchronize (aten::item also counts the optimizer's
# harmless reads of its step counters, kept on the CPU).
HOST_WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy",
              "cudaHostAlloc", "cudaFreeHost", "cudaMalloc", "cudaFree")


def _union_seconds(intervals) -> float:
    """Seconds covered by (start, end) microsecond intervals, overlaps counted once."""
    covered, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            covered += end - max(start, reach)
            reach = end
    return covered / 1e6


def loader_alone(args: argparse.Namespace, device: torch.device, images: np.ndarray, labels: np.ndarray) -> float:
    """Images/second of the trial's loader and host-to-device copy, no model (epoch 2 of 2)."""
    cfg = trial_recipe(args)
    mean = torch.tensor(cfg.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, device=device).view(1, 3, 1, 1)
    loader, augment = fold_batches(cfg, images, labels, np.arange(len(labels)), device, 0)
    print(f"the trial's loader: {loader.num_workers} workers", flush=True)
    side = side_stream(device)
    for _ in range(2):  # the first epoch starts the workers
        seen, started = 0, time.perf_counter()
        for _, y in on_device(loader, device, mean, std, side, augment):
            seen += len(y)
        sync(device)
    del loader
    return seen / (time.perf_counter() - started)


def augment_rate(images: np.ndarray, name: str, seconds: float = 3.0) -> float:
    """Images/second of the preset's albumentations pipeline in this thread."""
    pipeline = build_pipeline(preset(name), images.shape[1], seed=0)
    return float("inf") if pipeline is None else pipeline_rate(pipeline, images, seconds)


def pipeline_rate(pipeline, images: np.ndarray, seconds: float) -> float:
    """Images/second of an albumentations pipeline in this thread, OpenCV on one thread as in a
    loader worker."""
    with opencv_threads(1):
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            pipeline(image=np.ascontiguousarray(images[done % len(images)]))
            done += 1
        return done / (time.perf_counter() - started)


def common_way_rate(table, size: int, seconds: float = 3.0) -> float:
    """Images/second of PIL decode + torchvision Resize/flip/ToTensor/Normalize in one thread."""
    from PIL import Image
    from torchvision import transforms

    transform = transforms.Compose([transforms.Resize((size, size)), transforms.RandomHorizontalFlip(),
                                    transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        with Image.open(table.files[done % len(table)]) as image:
            transform(image.convert("RGB"))
        done += 1
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=None, help="photos in the data set (default: 15 batches on GPU, 6 on CPU)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="times the decoded photos are repeated in the trial's data (default: 60 batches an epoch on GPU, 1 on CPU)")
    parser.add_argument("--loader-workers", type=int, nargs="*", default=[],
                        help="also time the trial with these DataLoader worker counts (HPO_LOADER_WORKERS)")
    parser.add_argument("--worker-nice", type=int, default=0,
                        help="also time the trial with its loader workers at this lower priority (os.nice)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the real trial (the first is warm-up)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps of the model alone")
    parser.add_argument("--warmup-steps", type=int, default=None)
    parser.add_argument("--augment", default="light", help="augmentation preset: none, light, medium, heavy")
    parser.add_argument("--compile", default="off", help="torch.compile mode, or off")
    parser.add_argument("--augment-on", default="workers", choices=AUGMENT_ON,
                        help="where the trial augments (the study's train.augment_on)")
    parser.add_argument("--unfused", action="store_true",
                        help="also time the model alone and the trial with torch's default optimizer kernels, not fused ones")
    parser.add_argument("--cores-apart", action="store_true",
                        help="also time the trial with the training process on 2 cores of its own, the loader workers on the others")
    parser.add_argument("--copied-ring", action="store_true",
                        help="also time the loader alone and the trial with the ring not page-locked: the pin thread copies each batch")
    parser.add_argument("--cold-compile", action="store_true",
                        help="first time a trial compiled with empty inductor and Triton caches, as a study meets each new shape")
    parser.add_argument("--profile", action="store_true",
                        help="then profile one more trial's second epoch (torch.profiler): host time, GPU busy, host waits")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "hpo-bench-photos")
    args = parser.parse_args()
    if args.profile and args.epochs < 2:
        parser.error("--profile profiles the second epoch: give --epochs 2 or more")
    if args.cold_compile and args.compile == "off":
        parser.error("--cold-compile times compiling: give --compile default or reduce-overhead")
    device = pick_device()
    gpu = device.type == "cuda"
    args.images = args.images or args.batch_size * (15 if gpu else 6)
    args.steps = args.steps or (50 if gpu else 5)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (10 if gpu else 2)
    name = torch.cuda.get_device_name(device) if gpu else f"cpu ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; {args.backbone} at {args.image_size} px, batch"
          f" {args.batch_size}, augment {args.augment} on the {args.augment_on}, compile {args.compile}", flush=True)

    per_class = -(-args.images // CLASSES)
    root = write_photos(args.data / f"{CLASSES}x{per_class}", CLASSES, per_class)
    table = load_table("imagefolder", {"root": str(root)})
    os.environ.setdefault(cache.ENV_CACHE, str(args.data / "cache"))
    path = cache.cache_path(table, args.image_size)
    if path is not None and path.exists():
        path.unlink()  # time a real build
    started = time.perf_counter()
    images = cache.decoded(table, args.image_size)
    build = time.perf_counter() - started
    print(f"decode once: {len(table)} JPEGs (384x512) -> cache in {build:.1f} s ="
          f" {len(table) / build:.0f} images/s on {available_cpus()} threads", flush=True)
    print(f"common way, every epoch: PIL + torchvision {common_way_rate(table, args.image_size):.0f}"
          f" images/s per core", flush=True)
    print(f"augmentation ({args.augment}) on uint8: {augment_rate(images, args.augment):.0f} images/s per core",
          flush=True)

    repeat = args.repeat or (-(-60 * args.batch_size // len(table)) if gpu else 1)
    images, labels = tiled(images, table.labels, repeat, args.data)
    print(f"trial data: {len(labels)} images ({len(table)} photos x {repeat})", flush=True)
    if args.cold_compile:
        cold_trial(args, device, images, labels)
    feed = loader_alone(args, device, images, labels)
    print(f"(c) loader alone: {feed:.1f} images/s", flush=True)

    # (a) before and after (b): on a shared machine the speed drifts, the mean brackets (b).
    before = model_alone(args, device)
    with counted_copy_waits() as copy_waits:
        trial, waited = real_trial(args, device, images, labels)
    if gpu:
        print(f"the trial's host blocked on {copy_waits[1]} of the {copy_waits[0]} copies it checked before"
              " letting their slot be written again", flush=True)
    after = model_alone(args, device)
    alone = (before + after) / 2
    print(f"(a) model alone: {alone:.1f} images/s (before {before:.1f}, after {after:.1f})", flush=True)
    print(f"(b) hpo trial:   {rate_and_wait((trial, waited))}", flush=True)
    for workers in args.loader_workers:
        os.environ["HPO_LOADER_WORKERS"] = str(workers)
        print(f"(b) with {workers} loader workers: {rate_and_wait(real_trial(args, device, images, labels))}", flush=True)
    os.environ.pop("HPO_LOADER_WORKERS", None)
    if args.worker_nice:  # the workers at a lower priority than the process launching the kernels
        with workers_starting_with(lambda: os.nice(args.worker_nice)):
            print(f"(b) with loader workers at nice {args.worker_nice}: {rate_and_wait(real_trial(args, device, images, labels))}",
                  flush=True)
    print(f"ratio (b)/(a):   {trial / alone:.2f}", flush=True)
    if args.cores_apart and gpu:  # loader workers run on a GPU only
        with cores_apart():
            print(f"(b) with the training process on 2 cores apart: {rate_and_wait(real_trial(args, device, images, labels))}",
                  flush=True)
    if args.unfused:
        unfused()
        print(f"unfused optimizer: (a) {model_alone(args, device):.1f} images/s,"
              f" (b) {rate_and_wait(real_trial(args, device, images, labels))}", flush=True)
    if args.copied_ring and gpu:
        print(f"page-locking a {RING_BYTES >> 20} MiB ring and letting it go: {page_lock_seconds():.2f} s", flush=True)
        copied_ring()
        print(f"ring copied by the pin thread: (c) {loader_alone(args, device, images, labels):.1f} images/s,"
              f" (b) {rate_and_wait(real_trial(args, device, images, labels))}", flush=True)
    if args.profile:
        profiled_trial(args, device, images, labels)


def rate_and_wait(figures: tuple[float, float]) -> str:
    return f"{figures[0]:.1f} images/s, {figures[1]:.0%} of it waiting for batches"


if __name__ == "__main__":
    main()
