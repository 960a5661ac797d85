"""Trial packing: training images/second of the machine summed over K trials sharing one GPU.

Runs K worker processes at once (as `hpo run --trials-per-gpu K` does), each training the same
small backbone on the cached photos (hpo's fit_fold); each reports its training images/second
over the epochs after the first, and the sum is the machine's throughput. On a CPU the K
processes split the cores (HPO_THREADS = cores / K, as hpo run sets it).

    python bench/packing.py --backbone resnet18 --image-size 128 --batch-size 64 --packs 1 2 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def worker(args: argparse.Namespace) -> None:
    """One packed trial: wait for the common start, train, print images/second as JSON."""
    import numpy as np
    import torch
    from _common import recipe, tiled

    from hpo.data import cache
    from hpo.data.formats import load_table
    from hpo.system import pick_device
    from hpo.train.loop import FoldData, fit_fold

    if threads := os.environ.get("HPO_THREADS"):
        torch.set_num_threads(int(threads))
    table = load_table("imagefolder", {"root": str(args.root)})
    images, labels = tiled(cache.decoded(table, args.image_size), table.labels, args.repeat, args.data)
    cfg = recipe(args.backbone, args.image_size, args.batch_size, args.epochs, seed=args.index)
    everything = np.arange(len(labels))
    val = everything[:: 10 * args.repeat]
    data = FoldData(images, labels, np.setdiff1d(everything, val), val, table.num_classes)
    time.sleep(max(0.0, args.start_at - time.time()))
    result = fit_fold(cfg, data, pick_device())
    rates = [e.images_per_second for e in result.history[1:]]
    print(json.dumps({"images_per_second": sum(rates) / len(rates)}))


def run_pack(args: argparse.Namespace, k: int) -> list[float]:
    cores = os.cpu_count() or 1
    start_at = time.time() + args.settle + 3 * k  # every process imported and loaded before any trains
    command = [sys.executable, __file__, "--worker", "--root", str(args.root), "--backbone", args.backbone,
               "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
               "--epochs", str(args.epochs), "--repeat", str(args.repeat), "--data", str(args.data),
               "--start-at", str(start_at)]
    procs = []
    for index in range(k):
        env = {**os.environ, "HPO_THREADS": str(max(1, cores // k)), "OMP_NUM_THREADS": str(max(1, cores // k))}
        procs.append(subprocess.Popen([*command, "--index", str(index)], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    rates = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"packed worker failed:\n{err[-2000:]}")
        rates.append(json.loads(out.strip().splitlines()[-1])["images_per_second"])
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=None, help="photos (default: 30 batches on GPU, 8 on CPU)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="times the photos are repeated in each trial's data (default: 120 batches an epoch on GPU, 1 on CPU)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per packed trial (the first is warm-up)")
    parser.add_argument("--packs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--settle", type=float, default=20.0, help="seconds the K processes get to import and load before all start")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "hpo-bench-photos")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    import torch
    from _common import tiled, write_photos

    from hpo.data import cache
    from hpo.data.formats import load_table

    gpu = torch.cuda.is_available()
    images = args.images or args.batch_size * (30 if gpu else 8)
    per_class = -(-images // 6)
    args.root = write_photos(args.data / f"6x{per_class}", 6, per_class)
    args.repeat = args.repeat or (-(-120 * args.batch_size // (6 * per_class)) if gpu else 1)
    os.environ.setdefault(cache.ENV_CACHE, str(args.data / "cache"))
    table = load_table("imagefolder", {"root": str(args.root)})
    tiled(cache.decoded(table, args.image_size), table.labels, args.repeat, args.data)  # built once, shared
    device = torch.cuda.get_device_name(0) if gpu else f"cpu ({os.cpu_count()} cores)"
    print(f"device: {device}; {args.backbone} at {args.image_size} px, batch {args.batch_size},"
          f" {6 * per_class} photos x {args.repeat}, {args.epochs} epochs per trial", flush=True)
    base = None
    for k in args.packs:
        rates = run_pack(args, k)
        total = sum(rates)
        base = base or total
        print(f"{k} packed trial(s): {total:.1f} images/s in all ({', '.join(f'{r:.1f}' for r in rates)});"
              f" x{total / base:.2f} of one", flush=True)


if __name__ == "__main__":
    main()
