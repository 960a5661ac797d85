"""`hpo predict`: soft-voted predictions of saved models, written as the submission CSV."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import optuna
import pytest
import torch
import yaml
from PIL import Image
from sklearn.metrics import f1_score

from hpo.data.folds import fold_indices
from hpo.errors import DataError
from hpo.export import export_study
from hpo.final import MANIFEST, train_final
from hpo.predict import find_inputs, load_models, predict_probabilities, write_submission
from hpo.study import prepare
from tests.conftest import CLASSES

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model_dir(finished_study, tmp_path_factory):
    exported = export_study(optuna.load_study(study_name="tiny", storage=finished_study.url))
    return train_final(exported, tmp_path_factory.mktemp("final") / "model", "folds", CPU).out


def read_rows(path):
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_folder_prediction_one_row_per_image_with_valid_labels(model_dir, image_root, tmp_path):
    models, classes = load_models(model_dir, CPU)
    assert len(models) == 2 and classes == list(CLASSES)
    inputs = find_inputs(image_root)  # every image below, hidden files and the CSV skipped
    assert len(inputs.ids) == 120 and inputs.ids[0] == "c0_red/00.png"
    probs = predict_probabilities(models, inputs.paths, CPU, batch_size=32)
    assert probs.shape == (120, 3) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    path = write_submission(inputs, probs.argmax(1), tmp_path / "sub.csv")
    rows = read_rows(path)
    assert [r["ImageID"] for r in rows] == inputs.ids
    assert {r["ans"] for r in rows} <= {"0", "1", "2"}


def test_each_fold_model_scores_its_validation_fold_as_in_training(model_dir, finished_study):
    # Predict reads and preprocesses the files itself: it must feed the models what training fed them.
    table, plan = prepare(finished_study.spec)
    manifest = yaml.safe_load((model_dir / MANIFEST).read_text())
    models, _ = load_models(model_dir, CPU)
    for entry, model in zip(manifest["models"], models, strict=True):
        _, val_idx = fold_indices(plan, entry["fold"])
        probs = predict_probabilities([model], [table.files[i] for i in val_idx], CPU)
        f1 = f1_score(table.labels[val_idx], probs.argmax(1), average="macro", labels=range(3), zero_division=0)
        assert f1 == pytest.approx(entry["f1"], abs=0.02), entry["file"]


def test_soft_vote_is_the_mean_of_the_models_and_tta_adds_the_mirror_image(model_dir, image_root, tmp_path):
    models, _ = load_models(model_dir, CPU)
    paths = find_inputs(image_root / "c2_blue").paths[:8]
    each = [predict_probabilities([m], paths, CPU) for m in models]
    assert np.allclose(predict_probabilities(models, paths, CPU), np.mean(each, axis=0), atol=1e-5)
    mirrored = []
    for path in paths:
        mirrored.append(tmp_path / path.name)
        Image.fromarray(np.asarray(Image.open(path))[:, ::-1]).save(mirrored[-1])
    both = (predict_probabilities(models, paths, CPU) + predict_probabilities(models, mirrored, CPU)) / 2
    with_flip = predict_probabilities(models, paths, CPU, tta=True)
    assert np.allclose(with_flip, both, atol=1e-5)
    assert not np.allclose(with_flip, predict_probabilities(models, paths, CPU), atol=1e-4)


def test_eval_listing_keeps_its_row_order_and_fills_ans(model_dir, image_root, tmp_path):
    eval_dir = tmp_path / "eval"
    (eval_dir / "images").mkdir(parents=True)
    ids = []
    for i, source in enumerate(sorted(image_root.glob("c*/*.png"))[::7]):
        ids.append(f"{i:03d}_{source.parent.name}.png")
        shutil.copy(source, eval_dir / "images" / ids[-1])
    ids = ids[::-1]  # not alphabetical: the listing's order must be kept
    with (eval_dir / "info.csv").open("w", newline="") as handle:
        handle.write("ImageID,ans\n" + "".join(f"{i},0\n" for i in ids))
    inputs = find_inputs(eval_dir)
    models, classes = load_models(model_dir, CPU)
    probs = predict_probabilities(models, inputs.paths, CPU, tta=True)
    rows = read_rows(write_submission(inputs, probs.argmax(1), tmp_path / "submission.csv"))
    assert [r["ImageID"] for r in rows] == ids
    assert [int(r["ans"]) for r in rows] == probs.argmax(1).tolist()
    named = read_rows(write_submission(inputs, probs.argmax(1), tmp_path / "named.csv", classes))
    assert {r["ans"] for r in named} <= set(CLASSES)


def test_missing_or_corrupt_inputs_name_the_file(model_dir, image_root, tmp_path):
    eval_dir = tmp_path / "eval"
    (eval_dir / "images").mkdir(parents=True)
    (eval_dir / "info.csv").write_text("ImageID,ans\ngone.png,\n")
    with pytest.raises(DataError, match=r"1 image\(s\) of .*info.csv missing, e.g. .*gone.png"):
        find_inputs(eval_dir)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    models, _ = load_models(model_dir, CPU)
    with pytest.raises(DataError, match=r"cannot read .*broken.jpg"):
        predict_probabilities(models, find_inputs(folder).paths, CPU)
    with pytest.raises(DataError, match="no final.yaml"):
        load_models(tmp_path, CPU)


def test_a_damaged_model_folder_is_one_clear_error(model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    manifest = (broken / MANIFEST).read_text()
    (broken / MANIFEST).write_text("models: [unclosed\n")
    with pytest.raises(DataError, match="final.yaml: line 2 is not valid YAML"):
        load_models(broken, CPU)
    (broken / MANIFEST).write_text(manifest)
    first = yaml.safe_load(manifest)["models"][0]["file"]
    checkpoint = torch.load(broken / first, weights_only=True)
    torch.save({**checkpoint, "classes": ["a", "b"]}, broken / first)  # weights of 3 classes
    with pytest.raises(DataError, match=f"{first} does not fit its own config .*train again with hpo train"):
        load_models(broken, CPU)
    (broken / first).write_bytes(b"junk" * 100)
    with pytest.raises(DataError, match=f"cannot load .*{first}"):
        load_models(broken, CPU)


def test_a_vit_trained_at_the_studys_size_predicts(image_root, tmp_path):
    """test_vit is built for 160 px; trained at the study's 16 px, predict must build it at 16 px
    again for its weights (position embedding) to load."""
    from hpo.config import parse_spec
    from hpo.run import run_study
    from tests.conftest import tiny_study

    spec = parse_spec(tiny_study(image_root, tmp_path, search__backbone="test_vit", budget__n_trials=1,
                                 budget__max_epochs=1))
    url = f"sqlite:///{tmp_path / 'vit.db'}"
    run_study(spec, url, live=False)
    exported = export_study(optuna.load_study(study_name="tiny", storage=url))
    out = train_final(exported, tmp_path / "model", "full", CPU).out
    models, classes = load_models(out, CPU)
    assert len(models) == 1 and models[0].model.pos_embed.shape[1] == 1 + 1  # class token + one 16 px patch
    inputs = find_inputs(image_root)
    probs = predict_probabilities(models, inputs.paths, CPU, batch_size=64)
    assert probs.shape == (120, 3) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
