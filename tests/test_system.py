"""The machine: HPO_THREADS caps torch's CPU threads; without it, the governor fits them to the
cores other jobs leave free."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hpo.errors import ConfigError
from hpo.system import ThreadGovernor, available_cpus, limit_threads


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_hpo_threads_caps_torch_threads(monkeypatch, threads):
    monkeypatch.setenv("HPO_THREADS", "1")
    limit_threads()
    assert torch.get_num_threads() == 1
    monkeypatch.setenv("HPO_THREADS", "none")
    with pytest.raises(ConfigError, match="HPO_THREADS='none': expected a whole number >= 1"):
        limit_threads()


BUSY = "import time\nend = time.time() + 30\nwhile time.time() < end: pass"


def look(governor: ThreadGovernor, seconds: float) -> int | None:
    governor.adjust()  # starts the interval
    time.sleep(seconds)
    return governor.adjust()


@pytest.mark.skipif(available_cpus() < 2 or not Path("/proc/stat").exists(), reason="needs 2 cores and Linux's /proc")
def test_the_governor_gives_torch_the_cores_other_jobs_leave(monkeypatch, threads):
    """Alone: every core this process may use. Beside one busy loop: one core fewer, at the next
    look; back to all once the loop ends."""
    monkeypatch.delenv("HPO_THREADS", raising=False)
    governor = ThreadGovernor()
    cores = available_cpus()
    assert look(governor, 1.0) == cores and torch.get_num_threads() == cores
    busy = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        time.sleep(0.3)
        assert look(governor, 1.5) == cores - 1 and torch.get_num_threads() == cores - 1
    finally:
        busy.kill()
        busy.wait()
    assert look(governor, 1.0) == cores and torch.get_num_threads() == cores


def test_the_governor_leaves_fixed_threads_and_machines_without_proc_alone(monkeypatch, threads):
    monkeypatch.setenv("HPO_THREADS", "1")
    limit_threads()
    assert ThreadGovernor().adjust() is None and torch.get_num_threads() == 1
    monkeypatch.delenv("HPO_THREADS")
    monkeypatch.setattr("hpo.system._cpu_counters", lambda: None)
    assert ThreadGovernor().adjust() is None and torch.get_num_threads() == 1
