"""Workers: the trial loop (in-process or as `hpo worker`) and the local process pool."""

from hpo.workers.loop import (
    EXIT_DEVICE,
    EXIT_DONE,
    EXIT_INPUT,
    EXIT_STOPPED,
    DeviceError,
    Worker,
    WorkerStopping,
)
from hpo.workers.pool import SQLITE_MAX_WORKERS, Pool, Slot, plan_slots

__all__ = [
    "EXIT_DEVICE", "EXIT_DONE", "EXIT_INPUT", "EXIT_STOPPED", "SQLITE_MAX_WORKERS",
    "DeviceError", "Pool", "Slot", "Worker", "WorkerStopping", "plan_slots",
]
