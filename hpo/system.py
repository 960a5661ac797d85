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


class ThreadGovernor:
    """Torch's CPU threads, fitted to the cores other processes leave free (unless
    ``HPO_THREADS`` fixes them). torch's OpenMP threads spin while they wait for each other; when
    another job holds a core, they lose their turn at every op and training collapses (measured:
    102 images/s with 2 threads beside two busy loops, against 285 with 1 and 687 alone). So the
    governor looks at how busy the machine's other processes were since its last look (Linux's
    /proc counters, no waiting) and sets torch to the cores they left: all of them when alone, one
    fewer per core another job takes. Called at the start of a run and after every epoch."""

    def __init__(self) -> None:
        self.cores = available_cpus()
        self.fixed = settings().threads
        self.threads: int | None = None
        self._last = _cpu_counters()

    def other_cores(self) -> float | None:
        """Cores other processes kept busy since the last look (None where /proc is absent)."""
        now = _cpu_counters()
        if now is None or self._last is None:
            self._last = now
            return None
        busy, total, own = (b - a for a, b in zip(self._last, now, strict=True))
        self._last = now
        if total <= 0:
            return None
        machine = os.cpu_count() or self.cores
        others = max(0.0, (busy - own) / total * machine)
        return max(0.0, others - (machine - self.cores))  # the part on the cores this process may use

    def adjust(self) -> int | None:
        """Set torch's threads for what is free now; returns them (None: left as they are)."""
        if self.fixed is not None or self.cores < 2:
            return None
        others = self.other_cores()
        if others is None:
            return None
        threads = max(1, min(self.cores, int(self.cores - others + 0.3)))
        if threads != self.threads:
            import torch

            torch.set_num_threads(threads)
            self.threads = threads
        return threads


def _cpu_counters() -> tuple[int, int, int] | None:
    """(every CPU's busy ticks, every CPU's ticks, this process's ticks) from /proc, or None."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
        with open("/proc/self/stat") as own:
            parts = own.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])
    return total - idle, total, int(parts[11]) + int(parts[12])  # utime + stime
