"""Many worker processes on one study: exact budget, no lost trial, crashes survived."""

from __future__ import annotations

import time

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tests.workers.conftest import kill, load, running_trial, start, wait_for, worker_study

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)


def name_of(path) -> str:
    return yaml.safe_load(path.read_text())["name"]


def assert_budget_exact(study: optuna.Study, budget: int) -> None:
    trials = study.get_trials(deepcopy=False)
    assert sum(t.state in COUNTED for t in trials) == budget
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len({t.number for t in trials}) == len(trials)


@pytest.mark.slow
def test_five_workers_finish_exactly_the_budget(image_root, tmp_path, storage_url):
    """More workers than cores racing for the last trials (8 to 32 workers on both storages:
    bench/storage_overhead.py, BENCHMARKS.md; 5 keeps the suite's time down)."""
    path = worker_study(image_root, tmp_path, n_trials=11)
    run = start("run", "--study", str(path), "--workers", "5", cwd=tmp_path, storage=storage_url)
    out, err = run.communicate(timeout=400)
    assert run.returncode == 0, err[-3000:]
    study = load(name_of(path), storage_url)
    assert_budget_exact(study, 11)
    assert not [t for t in study.trials if t.state == TrialState.FAIL], "a trial was failed by the storage"
    assert len({t.user_attrs["worker"] for t in study.trials}) > 1  # the work was shared
    assert "started 5 workers" in err


@pytest.mark.slow
def test_killed_worker_trial_fails_and_is_retried(image_root, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    path = worker_study(image_root, tmp_path, n_trials=4, max_epochs=40)  # trials of ~10 s
    run = start("run", "--study", str(path), "--workers", "2", cwd=tmp_path, storage=url)
    name = name_of(path)
    study, victim = running_trial(name, url)
    kill(int(victim.user_attrs["worker"].rsplit(":", 1)[1]))
    killed_at = time.monotonic()
    failed = wait_for(lambda: study.get_trials(states=(TrialState.FAIL,)), 60, "the stale trial to fail")
    assert time.monotonic() - killed_at < 6 + 10  # grace period + sweep interval + slack
    assert [t.number for t in failed] == [victim.number]
    out, err = run.communicate(timeout=400)
    assert run.returncode == 0, err[-3000:]
    assert "exited (-9): restarting" in err
    study = load(name, url)
    assert_budget_exact(study, 4)
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].params == victim.params
    assert retries[0].state in COUNTED


@pytest.mark.slow
def test_zombies_of_killed_workers_are_retried_on_restart(image_root, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    path = worker_study(image_root, tmp_path, n_trials=3, max_epochs=40)
    workers = [start("worker", "--study", str(path), cwd=tmp_path, storage=url) for _ in range(2)]
    name = name_of(path)
    study = wait_for(lambda: _try_load(name, url), 120, "the study")
    wait_for(lambda: len(study.get_trials(states=(TrialState.RUNNING,))) == 2, 120, "two running trials")
    for w in workers:
        kill(w.pid)
        w.wait()
    zombies = study.get_trials(states=(TrialState.RUNNING,))
    assert len(zombies) == 2
    again = start("run", "--study", str(path), cwd=tmp_path, storage=url)
    out, err = again.communicate(timeout=400)
    assert again.returncode == 0, err[-3000:]
    study = load(name, url)
    assert_budget_exact(study, 3)
    assert {t.number for t in study.trials if t.state == TrialState.FAIL} == {z.number for z in zombies}
    retried = {t.system_attrs.get("failed_trial") for t in study.trials}
    assert {z.number for z in zombies} <= retried


@pytest.mark.slow
def test_two_workers_starting_together_create_one_study(image_root, tmp_path, storage_url):
    path = worker_study(image_root, tmp_path, n_trials=4)
    workers = [start("worker", "--study", str(path), cwd=tmp_path, storage=storage_url) for _ in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err[-3000:]
    name = name_of(path)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage_url)]
    assert names.count(name) == 1
    study = load(name, storage_url)
    assert len(study.user_attrs["fold_plan"]) == 120
    assert_budget_exact(study, 4)


def test_sqlite_refuses_more_workers_than_it_holds(study_file, tmp_path):
    run = start("run", "--study", str(study_file), "--workers", "17", cwd=tmp_path,
                storage=f"sqlite:///{tmp_path / 'never.db'}")
    _, err = run.communicate(timeout=120)
    assert run.returncode == 2
    assert "SQLite holds up to 16; use PostgreSQL" in err
    assert not (tmp_path / "never.db").exists()


def _try_load(name: str, url: str):
    try:
        return optuna.load_study(study_name=name, storage=url)
    except Exception:  # not created yet (or tables being created right now)
        return None


@pytest.mark.slow
@pytest.mark.postgres
def test_postgres_restart_fails_no_healthy_trial(image_root, tmp_path, postgres_url):
    import os
    import shutil
    import subprocess

    if not shutil.which("pg_ctlcluster") or os.geteuid() != 0 or not os.path.isdir("/etc/postgresql"):
        pytest.skip("cannot restart the local PostgreSQL here (needs pg_ctlcluster as root)")
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    path = worker_study(image_root, tmp_path, n_trials=8, max_epochs=15)
    run = start("run", "--study", str(path), "--workers", "2", cwd=tmp_path, storage=postgres_url)
    name = name_of(path)
    running_trial(name, postgres_url)
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
                   check=True, timeout=120)
    _, err = run.communicate(timeout=500)
    assert run.returncode == 0, err[-3000:]
    study = load(name, postgres_url)
    assert_budget_exact(study, 8)
    assert not [t for t in study.trials if t.state == TrialState.FAIL]


@pytest.mark.slow
def test_sigterm_stops_workers_and_requeues_running_trials(image_root, tmp_path):
    import signal

    url = f"sqlite:///{tmp_path / 'study.db'}"
    path = worker_study(image_root, tmp_path, n_trials=6, max_epochs=40)
    run = start("run", "--study", str(path), "--workers", "2", cwd=tmp_path, storage=url)
    name = name_of(path)
    running_trial(name, url)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err[-3000:]
    study = load(name, url)
    assert not study.get_trials(states=(TrialState.RUNNING,))  # never left RUNNING
    stopped = study.get_trials(states=(TrialState.FAIL,))
    assert stopped and all(t.user_attrs["fail_reason"] == "worker stopped" for t in stopped)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(t.user_attrs["requeued_from"] for t in waiting) == sorted(t.number for t in stopped)
    by_number = {t.number: t.params for t in stopped}
    # A waiting trial holds its parameters as fixed_params until a worker runs it.
    assert all(t.system_attrs["fixed_params"] == by_number[t.user_attrs["requeued_from"]] for t in waiting)


def test_status_shows_states_best_and_workers(image_root, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    path = worker_study(image_root, tmp_path, n_trials=2)
    done = start("run", "--study", str(path), cwd=tmp_path, storage=url)
    assert done.wait(timeout=300) == 0
    status = start("status", "--study", str(path), cwd=tmp_path, storage=url)
    out, err = status.communicate(timeout=120)
    assert status.returncode == 0, err
    study = load(name_of(path), url)
    assert f"study {study.study_name}: 2/2 trials done" in out
    assert f"best macro F1 {study.best_value:.4f} (trial {study.best_trial.number})" in out
    assert "finished" in out  # the in-process worker registered and signed off


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie no longer does)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_killing_hpo_run_stops_its_workers_and_requeues_their_trials(image_root, tmp_path):
    """kill -9 of the lead process gives it no chance to stop its workers: they notice that
    their supervisor is gone and stop as on SIGTERM, instead of running the budget unseen."""
    import os
    import signal

    url = f"sqlite:///{tmp_path / 'study.db'}"
    path = worker_study(image_root, tmp_path, n_trials=6, max_epochs=40)
    run = start("run", "--study", str(path), "--workers", "2", cwd=tmp_path, storage=url)
    name = name_of(path)
    study, _ = running_trial(name, url)
    workers = [int(key.rsplit(":", 1)[1]) for key in study.user_attrs if key.startswith("worker:")]
    assert len(workers) >= 1 and all(_alive(pid) for pid in workers)
    os.kill(run.pid, signal.SIGKILL)
    run.communicate(timeout=60)
    wait_for(lambda: not any(_alive(pid) for pid in workers), 60, "the workers to stop")
    study = load(name, url)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    stopped = study.get_trials(states=(TrialState.FAIL,))
    assert stopped and all(t.user_attrs["fail_reason"] == "worker stopped" for t in stopped)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(t.user_attrs["requeued_from"] for t in waiting) == sorted(t.number for t in stopped)


@pytest.mark.slow
def test_two_worker_processes_keep_the_best_trials_fold_models(image_root, tmp_path):
    """Trials finishing in two processes at once: the kept list is the best two complete trials,
    and the store holds exactly their checkpoints."""
    from pathlib import Path

    from hpo.records.models import kept

    url = f"sqlite:///{tmp_path / 'study.db'}"
    path = worker_study(image_root, tmp_path, n_trials=6, models={"keep": 2}, pruner={"type": "none"},
                        search__lr={"low": 3e-4, "high": 3e-2, "log": True})
    run = start("run", "--study", str(path), "--workers", "2", cwd=tmp_path, storage=url)
    _, err = run.communicate(timeout=400)
    assert run.returncode == 0, err[-3000:]
    study = load(name_of(path), url)
    complete = sorted((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: (-t.value, t.number))
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2
    entries = kept(study)
    assert {k.trial for k in entries} == {t.number for t in complete[:2]}
    files = {p.name for p in Path(tmp_path / "runs" / "artifacts").iterdir() if p.suffix == ".pt"}
    assert files == {c.artifact_id for k in entries for c in k.checkpoints} and len(files) == 4
