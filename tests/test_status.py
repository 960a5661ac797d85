"""`hpo status`: the states, the best trial, running trials with their progress, and workers
marked live, lost (not seen for a grace period) or finished."""

from __future__ import annotations

import io
import time

import optuna
from rich.console import Console

from hpo.config import parse_spec
from hpo.status import study_status
from hpo.workers.loop import WORKER_ATTR_PREFIX
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
        study.set_user_attr(WORKER_ATTR_PREFIX + name, {"last_seen": seen, "device": "cuda", "trial": trial,
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
