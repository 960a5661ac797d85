"""Every finished trial carries its review artifacts in the study's artifact store."""

from __future__ import annotations

import csv
import io

import numpy as np
import optuna
import pytest
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta
from optuna.trial import TrialState
from optuna_dashboard import get_note

from hpo.config import parse_spec
from hpo.errors import ConfigError
from hpo.records.artifacts import artifact_location, open_artifact_store
from tests.conftest import CLASSES, PER_CLASS, tiny_study

EXPECTED = {"confusion_matrix.png": "image/png", "per_class.csv": "text/csv", "learning_curves.png": "image/png"}


def read_artifact(store: FileSystemArtifactStore, artifact_id: str) -> bytes:
    with store.open_reader(artifact_id) as handle:
        return handle.read()


def test_each_complete_trial_has_confusion_matrix_table_and_curves(finished_study):
    study = optuna.load_study(study_name="tiny", storage=finished_study.url)
    store = open_artifact_store(artifact_location(finished_study.spec))
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3
    for trial in complete:
        metas = get_all_artifact_meta(trial, storage=study._storage)
        # Besides the review's three: the out-of-fold probabilities (kept fold models are listed apart).
        review = [m for m in metas if m.filename in EXPECTED]
        assert {m.filename: m.mimetype for m in review} == EXPECTED
        assert sorted(m.filename for m in metas if m not in review) == ["oof_probabilities.npz"]
        for meta in review:
            data = read_artifact(store, meta.artifact_id)
            if meta.mimetype == "image/png":
                assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5_000
            else:
                rows = list(csv.DictReader(io.StringIO(data.decode())))
                assert [r["class"] for r in rows] == list(CLASSES)
                # Out-of-fold: every image is validated exactly once over the folds.
                assert [int(r["support"]) for r in rows] == [PER_CLASS] * 3
                assert all(0.0 <= float(r["f1"]) <= 1.0 for r in rows)
        matrix = np.array(trial.user_attrs["confusion_matrix"])
        assert matrix.shape == (3, 3) and matrix.sum(axis=1).tolist() == [PER_CLASS] * 3
        assert trial.user_attrs["artifacts"] == list(EXPECTED)


def test_study_note_describes_data_and_search_space(finished_study):
    study = optuna.load_study(study_name="tiny", storage=finished_study.url)
    note = get_note(study)
    assert "120 images of 60 groups" in note and "2 folds" in note
    for name in CLASSES:
        assert f"| {name} | {PER_CLASS} |" in note
    assert "loss:" in note and "cross_entropy" in note and "focal" in note
    assert study.user_attrs["classes"] == list(CLASSES)


def test_artifact_location_from_study_file_or_environment(image_root, tmp_path, monkeypatch):
    spec = parse_spec(tiny_study(image_root, tmp_path))
    assert artifact_location(spec) == str(tmp_path / "runs" / "artifacts")
    spec = parse_spec(tiny_study(image_root, tmp_path, artifacts=str(tmp_path / "shared")))
    assert artifact_location(spec) == str(tmp_path / "shared")
    monkeypatch.setenv("HPO_ARTIFACTS", str(tmp_path / "env"))
    assert artifact_location(spec) == str(tmp_path / "env")
    open_artifact_store(artifact_location(spec))
    assert (tmp_path / "env").is_dir()


def test_s3_store_needs_a_plain_bucket():
    with pytest.raises(ConfigError, match=r"s3://<bucket>"):
        open_artifact_store("s3://bucket/with/prefix")
