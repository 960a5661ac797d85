"""Workers: the trial loop (in-process or as `hpo worker`) and the local process pool.

Names are imported from their modules on first use (PEP 562): `hpo.workers.stopping` is light,
and importing it must not load the trial loop's torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpo.errors import EXIT_DEVICE, EXIT_DONE, EXIT_INPUT, EXIT_STOPPED, DeviceError, WorkerStopping
    from hpo.workers.loop import Worker
    from hpo.workers.pool import Pool, Slot, plan_slots

__all__ = [
    "EXIT_DEVICE", "EXIT_DONE", "EXIT_INPUT", "EXIT_STOPPED",
    "DeviceError", "Pool", "Slot", "Worker", "WorkerStopping", "plan_slots",
]
_HOMES = {"Worker": "hpo.workers.loop", "Pool": "hpo.workers.pool",
          "Slot": "hpo.workers.pool", "plan_slots": "hpo.workers.pool"}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'hpo.workers' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES.get(name, "hpo.errors")), name)
    globals()[name] = value
    return value
