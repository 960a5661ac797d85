"""Running and resuming studies through the Python API."""

from __future__ import annotations

import shutil

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from hpo import keys
from hpo.config import parse_spec
from hpo.errors import ConfigError, DataError
from hpo.run import run_study
from tests.conftest import tiny_study


def run(spec, url, n_trials=None):
    return run_study(spec, url, n_trials=n_trials, live=False)


def test_resume_continues_to_the_total_budget(image_root, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    spec = parse_spec(tiny_study(image_root, tmp_path))
    first = run(spec, url)
    assert first.ran == 2
    again = run(spec, url)  # budget reached: nothing more
    assert again.ran == 0
    more = run(spec, url, n_trials=3)  # the budget is a total, not "3 more"
    assert more.ran == 1
    study = optuna.load_study(study_name="tiny", storage=url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert all(0.0 <= t.value <= 1.0 for t in study.trials)


def test_timeout_stops_starting_trials_and_a_rerun_resumes(image_root, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    spec = parse_spec(tiny_study(image_root, tmp_path, budget__n_trials=50, budget__timeout="0.5s"))
    # A trial takes longer than 0.5 s: the first one runs to its end, no second one starts.
    assert run(spec, url).ran == 1
    assert run_study(spec, url, timeout=0.5, live=False).ran == 1
    study = optuna.load_study(study_name="tiny", storage=url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2


def test_fold_plan_is_stored_and_reused(image_root, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    spec = parse_spec(tiny_study(image_root, tmp_path, budget__n_trials=1))
    result = run(spec, url)
    attrs = result.study.user_attrs
    plan = np.array(attrs[keys.FOLD_PLAN])
    assert len(plan) == 120 and set(plan.tolist()) == {0, 1}
    assert attrs["spec"]["name"] == "tiny" and attrs["cv"] == {"folds": 2, "seed": 0}
    assert len(attrs[keys.DATA_FINGERPRINT]) == 16


def test_changed_data_under_a_study_is_refused(image_root, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    run(parse_spec(tiny_study(image_root, tmp_path, budget__n_trials=1)), url)
    other = parse_spec(tiny_study(image_root, tmp_path, budget__n_trials=2, data__group_column=None))
    with pytest.raises(DataError, match="the data differs from the data study 'tiny' was created with"):
        run(other, url)
    refolded = parse_spec(tiny_study(image_root, tmp_path, budget__n_trials=2, cv__folds=3))
    with pytest.raises(DataError, match=r"created with cv \{'folds': 2, 'seed': 0\}"):
        run(refolded, url)
    study = optuna.load_study(study_name="tiny", storage=url)
    assert len(study.trials) == 1  # nothing ran on the wrong data


def test_default_storage_is_sqlite_in_the_output_folder(image_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = parse_spec(tiny_study(image_root, tmp_path, budget__n_trials=1))
    result = run(spec, None)
    assert result.storage_url == f"sqlite:///{tmp_path / 'runs' / 'tiny.db'}"
    assert (tmp_path / "runs" / "tiny.db").is_file()


@pytest.mark.slow
def test_digits_demo_learns_real_data(tmp_path):
    """The embedded demo's data and pipeline reach the F1 the README promises (one good config)."""
    from hpo.config import load_spec

    spec = load_spec("digits", [
        "name=digits-check", f"output_dir={tmp_path}", "budget.n_trials=1", "budget.max_epochs=4",
        "search.backbone=resnet10t", "search.optimizer=adamw", "search.lr=0.001",
        "search.scheduler=cosine", "search.loss=cross_entropy", "search.batch_size=32",
        "search.image_size=32", "search.mixup=0.0",
    ])
    result = run_study(spec, f"sqlite:///{tmp_path / 'd.db'}", live=False)
    trial = result.study.trials[0]
    assert trial.state == TrialState.COMPLETE and trial.value >= 0.95
    assert trial.user_attrs["config"]["backbone"] == "resnet10t"
    assert len(trial.user_attrs["fold_f1"]) == 3


def test_a_corrupt_image_or_unwritable_artifacts_fail_before_the_study_exists(image_root, tmp_path, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(image_root, data)
    (data / "c1_green" / "07.png").write_bytes(b"\x89PNG truncated")
    db = tmp_path / "study.db"
    spec = parse_spec(tiny_study(data, tmp_path))
    with pytest.raises(DataError, match="cannot read .*c1_green/07.png .*replace or remove the file"):
        run(spec, f"sqlite:///{db}")
    assert not db.exists()  # a rerun after the fix starts clean, not "the data differs"
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("HPO_ARTIFACTS", str(tmp_path / "a-file" / "x"))  # a file's child: never a folder
    with pytest.raises(ConfigError, match="artifacts: cannot make the folder .*a-file/x"):
        run(parse_spec(tiny_study(image_root, tmp_path)), f"sqlite:///{tmp_path / 'other.db'}")
    assert not (tmp_path / "other.db").exists()
