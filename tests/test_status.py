"""`hpo status`: the states, the best trial, running trials with their progress, and workers
marked live, lost (not seen for a grace period) or finished."""

from __future__ import annotations

import io
import time

import optuna
from rich.console import Console

from hpo import keys
from hpo.config import parse_spec
from hpo.status import study_status
from tests.conftest import tiny_study


def render(parts) -> str:
    console = Console(file=io.StringIO(), width=200)
    for part in parts:
        console.print(part)
    return console.file.getvalue()


def test_status_shows_running_trials_and_live_lost_and_finished_workers(image_root, tmp_path):
    spec = parse_spec(tiny_study(image_root, tmp_path, workers={"heartbeat_interval": 10}))
    url = f"sqlite:///{tmp_path / 'status.db'}"
    study = optuna.create_study(study_name=spec.name, storage=url, direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.75))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED))
    running = study.ask()
    running.set_user_attr("worker", "gpu-box:4242")
    running.set_user_attr("progress", {"fold": 1, "epoch": 3, "f1": 0.6123})
    now = time.time()
    for name, seen, finished, trial in [("gpu-box:4242", now - 5, False, running.number),   # beat 5 s ago
                                        ("gpu-box:4243", now - 75, False, 1),   # silent for > the grace period
                                        ("cpu-box:7", now - 60, True, None),
                                        ("cpu-box:8", now - 7200, True, None)]:  # old history
        study.set_user_attr(keys.WORKER_PREFIX + name, {"last_seen": seen, "device": "cuda", "trial": trial,
                                                        "finished": finished})

    out = render(study_status(spec, url))
    assert "study tiny: 2/2 trials done; running 1, complete 1, pruned 1; best macro F1 0.7500 (trial 0)" in out
    study.add_trial(optuna.trial.create_trial(value=0.5))  # a run with --n-trials 3 went past the file's 2
    assert "study tiny: 3 trials done (budget 2); running 1, complete 2" in render(study_status(spec, url))
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[1:-1]]
            for line in out.splitlines() if line.count("│") >= 5}
    assert rows[str(running.number)][:5] == [str(running.number), "gpu-box:4242", "1", "3", "0.6123"]
    assert rows["gpu-box:4242"][2:4] == ["live", str(running.number)]
    assert rows["gpu-box:4243"][2] == "lost"
    assert rows["cpu-box:7"][2:4] == ["finished", "-"]
    assert "cpu-box:8" not in out


def test_status_shows_the_budget_the_study_was_run_to(finished_study, tmp_path):
    """A study run with --n-trials 3 is 3/3 done, not 3 of the study file's 2."""
    assert finished_study.spec.budget.n_trials == 3  # the finished study ran to its file's budget
    spec = parse_spec({**finished_study.spec.raw, "budget": {**finished_study.spec.raw["budget"], "n_trials": 16}})
    assert "study tiny: 3/3 trials done; complete" in render(study_status(spec, finished_study.url))


def _without_root_overrides() -> None:
    """In a child process run as root: give up reading and writing past file permissions, as
    any other user does (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER), before exec."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2, 3):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_status_and_export_read_a_study_they_cannot_write(finished_study, tmp_path):
    """A colleague's study, a read-only mount: the commands that only read open it read-only."""
    import os
    import sqlite3
    import subprocess
    import sys

    folder = tmp_path / "shared"
    folder.mkdir()
    with sqlite3.connect(folder / "tiny.db") as copy, sqlite3.connect(finished_study.folder / "tiny.db") as source:
        source.backup(copy)
    (folder / "tiny.db").chmod(0o444)
    folder.chmod(0o555)
    preexec = _without_root_overrides if os.geteuid() == 0 else None
    try:
        outputs = []
        for command in (["status"], ["export", "-o", str(tmp_path / "best.yaml")]):
            done = subprocess.run(
                [sys.executable, "-m", "hpo", *command, "--study", str(finished_study.path), "--storage",
                 f"sqlite:///{folder / 'tiny.db'}"], cwd=tmp_path, capture_output=True, text=True,
                timeout=300, preexec_fn=preexec)
            assert done.returncode == 0, done.stderr
            outputs.append(done.stdout)
        assert "study tiny: 3/3 trials done" in outputs[0]
        assert (tmp_path / "best.yaml").is_file()
        assert sorted(p.name for p in folder.iterdir()) == ["tiny.db"]  # nothing written beside it
    finally:
        folder.chmod(0o755)
