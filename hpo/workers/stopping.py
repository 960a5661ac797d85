"""Stopping a worker cleanly: SIGTERM raised as an exception in the main thread (its running
trial is then failed and re-enqueued), checked again where Python may have lost the raise, and
a worker started by `hpo run` stopping once that process is gone. No torch: the command line
sets this up before anything heavy is imported."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from hpo.errors import WorkerStopping
from hpo.settings import settings

log = logging.getLogger(__name__)
_stop_requested: type[BaseException] | None = None  # what a SIGTERM asked to raise (see stop_if_requested)


def raise_on_sigterm(stop: type[BaseException] = WorkerStopping) -> None:
    """Turn SIGTERM into ``stop`` raised in the main thread (as Ctrl-C is KeyboardInterrupt)."""
    global _stop_requested

    def handler(signum: int, frame: FrameType | None) -> None:
        global _stop_requested
        _stop_requested = stop
        raise stop()

    _stop_requested = None
    signal.signal(signal.SIGTERM, handler)


@contextmanager
def sigterm_raises(stop: type[BaseException]) -> Iterator[None]:
    """raise_on_sigterm(stop) for the block; the handler before it, and no stop asked, after."""
    global _stop_requested
    previous = signal.getsignal(signal.SIGTERM)
    raise_on_sigterm(stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop_requested = None


def stop_if_requested() -> None:
    """The SIGTERM's exception again, where the signal handler's was lost: raised while Python
    ran a finalizer or a weakref callback (a DataLoader's, say), it is only printed ("Exception
    ignored"), and a worker went on to finish the whole budget. Workers check between trials
    and after every epoch, the pool at every look at its workers."""
    if _stop_requested is not None:
        raise _stop_requested()


@contextmanager
def stop_when_orphaned(interval: float = 1.0) -> Iterator[None]:
    """In a worker process that `hpo run` started (``HPO_SUPERVISOR_PID``): stop as on SIGTERM
    (the running trial failed and re-enqueued) once that process is gone, killed with no chance
    to stop its workers (kill -9, an OOM kill). The worker is then re-parented, so its parent
    process id changes. A worker started by hand has no supervisor and is left alone."""
    supervisor = settings().supervisor_pid
    if supervisor is None:
        yield
        return
    done = threading.Event()

    def watch() -> None:
        while not done.wait(interval):
            if os.getppid() != supervisor:
                log.warning("the hpo run that started this worker (pid %s) is gone: stopping", supervisor)
                os.kill(os.getpid(), signal.SIGTERM)  # the SIGTERM path: the trial goes back to the queue
                return

    thread = threading.Thread(target=watch, name="supervisor-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
