"""CPU training speed when other jobs share the cores, by the number of torch threads (what
HPO_THREADS sets) and by how OpenMP's threads wait for each other between parallel regions
(libgomp spins a while, then sleeps; OMP_WAIT_POLICY=PASSIVE sleeps at once; GOMP_SPINCOUNT
shortens the spin), and hpo's default (hpo.system.ThreadGovernor: the cores other processes
leave free, looked at before the run and after every epoch, here every 10 steps).

Each figure is a fresh process training a small timm model on random 24 px images (the digits
demo's size): alone, beside one busy loop per core (a build, say), and beside another torch
job using every core (a second study, a notebook).

    python bench/shared_cores.py                      # resnet10t, batch 32, 24 px
    python bench/shared_cores.py --backbone lcnet_050 --image-size 32
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

TRAIN = """
import sys, time, torch, timm
from hpo.system import ThreadGovernor
backbone, size, batch, steps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
governor = ThreadGovernor() if threads == 0 else None  # 0: hpo's default policy, as a trial runs
if governor is None:
    torch.set_num_threads(threads)
else:
    time.sleep(0.3)  # the look a run takes before its first trial
    governor.adjust()
model = timm.create_model(backbone, num_classes=10)
optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
def step():
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
for _ in range(5):
    step()
started = time.perf_counter()
for i in range(steps):
    step()
    if governor is not None and i % 10 == 9:  # as after every epoch
        governor.adjust()
print(steps * batch / (time.perf_counter() - started))
"""

# The other jobs: a process per core that never sleeps, or one torch job on every core.
NEIGHBOURS = {
    "idle": [],
    "beside 1 busy loop": ["while True: pass"],
    "beside {n} busy loops": ["while True: pass"] * (os.cpu_count() or 1),
    "beside another torch job": ["import torch\nx = torch.randn(192, 192)\nwhile True: x @ x"],
}
CORES = os.cpu_count() or 1
# column -> (torch threads, environment)
SETTINGS = {
    f"{CORES} threads": (CORES, {}),
    f"{CORES}, PASSIVE": (CORES, {"OMP_WAIT_POLICY": "PASSIVE"}),
    f"{CORES}, spin 10k": (CORES, {"GOMP_SPINCOUNT": "10000"}),
    f"{CORES}, spin 1k": (CORES, {"GOMP_SPINCOUNT": "1000"}),
    "1 thread": (1, {}),
    "hpo (auto)": (0, {}),
}


def images_per_second(threads: int, env_changes: dict[str, str], args: argparse.Namespace) -> float:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "HPO_THREADS", "GOMP_SPINCOUNT")}
    command = [sys.executable, "-c", TRAIN, args.backbone, str(args.image_size), str(args.batch_size),
               str(args.steps), str(threads)]
    done = subprocess.run(command, env={**env, **env_changes}, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet10t")
    parser.add_argument("--image-size", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"{args.backbone}, {args.image_size} px, batch {args.batch_size}, {CORES} cores;"
          f" training images/s, best of {args.repeats}")
    print(f"{'':<28}" + "".join(f"{name:>14}" for name in SETTINGS))
    for label, codes in NEIGHBOURS.items():
        busy = [subprocess.Popen([sys.executable, "-c", code]) for code in codes]
        try:
            time.sleep(2.0 if busy else 0.0)
            row = [max(images_per_second(threads, env, args) for _ in range(args.repeats))
                   for threads, env in SETTINGS.values()]
        finally:
            for process in busy:
                process.kill()
                process.wait()
        print(f"{label.format(n=len(codes)):<28}" + "".join(f"{figure:>14.0f}" for figure in row))

if __name__ == "__main__":
    main()
