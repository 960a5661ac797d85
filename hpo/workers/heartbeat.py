"""Background threads that keep a study honest: a trial's heartbeat, and the stale-trial sweeper.

Optuna's own heartbeat thread dies on the first database error and then lets a healthy trial be
failed; these log the error and carry on (storage calls also retry transient errors).
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable

import optuna
from optuna.exceptions import ExperimentalWarning

from hpo.errors import first_line

log = logging.getLogger(__name__)


class _Periodic:
    """Calls ``tick`` every ``interval`` seconds (first call at once) until stopped."""

    def __init__(self, name: str, interval: float, tick: Callable[[], None]) -> None:
        self.interval, self.tick = interval, tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        while True:
            try:
                self.tick()
            except Exception as e:  # noqa: BLE001 - a database hiccup must not end the thread
                log.warning("%s: %s (will retry)", self._thread.name, first_line(e) or type(e).__name__)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> _Periodic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def heartbeat(storage: optuna.storages.RDBStorage, trial_id: int, interval: float) -> _Periodic:
    """Use as ``with heartbeat(...):`` around a trial."""
    return _Periodic(f"heartbeat-{trial_id}", interval, lambda: storage.record_heartbeat(trial_id))


def fail_stale_trials(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def sweeper(study: optuna.Study, interval: float, also: Callable[[], None] | None = None) -> _Periodic:
    """Fails trials whose heartbeat stopped (their worker died) promptly, on its own schedule;
    the storage's callback re-enqueues them with the same parameters."""

    def tick() -> None:
        fail_stale_trials(study)
        if also is not None:
            also()

    return _Periodic("sweeper", interval, tick)
