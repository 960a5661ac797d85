"""The pool's supervision of its worker processes: an input error stops the run, a crash
restarts the worker up to MAX_RESTARTS times, and nothing restarts once the budget is done."""

from __future__ import annotations

import io
import signal
import subprocess
import sys

import optuna
import pytest
from rich.console import Console

from hpo.config import parse_spec
from hpo.errors import HpoError
from hpo.study import connect
from hpo.workers import pool
from hpo.workers.pool import MAX_RESTARTS, Pool, Slot, _Process
from tests.conftest import tiny_study

INPUT_ERROR = "print('error: data.root: folder /gone does not exist'); raise SystemExit(2)"
CRASH = "raise SystemExit(1)"
SLEEP = "import time; time.sleep(60)"
DONE = "raise SystemExit(0)"


@pytest.fixture
def handle(image_root, tmp_path):
    return connect(parse_spec(tiny_study(image_root, tmp_path)), f"sqlite:///{tmp_path / 'pool.db'}")


def scripted_pool(handle, tmp_path, monkeypatch, scripts: list[list[str]]) -> tuple[Pool, list[int], io.StringIO]:
    """A pool whose worker i runs scripts[i][n] (Python code) at its n-th start; the last repeats.
    Returns the pool, the slot of every start in order, and the console's text."""
    started: list[int] = []

    def spawn(self, slot, restarts=0):
        code = scripts[slot.index][min(started.count(slot.index), len(scripts[slot.index]) - 1)]
        started.append(slot.index)
        log = self.logs / f"worker-{slot.index}.log"
        with log.open("a") as out:
            popen = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT)
        return _Process(slot, popen, log, restarts)

    monkeypatch.setattr(Pool, "_spawn", spawn)
    monkeypatch.setattr(pool, "POLL_SECONDS", 0.05)
    text = io.StringIO()
    slots = [Slot(i, None, 1) for i in range(len(scripts))]
    return Pool(handle, tmp_path / "study.yaml", [], slots, 2, None, Console(file=text), False), started, text


def test_an_input_error_stops_every_worker_and_the_run(handle, tmp_path, monkeypatch):
    runner, started, _ = scripted_pool(handle, tmp_path, monkeypatch, [[SLEEP], [INPUT_ERROR]])
    with pytest.raises(HpoError, match=r"^worker 1: data.root: folder /gone does not exist$"):
        runner.run()
    assert started == [0, 1]  # not restarted
    assert [p.popen.returncode for p in runner.processes] == [-signal.SIGTERM, 2]


def test_a_crashing_worker_restarts_until_max_restarts(handle, tmp_path, monkeypatch):
    runner, started, text = scripted_pool(handle, tmp_path, monkeypatch, [[CRASH], [CRASH, CRASH, DONE]])
    runner.run()
    assert started.count(0) == 1 + MAX_RESTARTS and started.count(1) == 3
    out = text.getvalue()
    assert out.count("worker 0 exited (1): restarting") == MAX_RESTARTS
    assert out.count("worker 0 exited (1); not restarted") == 1
    assert out.count("worker 1 exited (1): restarting") == 2 and "worker 1 exited (0)" not in out


def test_nothing_restarts_once_the_budget_is_done(handle, tmp_path, monkeypatch):
    for value in (0.5, 0.7):  # the budget of 2 is already finished
        handle.study.add_trial(optuna.trial.create_trial(value=value))
    runner, started, text = scripted_pool(handle, tmp_path, monkeypatch, [[CRASH]])
    runner.run()
    assert started == [0]
    assert "worker 0 exited (1); not restarted" in text.getvalue()
