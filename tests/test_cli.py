"""The hpo command end to end, as a user runs it: real processes, real SQLite files."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from typer.testing import CliRunner

from hpo import storage
from hpo.cli import app
from tests.conftest import tiny_study, write_study


def hpo(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hpo", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def hpo_here(monkeypatch):
    """``hpo`` run in this process, for the many refusals (a process spends ~8 s on imports here);
    one of each kind still runs as a real process. Undoes what ``hpo run`` sets for its process."""
    threads, on_sigterm = torch.get_num_threads(), signal.getsignal(signal.SIGTERM)

    def invoke(*args: str, cwd: Path) -> subprocess.CompletedProcess:
        monkeypatch.chdir(cwd)
        result = CliRunner().invoke(app, list(args))
        return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)

    yield invoke
    torch.set_num_threads(threads)
    signal.signal(signal.SIGTERM, on_sigterm)


def test_run_end_to_end_stores_the_trials(image_root, tmp_path):
    study = tiny_study(
        image_root,
        tmp_path,
        budget__n_trials=3,
        budget__max_epochs=2,
        pruner={"type": "median", "n_startup_trials": 1},
    )
    path = write_study(tmp_path / "tiny.yaml", study)
    db = tmp_path / "cli.db"
    done = hpo(
        "run", "--study", str(path), "--storage", f"sqlite:///{db}", "--set", "cv.folds=3",
        "--tensorboard", str(tmp_path / "tb"), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    # Every trial logged its folds for TensorBoard (tests/test_tracking.py reads them back).
    runs = sorted(p.name for p in (tmp_path / "tb" / "tiny").iterdir())
    assert runs == ["trial-0000", "trial-0001", "trial-0002"]
    assert list((tmp_path / "tb" / "tiny" / "trial-0000" / "fold-0").glob("events.out.tfevents.*"))
    assert "study tiny" in done.stderr and "0/3 trials done" in done.stderr
    assert "3 finished trials" in done.stdout
    stored = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")
    assert len(stored.trials) == 3
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in stored.trials)
    complete = [t for t in stored.trials if t.state == TrialState.COMPLETE]
    assert complete and all(0.0 <= t.value <= 1.0 for t in complete)
    for t in complete:
        assert len(t.user_attrs["fold_f1"]) == 3  # the --set override took effect
        assert set(t.params) == {"lr", "loss"}
    assert stored.user_attrs["cv"]["folds"] == 3
    for t in stored.trials:  # each trial has a line in the output
        assert f"trial {t.number:>3} {t.state.name}" in done.stderr


def test_help_starts_without_the_training_libraries(tmp_path):
    """`hpo --help` answers in a fraction of a second: it imports neither torch, timm nor
    albumentations (seconds each); the API's names are still there on first use."""
    code = ("import sys, hpo, hpo.cli; from typer.testing import CliRunner;"
            " out = CliRunner().invoke(hpo.cli.app, ['--help']).stdout;"
            " print(sorted({'torch', 'timm', 'albumentations'} & set(sys.modules)));"
            " print('run' in out and 'export' in out and 'dashboard' in out);"
            " print(hpo.run_study.__module__, hpo.HpoError.__module__, 'run_study' in dir(hpo))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["[]", "True", "hpo.run hpo.errors True"]
    with pytest.raises(AttributeError, match="no attribute 'run_studies'"):
        import hpo

        hpo.run_studies  # noqa: B018


@pytest.mark.parametrize("change", ["serach={backbone: resnet18}", "search.lr={low: 1, high: 0.1}", "budget.n_trials=0",
                                    "data.image_size=three", "cv={folds: 3, shuffle: true}"])
def test_a_study_file_s_mistakes_are_reported_before_torch_and_timm_load(study_file, tmp_path, change):
    """Its shape (keys, types, ranges) is checked with nothing heavier than pydantic imported:
    seconds sooner, tens of seconds on a busy machine."""
    code = ("import sys; from typer.testing import CliRunner; from hpo.cli import app;"
            f" done = CliRunner().invoke(app, ['run', '--study', {str(study_file)!r}, '--set', {change!r}]);"
            " print(done.exit_code); print(sorted({'torch', 'timm', 'albumentations', 'cv2'} & set(sys.modules)));"
            " print(done.stderr.strip())")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    exit_code, heavy, message = done.stdout.split("\n", 2)
    assert (exit_code, heavy) == ("2", "[]"), done.stdout + done.stderr
    assert message.startswith("error: ") and message.strip().count("\n") == 0


def assert_refused(done: subprocess.CompletedProcess, message: str, folder: Path, before: list[Path]) -> None:
    """Exit code 2, one line naming the problem, and nothing written."""
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert sorted(folder.rglob("*")) == before, "something was written"


def test_bad_input_exits_2_with_one_line_and_writes_nothing_in_a_real_process(study_file, tmp_path):
    before = sorted(tmp_path.rglob("*"))
    done = hpo("run", "--study", str(study_file), "--storage", f"sqlite:///{tmp_path / 'never.db'}",
               "--set", "search.backbone=not_a_model", cwd=tmp_path)
    assert_refused(done, "search.backbone: unknown timm backbone 'not_a_model'", tmp_path, before)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("search.lr={low: 0.1, high: 0.001}", "search.lr: inverted range, low 0.1 > high 0.001; swap them"),
        ("data.root=/nonexistent/data", "data.root: folder /nonexistent/data does not exist"),
        ("cv.folds=999", "cv.folds: Input should be less than or equal to 50"),
        ("search.head=factorized", "search.head: factorized needs labels made of factors"),
        ("search.labels={age_boundary: 58}", "search.labels: ['age_boundary'] are not options of this data format"),
        ("search.sampling=stratified", "search.sampling: unknown sampling 'stratified'"),
        # Printed as written, not read as console markup.
        ("data.normalization=foo", "use imagenet, half or {mean: [r, g, b], std: [r, g, b]}"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(study_file, tmp_path, hpo_here, change, message):
    before = sorted(tmp_path.rglob("*"))
    done = hpo_here("run", "--study", str(study_file), "--storage", f"sqlite:///{tmp_path / 'never.db'}",
                    "--set", change, cwd=tmp_path)
    assert_refused(done, message, tmp_path, before)


def test_a_sqlite_url_with_two_slashes_exits_2_and_writes_nothing_in_a_real_process(study_file, tmp_path):
    before = sorted(tmp_path.rglob("*"))
    done = hpo("run", "--study", str(study_file), "--storage", "sqlite://runs/my.db", cwd=tmp_path)
    assert_refused(done, "write three slashes before a relative path (sqlite:///runs/my.db)", tmp_path, before)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n-trials", "-1"], "Invalid value for '--n-trials'"),  # (then typer's words, and) "; see hpo run --help"
        (["--storage", "sqlite://"], "storage URL 'sqlite://' is an in-memory SQLite database"),
        (["--set", "serach={backbone: resnet18}"],
         "serach: unknown key (did you mean 'search'?); use one of: name, direction"),
        # A made-up name is suggested nothing; a typo its model.
        (["--set", "search.backbone=no_such_backbone_xyz"],
         "search.backbone: unknown timm backbone 'no_such_backbone_xyz'; see timm.list_models()"),
        (["--set", "search.backbone=resnet181"],
         "search.backbone: unknown timm backbone 'resnet181' (did you mean: resnet18"),
    ],
)
def test_usage_errors_and_typos_are_one_line(study_file, tmp_path, hpo_here, args, message):
    before = sorted(tmp_path.rglob("*"))
    done = hpo_here("run", "--study", str(study_file), *args, cwd=tmp_path)
    assert_refused(done, message, tmp_path, before)
    assert "--n-trials" not in args or done.stderr.strip().endswith("; see hpo run --help")


def test_unreachable_storage_exits_2(study_file, tmp_path, hpo_here, monkeypatch):
    monkeypatch.setattr(storage, "CONNECT_RETRY_SECONDS", 0)  # refused at once, not after 10 s of tries
    before = sorted(tmp_path.rglob("*"))
    done = hpo_here("run", "--study", str(study_file), "--storage",
                    "postgresql+psycopg://bob:hunter2@127.0.0.1:1/hpo?connect_timeout=3", cwd=tmp_path)
    assert_refused(done, "cannot open storage postgresql+psycopg://bob:***@127.0.0.1:1/hpo", tmp_path, before)
    assert "hunter2" not in done.stderr + done.stdout


def test_data_prepare_builds_each_image_size_once(study_file, tmp_path, monkeypatch):
    import os

    from hpo.config import load_spec
    from hpo.data import cache
    from hpo.prepare import prepare_cache

    sizes = "search.image_size={choices: [12, 16]}"
    env = {**os.environ, "HPO_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "hpo", "data", "prepare", "--study", str(study_file), "--set", sizes]
    first = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert first.returncode == 0, first.stderr
    assert "12 px: 120 images" in first.stderr and "16 px: 120 images" in first.stderr
    assert first.stderr.count(" built in ") == 2
    assert len(list((tmp_path / "cache" / "decoded").glob("*.npy"))) == 2
    # Another process (here this one, through the same API) finds both already built.
    monkeypatch.setenv("HPO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "_opened", {})
    again = prepare_cache(load_spec(study_file, [sizes]))
    assert [(p.size, p.built) for p in again] == [(12, False), (16, False)]


def test_validate_reports_fold_sizes(study_file, tmp_path):
    done = hpo("validate", "--study", str(study_file), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "tiny: valid; 120 images, 3 classes, fold sizes [60, 60]" in done.stderr
    assert not (tmp_path / "runs").exists()
    held = hpo("validate", "--study", str(study_file), "--set", "cv.holdout=0.25", cwd=tmp_path)
    assert "tiny: valid; 120 images, 3 classes, fold sizes [46, 44]; 30 held out of every fold (cv.holdout)" in held.stderr
    too_much = hpo("validate", "--study", str(study_file), "--set", "cv.holdout=0.9", cwd=tmp_path)
    assert too_much.returncode == 2 and len(too_much.stderr.strip().splitlines()) == 1
    assert "cv.holdout" in too_much.stderr and "0.5" in too_much.stderr


def test_pretrained_weights_missing_offline_is_a_clear_error(study_file, tmp_path):
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "hpo", "run", "--study", str(study_file), "--set", "search.pretrained=true"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 2
    assert "pretrained weights for 'test_resnet' are not available offline" in done.stderr
    assert "pretrained: false" in done.stderr
    assert not (tmp_path / "runs").exists()


def test_review_flow_export_train_predict_report(finished_study, image_root, tmp_path):
    """What a user does after a study: export the best trials, train, predict, report."""
    study = ["--study", str(finished_study.path), "--storage", finished_study.url]
    best = tmp_path / "best.yaml"
    done = hpo("export", *study, "-o", str(best), "--top-k", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    stored = optuna.load_study(study_name="tiny", storage=finished_study.url)
    assert f"trial {stored.best_trial.number}: macro F1 {stored.best_value:.4f}" in done.stderr

    final = tmp_path / "final"
    done = hpo("train", "--config", str(best), "--out", str(final), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"trial {stored.best_trial.number}: cross-validated macro F1" in done.stderr
    assert "saved 4 model(s)" in done.stderr and len(list(final.glob("*.pt"))) == 4

    submission = tmp_path / "submission.csv"
    done = hpo("predict", "--model", str(final), "--data", str(image_root / "c1_green"), "-o", str(submission),
               "--tta", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "40 images, 4 model(s) x 2 (TTA: flip) on cpu" in done.stderr
    lines = submission.read_text().splitlines()
    assert lines[0] == "ImageID,ans" and len(lines) == 41
    assert all(line.split(",")[1] in {"0", "1", "2"} for line in lines[1:])

    report = tmp_path / "report.html"
    done = hpo("report", *study, "-o", str(report), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Optimization history" in report.read_text()


@pytest.mark.parametrize(
    ("args", "message", "real_process"),
    [
        (["train", "--config", "missing.yaml"], "missing.yaml: cannot read (No such file or directory); give a file written by hpo export", False),
        (["predict", "--model", ".", "--data", "."], "--model .: no final.yaml; give the folder hpo train wrote", False),
        (["export", "--study", "STUDY", "--storage", "sqlite:///empty.db"], "no study 'tiny' in sqlite:///empty.db", True),
        (["status", "--study", "nosuch", "--storage", "sqlite:///sub/new.db"], "no study 'nosuch' in sqlite:///sub/new.db", False),
        (["export", "--study", "STUDY", "--storage", "URL", "-o", "."], ". is a folder; give the path of a file", False),
    ],
)
def test_review_commands_bad_input_exit_2(finished_study, tmp_path, hpo_here, args, message, real_process):
    args = [{"STUDY": str(finished_study.path), "URL": finished_study.url}.get(a, a) for a in args]
    done = (hpo if real_process else hpo_here)(*args, cwd=tmp_path)
    assert_refused(done, message, tmp_path, [])  # nothing written, not even an empty database


def test_mask_study_end_to_end_run_export_train_predict(mask_archive, tmp_path):
    """The competition flow on a generated archive: every command, real processes."""
    from tests.conftest import tiny_mask_study

    path = write_study(tmp_path / "mask.yaml", tiny_mask_study(mask_archive.root, tmp_path))
    done = hpo("run", "--study", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "167 images, 18 classes, 3 folds" in done.stderr
    assert "skipped: hidden file (._* and the like) 26, corrupt 1" in done.stderr
    done = hpo("export", "--study", str(path), "-o", "best.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    done = hpo("train", "--config", "best.yaml", "--out", "final", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "saved 3 model(s)" in done.stderr
    done = hpo("predict", "--model", "final", "--data", str(mask_archive.root / "eval"), "-o", "submission.csv",
               "--tta", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "submission.csv").read_text().splitlines()
    assert lines[0] == "ImageID,ans"
    assert [line.split(",")[0] for line in lines[1:]] == mask_archive.eval_ids  # the listing's order
    assert all(0 <= int(line.split(",")[1]) < 18 for line in lines[1:])


def test_shipped_mask_study_validates_on_the_archive(mask_archive, tmp_path):
    done = hpo("validate", "--study", "mask", "--set", f"data.root={mask_archive.root}", "--set", "data.corrupt=skip",
               "--set", "search.pretrained=false", cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    assert "mask: valid; 167 images, 18 classes, fold sizes" in done.stderr
    assert "corrupt 1" in done.stderr
    done = hpo("validate", "--study", "mask", "--set", f"data.root={mask_archive.root}",
               "--set", "search.pretrained=false", cwd=Path(__file__).parents[1])
    assert done.returncode == 2 and "set data.corrupt=skip" in done.stderr


def test_worker_joins_from_a_machine_without_the_study_file(finished_study, tmp_path):
    url = f"sqlite:///{tmp_path / 'copy.db'}"
    with sqlite3.connect(finished_study.folder / "tiny.db") as source, sqlite3.connect(tmp_path / "copy.db") as copy:
        source.backup(copy)
    elsewhere = tmp_path / "elsewhere"  # no tiny.yaml here: the spec stored with the study is used
    elsewhere.mkdir()
    done = hpo("worker", "--study", "tiny", "--storage", url, "--n-trials", "4",
               "--set", f"output_dir={tmp_path / 'runs'}", cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert "joined study tiny" in done.stderr and "this worker ran 1 trials" in done.stderr
    study = optuna.load_study(study_name="tiny", storage=url)
    assert len(study.trials) == 4 and study.trials[3].state == TrialState.COMPLETE
    assert set(study.trials[3].params) == {"lr", "loss"}
    missing = hpo("worker", "--study", "nosuch", "--storage", url, cwd=elsewhere)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"error: no study 'nosuch' in {url}; start it with hpo run first, or give the study file"]
