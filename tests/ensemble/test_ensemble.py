"""From the study to the submission: trials keep their out-of-fold predictions and the best
trials' fold models; hpo ensemble picks from them; hpo predict uses the kept models; hpo train
completes what is missing. Real tiny studies on CPU."""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState
from sklearn.metrics import f1_score

from hpo import keys
from hpo.config import parse_spec
from hpo.data.cache import decoded
from hpo.data.folds import iter_folds
from hpo.data.formats import load_table
from hpo.data.prefetch import to_input
from hpo.ensemble import build_ensemble, read_ensemble, write_ensemble
from hpo.errors import DataError
from hpo.predict import load_kept_model, load_source
from hpo.records.artifacts import artifact_location, open_artifact_store
from hpo.records.models import Checkpoint, KeptTrial, keep_if_best, kept
from hpo.records.oof import read_oof
from hpo.run import run_study
from hpo.study import connect
from tests.conftest import tiny_mask_study, tiny_study, write_study

CPU = torch.device("cpu")


@dataclass(frozen=True)
class KeptStudy:
    folder: Path
    url: str
    spec: object
    study: optuna.Study


def run_kept(image_root: Path, folder: Path, n_trials: int, keep: int) -> KeptStudy:
    # A learning rate range wide enough that trials differ, no pruning: every trial completes.
    raw = tiny_study(image_root, folder, budget__n_trials=n_trials, models={"keep": keep},
                     search__lr={"low": 3e-4, "high": 3e-2, "log": True})
    write_study(folder / "tiny.yaml", raw)
    url = f"sqlite:///{folder / 'tiny.db'}"
    spec = parse_spec(raw)
    study = run_study(spec, url, live=False).study
    return KeptStudy(folder, url, spec, study)


@pytest.fixture(scope="module")
def five(image_root, tmp_path_factory) -> KeptStudy:
    """Five complete trials; the fold models of the best two kept."""
    return run_kept(image_root, tmp_path_factory.mktemp("five"), n_trials=5, keep=2)


def test_the_best_keep_trials_fold_models_and_no_others_remain(five):
    complete = sorted((t for t in five.study.trials if t.state == TrialState.COMPLETE), key=lambda t: -t.value)
    assert len(complete) == 5
    entries = kept(five.study)
    assert [k.trial for k in entries] == [t.number for t in complete[:2]]
    files = {p.name for p in Path(artifact_location(five.spec)).iterdir() if p.name.endswith(".pt")}
    assert files == {c.artifact_id for k in entries for c in k.checkpoints} and len(files) == 2 * 2  # 2 folds each


def test_stored_out_of_fold_probabilities_are_what_the_fold_models_predict(five):
    """Recomputed from the kept checkpoints on each fold's validation images."""
    table = load_table(five.spec.data.format, five.spec.data.options)
    plan = np.asarray(five.study.user_attrs[keys.FOLD_PLAN])
    store = open_artifact_store(artifact_location(five.spec))
    for entry in kept(five.study):
        trial = next(t for t in five.study.trials if t.number == entry.trial)
        oof = read_oof(store, trial.user_attrs[keys.OOF], trial.number)
        assert oof.probabilities.shape == (len(table), 3) and np.array_equal(oof.labels, table.labels)
        assert np.allclose(oof.probabilities.sum(1), 1, atol=1e-2) and np.array_equal(oof.fold, plan)
        for checkpoint, (fold, _, val_idx) in zip(entry.checkpoints, iter_folds(plan), strict=True):
            assert checkpoint.fold == fold
            loaded = load_kept_model(store, checkpoint.artifact_id, CPU)
            cfg = loaded.config
            images = torch.from_numpy(np.asarray(decoded(table, cfg.image_size, cfg.crop))[val_idx])
            mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (cfg.mean, cfg.std))
            with torch.inference_mode():
                predicted = loaded.model(to_input(images, CPU, mean, std)).softmax(1).numpy()
            assert np.abs(predicted - oof.probabilities[val_idx]).max() < 2e-3  # float16 storage


def test_a_pruned_trial_stores_nothing_for_the_ensemble(image_root, tmp_path):
    # The 99th percentile after one trial: every later trial below the first is pruned.
    raw = tiny_study(image_root, tmp_path, budget__n_trials=3, budget__max_epochs=2,
                     pruner={"type": "percentile", "percentile": 99.0, "n_startup_trials": 1},
                     search__lr={"low": 1e-6, "high": 1e-2, "log": True},
                     seed_trials=[{"lr": 1e-2, "loss": "cross_entropy"}, {"lr": 1e-6, "loss": "cross_entropy"},
                                  {"lr": 2e-6, "loss": "cross_entropy"}])
    study = run_study(parse_spec(raw), f"sqlite:///{tmp_path / 's.db'}", live=False).study
    assert {t.state for t in study.trials} == {TrialState.COMPLETE, TrialState.PRUNED}
    for trial in study.trials:
        assert (keys.OOF in trial.user_attrs) == (trial.state == TrialState.COMPLETE)
    assert all(k.trial in {t.number for t in study.trials if t.state == TrialState.COMPLETE} for k in kept(study))


def test_workers_finishing_at_once_keep_exactly_the_best(image_root, tmp_path):
    """Eight processes' worth of completions racing on the study lock: the list ends as the top
    three, and exactly the others' checkpoints are removed, none of the top's."""
    spec = parse_spec(tiny_study(image_root, tmp_path))
    handle = connect(spec, f"sqlite:///{tmp_path / 'race.db'}")
    store = open_artifact_store(str(tmp_path / "store"))
    values = [0.31, 0.92, 0.55, 0.77, 0.18, 0.64, 0.89, 0.42]
    entries = []
    for number, value in enumerate(values):
        artifact = f"trial{number}-fold0.pt"
        (tmp_path / "payload").write_bytes(b"weights")
        with (tmp_path / "payload").open("rb") as handle_:
            store.write(artifact, handle_)
        entries.append(KeptTrial(number, value, [Checkpoint(0, artifact, "x", 7)]))
    start = threading.Barrier(len(entries))

    def finish(entry):
        start.wait()
        keep_if_best(handle.study, store, entry, 3, handle.lock)

    threads = [threading.Thread(target=finish, args=(e,)) for e in entries]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [k.trial for k in kept(handle.study)] == [1, 6, 3]
    left = sorted(p.name for p in (tmp_path / "store").iterdir())
    assert left == ["trial1-fold0.pt", "trial3-fold0.pt", "trial6-fold0.pt"]


def test_ensemble_scores_and_predicts_with_the_kept_models(five, tmp_path):
    everyone = build_ensemble(five.study, artifact_location(five.spec), max_members=6, init=2, pool=None)
    scores = everyone.scores
    assert scores["candidates"] == 5 and scores["oof_macro_f1"] >= scores["best_single"]["oof_macro_f1"]
    assert len(scores["nested"]["per_fold"]) == 2 and abs(sum(m.weight for m in everyone.members) - 1) < 1e-4
    # By default it chooses among the trials whose models the study kept: nothing to train.
    built = build_ensemble(five.study, artifact_location(five.spec), max_members=6, init=2)
    assert sorted(built.scores["pool"]) == sorted(k.trial for k in kept(five.study)) and not built.missing()
    path = write_ensemble(built, tmp_path / "ensemble.yaml")
    assert read_ensemble(path).members == built.members
    models, classes, _ = load_source(path, CPU)
    assert len(models) == 2 * len(built.members) and sum(m.weight for m in models) == pytest.approx(1.0, abs=1e-4)


def test_a_holdout_scores_the_ensemble_as_hpo_predict_submits_it(image_root, tmp_path):
    """cv.holdout: every fold model of a complete trial predicts the people held out of every
    fold (as they are and flipped); hpo ensemble scores its weighted average there, and that is
    exactly what hpo predict --tta gives on those images with the kept models."""
    from hpo.data.folds import HELD_OUT, held_out
    from hpo.predict import predict_probabilities

    raw = tiny_study(image_root, tmp_path, budget__n_trials=3, models={"keep": 3}, cv__holdout=0.25,
                     search__lr={"low": 3e-3, "high": 3e-2, "log": True})
    spec = parse_spec(raw)
    study = run_study(spec, f"sqlite:///{tmp_path / 'held.db'}", live=False).study
    table = load_table(spec.data.format, spec.data.options)
    plan = np.asarray(study.user_attrs[keys.FOLD_PLAN])
    held = held_out(plan)
    assert len(held) == 30 and not set(table.groups[held]) & set(table.groups[plan != HELD_OUT])  # 15 of 60 pairs
    store = open_artifact_store(artifact_location(spec))
    for entry in kept(study):
        trial = next(t for t in study.trials if t.number == entry.trial)
        oof = read_oof(store, trial.user_attrs[keys.OOF], trial.number)
        assert oof.held_out.shape == (2, 2, 30, 3) and not oof.probabilities[held].any()
        loaded = load_kept_model(store, entry.checkpoints[1].artifact_id, CPU)
        cfg = loaded.config
        images = torch.from_numpy(np.asarray(decoded(table, cfg.image_size, cfg.crop))[held])
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (cfg.mean, cfg.std))
        with torch.inference_mode():
            flipped = loaded.model(to_input(images.flip(2), CPU, mean, std)).softmax(1).numpy()
        assert np.abs(flipped - oof.held_out[1, 1]).max() < 2e-3  # fold 1's model, flipped view
    built = build_ensemble(study, artifact_location(spec), max_members=6, init=2, offsets=False)
    scores = built.scores["held_out"]
    assert scores["images"] == 30 and scores["people"] == 15 and 0 <= scores["macro_f1"] <= 1
    assert 0 <= scores["standard_error"] < 0.3  # 0 where every held-out image is right (test_select checks it moves)
    # The estimate: the nested one plus what averaging folds and views adds on the held-out people.
    assert built.scores["estimate"] == pytest.approx(built.scores["nested"]["macro_f1"] + scores["averaging_gain"],
                                                     abs=2e-5)
    assert not built.scores["offsets_used"] and built.offsets is None  # offsets only when asked
    models, _, _ = load_source(write_ensemble(built, tmp_path / "ensemble.yaml"), CPU)
    submitted = predict_probabilities(models, [table.files[i] for i in held], CPU, tta=True)
    f1 = float(f1_score(table.labels[held], submitted.argmax(1), average="macro", labels=range(3), zero_division=0))
    assert scores["macro_f1_tta"] == pytest.approx(f1, abs=1e-4)
    # The selection scores out-of-fold rows only: held-out rows (zeros in the file) are not in it.
    best = next(t for t in study.trials if t.number == built.scores["best_single"]["trial"])
    oof, rows = read_oof(store, best.user_attrs[keys.OOF], best.number), plan != HELD_OUT
    single = f1_score(oof.labels[rows], oof.probabilities[rows].argmax(1), average="macro", labels=range(3), zero_division=0)
    assert built.scores["best_single"]["oof_macro_f1"] == pytest.approx(single, abs=1e-5)
    from typer.testing import CliRunner

    from hpo.cli import app

    path = write_study(tmp_path / "held.yaml", raw)
    done = CliRunner().invoke(app, ["ensemble", "--study", str(path), "--storage", f"sqlite:///{tmp_path / 'held.db'}",
                                    "--max-members", "6", "--init", "2", "-o", str(tmp_path / "cli.yaml")])
    assert done.exit_code == 0, done.output
    assert "on the 15 people, 30 images held out of every fold (cv.holdout)" in done.stderr
    assert f"= {built.scores['estimate']:.4f}" in done.stderr


def test_a_member_without_kept_models_is_named_and_hpo_train_completes_it(five, tmp_path):
    """The best trial the study did not keep: predict refuses and names hpo train, which trains
    exactly it on the study's folds and seeds (its F1 again), and predict then uses it."""
    kept_trials = {k.trial for k in kept(five.study)}
    built = build_ensemble(five.study, artifact_location(five.spec), max_members=1, init=1, exclude=kept_trials)
    [member] = built.members
    assert member.trial.trial not in kept_trials and not member.checkpoints
    path = write_ensemble(built, tmp_path / "ensemble.yaml")
    with pytest.raises(DataError, match=rf"1 member\(s\) cannot predict \(trial {member.trial.trial}: no fold models"
                                        rf" kept\); train them with hpo train --config"):
        load_source(path, CPU)
    from hpo.ensemble.complete import complete_ensemble

    completed, result = complete_ensemble(path, tmp_path / "models", CPU)
    assert {m.trial for m in result.models} == {member.trial.trial}
    assert result.cv_f1(member.trial.trial) == pytest.approx(member.trial.fold_f1, abs=1e-4)
    assert read_ensemble(path).members == completed.members and all("file" in c for c in completed.members[0].checkpoints)
    models, classes, _ = load_source(path, CPU)
    assert len(models) == 2 and classes == list(five.study.user_attrs[keys.CLASSES])
    assert complete_ensemble(path, tmp_path / "models", CPU)[1] is None  # nothing left to train


def test_a_damaged_kept_checkpoint_is_found_and_named(five, tmp_path):
    built = build_ensemble(five.study, artifact_location(five.spec), max_members=1, init=1)
    [member] = built.members
    assert member.checkpoints, "the best trial's models are kept"
    copy = tmp_path / "store"
    shutil.copytree(artifact_location(five.spec), copy)
    (copy / member.checkpoints[0]["artifact_id"]).write_bytes(b"not a checkpoint")
    from dataclasses import replace

    path = write_ensemble(replace(built, artifacts=str(copy)), tmp_path / "ensemble.yaml")
    with pytest.raises(DataError, match=rf"trial {member.trial.trial}: fold 0: artifact .* is damaged .*hpo train --config"):
        load_source(path, CPU)


def test_bad_input_to_hpo_ensemble_is_one_line_and_writes_nothing(five, image_root, tmp_path):
    from typer.testing import CliRunner

    from hpo.cli import app

    def ensemble(*args: str) -> tuple[int, str]:
        done = CliRunner().invoke(app, ["ensemble", "--study", str(five.folder / "tiny.yaml"), *args])
        return done.exit_code, done.stderr.strip()

    # No complete trial: a study of one pruned trial.
    empty = tmp_path / "empty"
    empty.mkdir()
    raw = tiny_study(image_root, empty)
    write_study(empty / "tiny.yaml", raw)
    handle = connect(parse_spec(raw), f"sqlite:///{empty / 'tiny.db'}")
    handle.study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED))
    done = CliRunner().invoke(app, ["ensemble", "--study", str(empty / "tiny.yaml"), "--storage",
                                    f"sqlite:///{empty / 'tiny.db'}", "-o", str(tmp_path / "e.yaml")])
    assert done.exit_code == 2 and done.stderr.strip() == \
        "error: study 'tiny' has no complete trial yet; run it first (hpo run)"
    # An out-of-fold artifact gone: named, with the fix.
    copy = tmp_path / "copy"
    shutil.copytree(five.folder, copy)
    first = next(t for t in five.study.trials if t.state == TrialState.COMPLETE)
    (copy / "runs" / "artifacts" / first.user_attrs[keys.OOF]).unlink()
    code, message = ensemble("--storage", f"sqlite:///{copy / 'tiny.db'}", "--set",
                             f"artifacts={copy / 'runs' / 'artifacts'}", "-o", str(tmp_path / "e.yaml"))
    assert code == 2 and message.count("\n") == 0
    assert f"trial {first.number}: its out-of-fold predictions" in message and "leave the trial out" in message
    assert not (tmp_path / "e.yaml").exists()
    code, message = ensemble("--storage", f"sqlite:///{copy / 'tiny.db'}", "--set",
                             f"artifacts={copy / 'runs' / 'artifacts'}", "--exclude", str(first.number),
                             "-o", str(tmp_path / "e.yaml"))
    assert code == 0 and (tmp_path / "e.yaml").is_file()


def test_an_ensemble_pointed_at_other_data_is_refused(five, image_root, tmp_path):
    from hpo.ensemble.complete import complete_ensemble

    built = build_ensemble(five.study, artifact_location(five.spec), max_members=6, init=2)
    from dataclasses import replace

    lacking = replace(built, members=[replace(m, checkpoints=[]) for m in built.members])
    path = write_ensemble(lacking, tmp_path / "ensemble.yaml")
    other = tmp_path / "other"
    shutil.copytree(image_root, other)
    listing = (other / "labels.csv").read_text().splitlines()
    listing[1] = listing[1].replace("c0_red,", "c1_green,")  # one image relabelled: other data
    (other / "labels.csv").write_text("\n".join(listing) + "\n")
    with pytest.raises(DataError, match="is not the data study 'tiny' was run on"):
        complete_ensemble(path, tmp_path / "models", CPU, [f"data.root={other}"])
    assert not (tmp_path / "models").exists() and read_ensemble(path).members == lacking.members


@pytest.mark.slow
def test_the_competition_flow_run_ensemble_predict(mask_archive, tmp_path):
    """hpo run -> hpo ensemble -> hpo predict on the generated mask archive: the submission's
    rows in the eval listing's order."""
    from typer.testing import CliRunner

    from hpo.cli import app

    raw = tiny_mask_study(mask_archive.root, tmp_path, budget__n_trials=3)
    path = write_study(tmp_path / "mask.yaml", raw)
    run_study(parse_spec(raw), f"sqlite:///{tmp_path / 'mask.db'}", live=False)
    storage = ["--storage", f"sqlite:///{tmp_path / 'mask.db'}"]
    done = CliRunner().invoke(app, ["ensemble", "--study", str(path), *storage, "-o", str(tmp_path / "ens.yaml")])
    assert done.exit_code == 0, done.output
    assert "best single trial" in done.stderr and "estimate on new data" in done.stderr
    done = CliRunner().invoke(app, ["predict", "--model", str(tmp_path / "ens.yaml"), "--data",
                                    str(mask_archive.root / "eval"), "-o", str(tmp_path / "submission.csv"), "--tta"])
    assert done.exit_code == 0, done.output
    lines = (tmp_path / "submission.csv").read_text().splitlines()
    assert lines[0] == "ImageID,ans" and [line.split(",")[0] for line in lines[1:]] == mask_archive.eval_ids
    assert all(0 <= int(line.split(",")[1]) < 18 for line in lines[1:])
