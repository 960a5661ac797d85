"""Studies for the worker tests: tiny trials, short heartbeats, real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest

from tests.conftest import tiny_study, write_study


def worker_study(root: Path, tmp_path: Path, n_trials: int, max_epochs: int = 1, **changes) -> Path:
    study = tiny_study(root, tmp_path, budget__n_trials=n_trials, budget__max_epochs=max_epochs,
                       budget__patience=None, **changes)
    study["name"] = f"w-{uuid.uuid4().hex[:8]}"  # unique: PostgreSQL is shared between tests
    study["workers"] = {"heartbeat_interval": 1, "grace_period": 6, "max_retry": 2}
    return write_study(tmp_path / "study.yaml", study)


def start(*args: str, cwd: Path, storage: str) -> subprocess.Popen:
    env = {**os.environ, "HPO_STORAGE": storage, "OMP_NUM_THREADS": "1", "HPO_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "hpo", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    return request.getfixturevalue("postgres_url")


def load(name: str, url: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def running_trial(name: str, url: str, timeout: float = 120):
    """Wait until the study exists and one of its trials is RUNNING and has reported an epoch."""
    import optuna
    from optuna.trial import TrialState

    def load_quietly():
        try:
            return optuna.load_study(study_name=name, storage=url)
        except Exception:  # not created yet (or tables being created right now)
            return None

    study = wait_for(load_quietly, timeout, "the study")
    trial = wait_for(lambda: next((t for t in study.get_trials(states=(TrialState.RUNNING,))
                                   if "progress" in t.user_attrs), None), timeout, "a running trial")
    return study, trial
