"""The worker loop: claim a trial of the study's budget, train it under a heartbeat, tell the
result; until the budget is reached. `hpo run` runs it in-process or in N worker processes,
`hpo worker` joins a study from any machine with the same loop.

Budget: trials are claimed under the study lock, counting COMPLETE + PRUNED + RUNNING ones, so N
workers together run exactly ``budget`` trials (a lock lost to a database restart is noticed on
release, and the claim made under it goes back to the queue). When the remaining budget
is held by RUNNING trials, a worker waits instead of leaving: if one of them was orphaned (its
worker killed), the sweeper fails it after the grace period and re-enqueues it, and a waiting
worker runs the retry.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from hpo import keys
from hpo.errors import (  # noqa: F401 - re-exported
    EXIT_DEVICE,
    EXIT_DONE,
    EXIT_INPUT,
    EXIT_STOPPED,
    DeviceError,
    HpoError,
    WorkerStopping,
)
from hpo.objective import EpochEvent, Objective
from hpo.settings import settings
from hpo.study import COUNTED, StudyHandle, count_states, record_budget, seed_sampler
from hpo.system import pick_device, release_device_memory
from hpo.workers.heartbeat import heartbeat, sweeper
from hpo.workers.stopping import stop_if_requested

log = logging.getLogger(__name__)

MAX_FAILURES_IN_A_ROW = 5


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def is_device_failure(error: BaseException) -> bool:
    accelerator_error = getattr(torch, "AcceleratorError", ())
    return isinstance(error, accelerator_error) or (
        isinstance(error, RuntimeError) and "CUDA error" in str(error)
    )


@dataclass
class Worker:
    handle: StudyHandle
    budget: int
    timeout: float | None = None
    device: torch.device = field(default_factory=pick_device)
    _: KW_ONLY
    on_epoch: Callable[[EpochEvent], None] | None = None
    on_trial_end: Callable[[FrozenTrial], None] | None = None
    on_trial_start: Callable[[int], None] | None = None  # the claimed trial's number
    on_wait: Callable[[str], None] | None = None  # why the worker waits (default: logged)
    name: str = field(default_factory=worker_name)
    poll_seconds: float = 2.0
    ran: int = 0
    current: int | None = None  # the running trial's number
    failures_in_a_row: int = 0

    def run(self) -> int:
        """Run trials until the budget is reached or the timeout passes; returns how many ran."""
        spec, study = self.handle.spec, self.handle.study
        objective = Objective(spec, self.handle.table, self.handle.plan, self.device, self._epoch_ended,
                              lock=self.handle.lock)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        seed_sampler(self.handle)
        record_budget(study, self.budget)
        self._register()
        waited_for: set[int] = set()
        with sweeper(study, spec.workers.sweep_interval, also=self._register):
            while deadline is None or time.monotonic() < deadline:
                stop_if_requested()
                claimed = self._claim()
                if claimed is None:
                    break
                if claimed == "wait":
                    waited_for = self._say_why_waiting(waited_for)
                    time.sleep(self.poll_seconds)
                    continue
                waited_for = set()
                self._run_trial(objective, claimed)
        self._register(finished=True)
        return self.ran

    def _say_why_waiting(self, said: set[int]) -> set[int]:
        """Once per set of running trials: the budget's last places are theirs, and a trial
        whose worker is gone (a crash before this resume) is failed and retried only once its
        heartbeat is a grace period old; say so, and when, instead of sitting silent."""
        study, workers = self.handle.study, self.handle.spec.workers
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        numbers = {t.number for t in running}
        if not numbers or numbers == said:
            return numbers
        seen = {key.removeprefix(keys.WORKER_PREFIX): info.get("last_seen", 0.0)
                for key, info in study.user_attrs.items() if key.startswith(keys.WORKER_PREFIX)}
        now, parts = time.time(), []
        for trial in sorted(running, key=lambda t: t.number):
            owner = trial.user_attrs.get(keys.WORKER, "?")
            last = seen.get(owner)
            heard = f"last heard {now - last:.0f} s ago" if last else "never heard from"
            parts.append(f"trial {trial.number} ({owner}, {heard})")
        latest = workers.grace_period + workers.sweep_interval
        message = (f"waiting for {', '.join(parts)}: they hold the budget's last places. A trial whose worker"
                   f" stopped is failed and retried once its heartbeat is {workers.grace_period} s old"
                   f" (workers.grace_period), within about {latest:.0f} s of its worker's last word")
        (self.on_wait or log.info)(message)
        return numbers

    def _epoch_ended(self, event: EpochEvent) -> None:
        stop_if_requested()
        if self.on_epoch is not None:
            self.on_epoch(event)

    def _claim(self) -> optuna.Trial | str | None:
        with self.handle.lock() as held:
            claimed = self._claim_locked()
        if held.lost and isinstance(claimed, optuna.Trial):
            # A database restart ended the lock's session: another worker may have counted
            # at the same time and claimed the same place of the budget. The claim goes back
            # to the queue (a seed or a retry keeps its parameters), to be claimed again under
            # a working lock.
            log.warning("study lock lost while claiming trial %d; it goes back to the queue", claimed.number)
            self.handle.storage.set_trial_state_values(claimed._trial_id, TrialState.WAITING)
            return "wait"
        return claimed

    def _claim_locked(self) -> optuna.Trial | str | None:
        counts = count_states(self.handle.study)
        done = sum(counts[s] for s in COUNTED)
        if done >= self.budget:
            return None
        if done + counts[TrialState.RUNNING] >= self.budget:
            return "wait"
        with warnings.catch_warnings():
            # Optuna warns that its heartbeat expects Study.optimize; ours runs around ask/tell.
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = self.handle.study.ask()
        # A heartbeat from the start: a trial without one is never detected as stale.
        self.handle.storage.record_heartbeat(trial._trial_id)
        return trial

    def _run_trial(self, objective: Objective, trial: optuna.Trial) -> None:
        study, storage = self.handle.study, self.handle.storage
        self.current = trial.number
        value, state, reason = None, TrialState.FAIL, ""
        try:
            # Beating before the worker's own writes, which may wait for the database.
            with heartbeat(storage, trial._trial_id, self.handle.spec.workers.heartbeat_interval):
                self._register()
                trial.set_user_attr(keys.WORKER, self.name)
                try:
                    if self.on_trial_start is not None:
                        self.on_trial_start(trial.number)
                    value, state = objective(trial), TrialState.COMPLETE
                except optuna.TrialPruned:
                    state = TrialState.PRUNED
                except (WorkerStopping, KeyboardInterrupt):
                    self._finish(trial, None, TrialState.FAIL, "worker stopped")
                    study.enqueue_trial(trial.params, user_attrs={keys.REQUEUED_FROM: trial.number})
                    raise
                except HpoError as e:
                    self._finish(trial, None, TrialState.FAIL, str(e))
                    raise
                except Exception as e:
                    if is_device_failure(e):
                        self._finish(trial, None, TrialState.FAIL, f"device failure: {e}")
                        raise DeviceError(str(e)) from e
                    log.exception("trial %d failed", trial.number)
                    self.failures_in_a_row += 1
                    if self.failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
                        # A bug, not bad luck: stop rather than fail every trial forever.
                        self._finish(trial, None, TrialState.FAIL, f"{type(e).__name__}: {e}")
                        raise
                    reason = f"{type(e).__name__}: {e}"
        finally:
            release_device_memory()  # again once the trial's exception is gone: it held the frames
            self.current = None
        if state != TrialState.FAIL:
            self.failures_in_a_row = 0
        self._finish(trial, value, state, reason)

    def _finish(self, trial: optuna.Trial, value: float | None, state: TrialState, reason: str = "") -> None:
        if reason:
            try:
                trial.set_user_attr(keys.FAIL_REASON, reason)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # already failed by the sweeper: reported below
        frozen = self.handle.study.tell(trial, value, state=state, skip_if_finished=True)
        if frozen.state != state:
            # The sweeper saw no heartbeat for a grace period (a long pause, a database outage)
            # and failed this trial; its retry runs elsewhere. Log and carry on.
            log.warning("trial %d was already %s (stale heartbeat); its %s result is dropped",
                        trial.number, frozen.state.name, state.name)
        self.ran += 1
        if self.on_trial_end is not None:
            self.on_trial_end(frozen)

    def _register(self, finished: bool = False) -> None:
        """Announce this worker in the study (for `hpo status`): last seen, device, trial."""
        self.handle.study.set_user_attr(
            keys.WORKER_PREFIX + self.name,
            {"last_seen": time.time(), "device": str(self.device), "trial": self.current,
             "cuda_visible_devices": settings().cuda_visible_devices, "finished": finished},
        )
