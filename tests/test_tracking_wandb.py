"""Weights & Biases tracking, offline: a run per trial in the study's group, with the trial's
config, fold curves against epoch and the summary, read back from the run's .wandb file."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.config import parse_spec
from tests.conftest import tiny_study
from tests.test_tracking import PruneSecondTrial, run_trials

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402

BLOCK, HEADER = 32768, 7  # the .wandb file: a LevelDB-style log of Record protos after a 7-byte header
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    """The Records of a .wandb file (wandb 0.2x has no Python reader left: the framing is read
    here, each record by wandb's own protobuf)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0:
            break
        pending += data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def key(item) -> str:  # noqa: ANN001 - a ConfigItem, SummaryItem or HistoryItem
    return "/".join(item.nested_key) if item.nested_key else item.key


def read_run(path: Path) -> dict:
    """The run (name, group, job type), its config, its summary and history as the file holds them."""
    run: dict = {"config": {}, "summary": {}, "history": []}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.update(name=r.display_name, group=r.run_group, job_type=r.job_type, project=r.project)
            run["config"].update({key(i): json.loads(i.value_json) for i in r.config.update})
        elif kind == "config":
            run["config"].update({key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "summary":
            run["summary"].update({key(i): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "history":
            run["history"].append({key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "exit":
            run["exit_code"] = record.exit.exit_code
    return run


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Offline, silent, in tmp_path; any call to a server would go to a closed port."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-default"))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    yield
    wandb.teardown()  # the wandb-core service this process started


def test_every_trial_is_an_offline_run_in_the_study_s_group(image_root, tmp_path, offline):
    folder = tmp_path / "wb"
    spec = parse_spec(tiny_study(image_root, tmp_path, budget__max_epochs=3, budget__patience=None,
                                 tracking={"wandb": {"dir": str(folder)}}))
    study = run_trials(spec, PruneSecondTrial(), 2)
    complete, pruned = study.trials
    assert (complete.state, pruned.state) == (TrialState.COMPLETE, TrialState.PRUNED)
    files = sorted((folder / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2  # one run per trial
    runs = {run["name"]: run for run in map(read_run, files)}
    assert set(runs) == {"trial-0000", "trial-0001"}
    for trial in study.trials:
        run = runs[f"trial-{trial.number:04d}"]
        assert (run["project"], run["group"], run["job_type"]) == ("hpo", "tiny", "trial")
        assert run["config"]["lr"] == pytest.approx(trial.params["lr"]) and run["config"]["loss"] == trial.params["loss"]
        assert run["config"]["train"]["max_epochs"] == 3 and run["config"]["device"] == "cpu"
        assert run["summary"]["state"] == trial.state.name and run["exit_code"] == 0
    done = runs["trial-0000"]
    assert done["summary"]["value"] == pytest.approx(complete.value, abs=1e-6)
    fold_f1 = [done["summary"][f"fold{k}/best_macro_f1"] for k in range(2)]
    assert fold_f1 == pytest.approx(complete.user_attrs["fold_f1"], abs=1e-4)
    assert {f"f1_class_{i}" for i in range(3)} <= set(done["summary"])
    for k in range(2):  # each fold's curve against epoch: one point per epoch
        points = [(h["epoch"], h[f"fold{k}/val_macro_f1"]) for h in done["history"] if f"fold{k}/val_macro_f1" in h]
        assert [epoch for epoch, _ in points] == [0, 1, 2]
    stopped = runs["trial-0001"]
    assert [h["epoch"] for h in stopped["history"] if "fold0/val_macro_f1" in h] == [0]  # where it was pruned
    assert not any("fold1/val_macro_f1" in h for h in stopped["history"])
    assert "value" not in stopped["summary"] and "pruner at step 0" in stopped["summary"]["prune_reason"]


def test_offline_is_the_default_without_a_mode(image_root, tmp_path, offline, monkeypatch):
    """No mode in the study file and none in the environment: offline, never an online attempt."""
    monkeypatch.delenv("WANDB_MODE")
    spec = parse_spec(tiny_study(image_root, tmp_path, budget__max_epochs=1,
                                 tracking={"wandb": {"dir": str(tmp_path / "wb"), "project": "p"}}))
    study = run_trials(spec, optuna.pruners.NopPruner(), 1)
    assert study.trials[0].state == TrialState.COMPLETE
    [path] = (tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb")
    assert read_run(path)["project"] == "p"
