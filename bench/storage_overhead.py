"""Storage overhead per trial of hpo's worker loop, with a no-op training.

Each of N processes claims trials under the study lock (ask + heartbeat), reports 10
intermediate values with a pruning check each, and tells the result, until the study holds
the budget. Prints the median and p90 wall time per trial and the trials lost (FAIL/RUNNING).

    python bench/storage_overhead.py --storage sqlite:////tmp/bench.db --workers 1 8 16
    python bench/storage_overhead.py --storage postgresql+psycopg://postgres@127.0.0.1/test --workers 1 8 32
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time
import uuid

import optuna
from optuna.trial import TrialState


def worker(url: str, name: str, budget: int, queue: mp.Queue) -> None:
    from hpo.config import load_spec
    from hpo.study import connect
    from hpo.workers.heartbeat import heartbeat
    from hpo.workers.loop import Worker

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_spec("digits", [f"name={name}", "cv.folds=2"])
    handle = connect(spec, url)
    handle.study.sampler.reseed_rng()
    loop = Worker(handle, budget, poll_seconds=0.05)
    times = []
    while True:
        started = time.perf_counter()
        trial = loop._claim()
        if trial is None:
            break
        if trial == "wait":
            time.sleep(0.05)
            continue
        with heartbeat(handle.storage, trial._trial_id, spec.workers.heartbeat_interval):
            trial.suggest_float("lr", 1e-4, 1e-1, log=True)
            for step in range(10):
                trial.report(0.5, step)
                trial.should_prune()
        loop._finish(trial, 0.5, TrialState.COMPLETE)
        times.append(time.perf_counter() - started)
    queue.put(times)


def measure(url: str, workers: int, trials_per_worker: int) -> None:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    budget = workers * trials_per_worker
    context = mp.get_context("spawn")
    queue = context.Queue()
    procs = [context.Process(target=worker, args=(url, name, budget, queue)) for _ in range(workers)]
    wall = time.perf_counter()
    for p in procs:
        p.start()
    times = [t for _ in procs for t in queue.get()]
    for p in procs:
        p.join()
    wall = time.perf_counter() - wall
    study = optuna.load_study(study_name=name, storage=url)
    states = [t.state for t in study.trials]
    lost = sum(s in (TrialState.FAIL, TrialState.RUNNING) for s in states)
    times.sort()
    print(f"{workers:>3} workers: {len(times)} trials, per trial median {1000 * statistics.median(times):.0f} ms,"
          f" p90 {1000 * times[int(0.9 * len(times))]:.0f} ms; complete {states.count(TrialState.COMPLETE)},"
          f" lost {lost}; wall {wall:.1f} s (incl. start-up)", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", required=True)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--trials-per-worker", type=int, default=20)
    args = parser.parse_args()
    for n in args.workers:
        measure(args.storage, n, args.trials_per_worker)
