"""MLflow tracking against a real `mlflow server`: an experiment per study, a run per trial with
its parameters and value, a nested run per fold with its epoch curves; and a server that is down
costs one warning, never the trial."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from hpo.config import parse_spec
from tests.conftest import tiny_study
from tests.test_tracking import PruneSecondTrial, run_trials
from tests.workers.conftest import start, worker_study

mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID  # noqa: E402

CURVES = {"train_loss", "val_loss", "val_macro_f1", "val_accuracy", "lr", "images_per_second", "data_wait"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, server: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"mlflow server exited ({server.returncode}): {server.stderr.read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("mlflow server did not answer")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """`mlflow server` on SQLite with proxied artifacts, in a session of its own (it starts
    uvicorn and a job runner); stopped, or killed, with its whole process group."""
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", str(folder / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, server)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def runs_of(client: MlflowClient, study: str) -> tuple[dict[str, object], dict[str, list[object]]]:
    """The study's trial runs by name, and each one's fold runs (by run id of the trial)."""
    [experiment] = [e for e in client.search_experiments() if e.name == study]
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    trials = {r.info.run_name: r for r in runs if MLFLOW_PARENT_RUN_ID not in r.data.tags}
    folds: dict[str, list[object]] = {}
    for r in runs:
        if parent := r.data.tags.get(MLFLOW_PARENT_RUN_ID):
            folds.setdefault(parent, []).append(r)
    return trials, folds


def curve(client: MlflowClient, run, key: str) -> list[int]:
    return [m.step for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]


@pytest.mark.slow
def test_two_workers_log_every_trial_and_fold_to_the_server(image_root, tmp_path, mlflow_server):
    path = worker_study(image_root, tmp_path, n_trials=2, max_epochs=2)
    name = yaml.safe_load(path.read_text())["name"]
    url = f"sqlite:///{tmp_path / 'study.db'}"
    run = start("run", "--study", str(path), "--workers", "2", "--tracker", f"mlflow:tracking_uri={mlflow_server}",
                cwd=tmp_path, storage=url)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err[-3000:]
    assert "tracking.mlflow failed" not in err
    study = optuna.load_study(study_name=name, storage=url)
    client = MlflowClient(tracking_uri=mlflow_server)
    trials, folds = runs_of(client, name)
    assert sorted(trials) == [f"trial-{t.number:04d}" for t in study.trials]  # one run per trial
    for t in study.trials:
        parent = trials[f"trial-{t.number:04d}"]
        assert t.state == TrialState.COMPLETE and parent.info.status == "FINISHED"
        assert parent.data.params == {k: str(v) for k, v in t.params.items()}
        assert parent.data.metrics["value"] == pytest.approx(t.value, abs=1e-6)
        assert parent.data.tags["state"] == "COMPLETE" and parent.data.tags["device"] == "cpu"
        assert {f"f1_class_{i}" for i in range(3)} <= set(parent.data.metrics)
        assert parent.data.tags["worker"] == t.user_attrs["worker"]  # host:pid, as the study names it
        config = yaml.safe_load(Path(client.download_artifacts(parent.info.run_id, "config.yaml", str(tmp_path))).read_text())
        assert config["max_epochs"] == 2 and config["lr"] == pytest.approx(t.params["lr"])
        children = sorted(folds[parent.info.run_id], key=lambda r: r.info.run_name)
        assert [c.info.run_name for c in children] == ["fold-0", "fold-1"]
        for child in children:
            assert CURVES <= set(child.data.metrics) and child.info.status == "FINISHED"
            assert curve(client, child, "val_macro_f1") == [0, 1]  # one point per epoch


def test_a_pruned_trial_s_curves_end_where_it_was_pruned(image_root, tmp_path, monkeypatch):
    """In the default store (no URI given, none in the environment): runs/mlflow/mlflow.db."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = parse_spec(tiny_study(image_root, tmp_path, budget__max_epochs=3, budget__patience=None,
                                 tracking={"mlflow": True}))
    study = run_trials(spec, PruneSecondTrial(), 2)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs/mlflow/mlflow.db'}")
    trials, folds = runs_of(client, "tiny")
    complete, pruned = trials["trial-0000"], trials["trial-0001"]
    assert [curve(client, c, "val_macro_f1") for c in folds[complete.info.run_id]] == [[0, 1, 2]] * 2
    [fold] = folds[pruned.info.run_id]  # fold 1 never started
    assert fold.info.run_name == "fold-0" and curve(client, fold, "val_macro_f1") == [0]
    assert fold.info.status == pruned.info.status == "KILLED"
    assert pruned.data.tags["state"] == "PRUNED" and "value" not in pruned.data.metrics
    assert "pruner at step 0 (fold 0 epoch 0" in pruned.data.tags["prune_reason"]
    config = Path(client.download_artifacts(complete.info.run_id, "config.yaml", str(tmp_path)))
    assert yaml.safe_load(config.read_text())["max_epochs"] == 3
    assert list((tmp_path / "runs/mlflow/artifacts").rglob("config.yaml"))  # beside the database


def test_a_server_that_is_down_costs_one_warning_not_the_trials(image_root, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    spec = parse_spec(tiny_study(image_root, tmp_path, tracking={"mlflow": {"tracking_uri": down}}))
    with caplog.at_level(logging.WARNING):
        study = run_trials(spec, optuna.pruners.NopPruner(), 2)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert all(0.0 <= t.value <= 1.0 for t in study.trials)
    warnings = [r for r in caplog.records if "tracking.mlflow" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # once for the process, not per trial or epoch
    assert warnings[0].levelno == logging.WARNING and "trial_started" in warnings[0].getMessage()
