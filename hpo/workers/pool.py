"""A pool of local worker processes: one or more per GPU (or sharing the CPU cores), pinned
with CUDA_VISIBLE_DEVICES, restarted when they die, stopped cleanly on Ctrl-C / SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from optuna.trial import TrialState
from rich.console import Console

from hpo import keys, settings
from hpo.errors import EXIT_DONE, EXIT_INPUT, ConfigError, HpoError, first_line
from hpo.progress import RunDisplay
from hpo.settings import child_environment
from hpo.storage import STORAGE_FAILURES, backend, max_workers
from hpo.study import StudyHandle
from hpo.workers.heartbeat import sweeper
from hpo.workers.stopping import sigterm_raises, stop_if_requested

log = logging.getLogger(__name__)

MAX_RESTARTS = 5
STOP_SECONDS = 30
POLL_SECONDS = 1.0  # how often the pool looks at its workers and the study


@dataclass(frozen=True)
class Slot:
    index: int
    gpu: str | None  # a CUDA device index, or None for CPU
    threads: int     # CPU threads for this worker's torch ops


def plan_slots(workers: int | None, gpus: list[str] | None, trials_per_gpu: int) -> list[Slot]:
    """Workers per GPU (``trials_per_gpu`` each, round robin); without GPUs, CPU workers that
    split the cores between them."""
    visible = torch.cuda.device_count()
    if gpus is None:
        gpus = [str(i) for i in range(visible)]
    wrong = [g for g in gpus if not (g.isdigit() and int(g) < visible)]
    if wrong:
        raise ConfigError(f"--gpus {','.join(gpus)}: no CUDA device {wrong[0]!r} here (this machine shows"
                          f" {visible}: {', '.join(map(str, range(visible))) or 'none'}); list indices it has")
    cores = os.cpu_count() or 1
    if gpus:
        order = [gpu for gpu in gpus for _ in range(trials_per_gpu)]
        n = workers or len(order)
        return [Slot(i, order[i % len(order)], max(1, cores // n)) for i in range(n)]
    n = workers or 1
    return [Slot(i, None, max(1, cores // n)) for i in range(n)]


def check_pool_storage(url: str, workers: int) -> None:
    most, name = max_workers(url), type(backend(url)).__name__
    if most is not None and workers > most:
        raise ConfigError(
            f"{workers} workers on one {name} database: {name} holds up to {most};"
            " use PostgreSQL for more (--storage postgresql+psycopg://user@host/db)"
        )


@dataclass
class _Process:
    slot: Slot
    popen: subprocess.Popen
    log: Path
    restarts: int = 0
    done: bool = False


class Pool:
    def __init__(self, handle: StudyHandle, study_file: Path, overrides: list[str], slots: list[Slot],
                 budget: int, timeout: float | None, console: Console, live: bool) -> None:
        check_pool_storage(handle.url, len(slots))
        self.handle, self.study_file, self.overrides = handle, study_file, overrides
        self.slots, self.budget, self.console, self.live = slots, budget, console, live
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.logs = handle.spec.outputs / "logs"
        self.processes: list[_Process] = []

    def run(self) -> None:
        """Start the workers and supervise them until the budget is done."""
        self.logs.mkdir(parents=True, exist_ok=True)
        with sigterm_raises(KeyboardInterrupt):  # unwinds the display, then stop() below
            try:
                with sweeper(self.handle.study, self.handle.spec.workers.sweep_interval), \
                        RunDisplay(self.handle.study, self.budget, self.console, self.live) as display:
                    self.processes = [self._spawn(slot) for slot in self.slots]
                    self.console.print(f"started {len(self.slots)} workers ({_describe(self.slots)});"
                                       f" logs in {self.logs}", soft_wrap=True)
                    while not all(p.done for p in self.processes):
                        stop_if_requested()
                        self._supervise()
                        _quietly(display.poll)
                        time.sleep(POLL_SECONDS)
                    _quietly(display.poll)
            except KeyboardInterrupt:
                self.stop()
                raise

    def _spawn(self, slot: Slot, restarts: int = 0) -> _Process:
        remaining = None if self.deadline is None else max(1.0, self.deadline - time.monotonic())
        command = [sys.executable, "-m", "hpo", "worker", "--study", str(self.study_file),
                   "--n-trials", str(self.budget)]
        command += [arg for o in self.overrides for arg in ("--set", o)]
        command += ["--timeout", f"{remaining:.0f}"] if remaining is not None else []
        env = child_environment(**{
            settings.STORAGE: self.handle.url,  # in the environment, not argv: ps shows argv
            settings.THREADS: str(slot.threads), "OMP_NUM_THREADS": str(slot.threads),
            settings.SUPERVISOR: str(os.getpid()),  # the worker stops if this process dies
            **({settings.CUDA_DEVICES: slot.gpu} if slot.gpu is not None else {})})
        log = self.logs / f"worker-{slot.index}.log"
        with log.open("a") as handle:
            popen = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        return _Process(slot, popen, log, restarts)

    def _supervise(self) -> None:
        for i, process in enumerate(self.processes):
            if process.done or (code := process.popen.poll()) is None:
                continue
            if code == EXIT_DONE:
                process.done = True
            elif code == EXIT_INPUT:
                self.stop()
                raise HpoError(f"worker {process.slot.index}: {_last_line(process.log)}")
            elif process.restarts >= MAX_RESTARTS or self._budget_done():
                process.done = True
                self.console.print(f"worker {process.slot.index} exited ({code}); not restarted")
            else:
                self.console.print(f"worker {process.slot.index} exited ({code}): restarting;"
                                   f" see {process.log}", soft_wrap=True)
                self.processes[i] = self._spawn(process.slot, process.restarts + 1)

    def _budget_done(self) -> bool:
        states = (TrialState.COMPLETE, TrialState.PRUNED)
        return len(self.handle.study.get_trials(deepcopy=False, states=states)) >= self.budget

    def stop(self) -> None:
        """SIGTERM every worker (each fails and re-enqueues its running trial), wait, then kill
        stragglers and re-enqueue what they left RUNNING."""
        alive = [p for p in self.processes if p.popen.poll() is None]
        for process in alive:
            process.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for process in alive:
            try:
                process.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait()
        killed = {p.popen.pid for p in alive if p.popen.returncode == -signal.SIGKILL}
        if killed:
            requeue_running(self.handle, killed)


def requeue_running(handle: StudyHandle, pids: set[int]) -> None:
    """Fail the RUNNING trials of killed local workers and enqueue them again."""
    study = handle.study
    names = {f"{socket.gethostname()}:{pid}" for pid in pids}  # as workers name themselves
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get(keys.WORKER) in names:
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            study.enqueue_trial(trial.params, user_attrs={keys.REQUEUED_FROM: trial.number})


def _quietly(refresh: Callable[[], None]) -> None:
    """The display reads the storage; a database outage must not stop the supervision."""
    try:
        refresh()
    except STORAGE_FAILURES as e:
        log.warning("display not refreshed: %s", first_line(e))


def _describe(slots: list[Slot]) -> str:
    if slots[0].gpu is None:
        threads = slots[0].threads
        return f"CPU, {threads} thread{'s' if threads > 1 else ''} each"
    return "GPUs " + ",".join(s.gpu or "" for s in slots)


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].removeprefix("error: ") if lines else f"exited with an input error; see {log}"
