"""What this machine offers a trial: its device, its CPU cores, torch's threads on them.

torch is imported on first use, so that the light commands (help, a study file's check) stay fast.
"""

from __future__ import annotations

import gc
import os
from typing import TYPE_CHECKING

from hpo.settings import settings

if TYPE_CHECKING:
    import torch


def pick_device() -> torch.device:
    """The GPU when there is one (this process's first visible one), else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def available_cpus() -> int:
    """The cores this process may run on (its affinity), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def limit_threads() -> None:
    """``HPO_THREADS`` caps this process's torch CPU threads: `hpo run --workers N` sets it per
    worker; set it by hand where other jobs share the cores."""
    if threads := settings().threads:
        import torch

        torch.set_num_threads(threads)


def release_device_memory() -> None:
    """Collect a finished trial's tensors and hand the GPU's cached blocks back at once: a packed
    neighbour (--trials-per-gpu) may need them before this worker's next trial does."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
