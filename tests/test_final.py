"""`hpo train --config`: final models reproduce the exported trial and are saved for predict."""

from __future__ import annotations

import dataclasses

import numpy as np
import optuna
import pytest
import torch
import yaml

from hpo.errors import ConfigError, DataError
from hpo.export import export_study, read_export, write_export
from hpo.final import MANIFEST, full_data_config, train_final


@pytest.fixture(scope="module")
def exported(finished_study):
    return export_study(optuna.load_study(study_name="tiny", storage=finished_study.url), top_k=2)


def test_fold_models_reproduce_the_trials_f1(exported, tmp_path):
    out = tmp_path / "final"
    result = train_final(exported, out, "folds", torch.device("cpu"))
    for t in exported.trials:
        # Same data, folds, seeds and device as the trial: the same F1, within noise.
        assert result.cv_f1(t.trial) == pytest.approx(t.fold_f1, abs=0.02)
    manifest = yaml.safe_load((out / MANIFEST).read_text())
    assert manifest["mode"] == "folds" and manifest["classes"] == ["c0_red", "c1_green", "c2_blue"]
    assert sorted(m["file"] for m in manifest["models"]) == sorted(
        f"trial{t.trial}-fold{k}.pt" for t in exported.trials for k in range(2)
    )
    checkpoint = torch.load(out / manifest["models"][0]["file"], weights_only=True)
    assert checkpoint["config"] == exported.trials[0].config.to_dict()
    assert checkpoint["classes"] == manifest["classes"] and "fc.weight" in str(list(checkpoint["state_dict"]))
    assert not (tmp_path / "final.partial").exists()


def test_full_data_model_trains_for_the_best_epoch_count(exported, tmp_path):
    # The folds peaked in their second epoch (index 1) of 3: the full-data model trains 2 epochs.
    first = exported.trials[0]
    trial = dataclasses.replace(first, config=dataclasses.replace(first.config, max_epochs=3), best_epochs=[1, 1])
    one = dataclasses.replace(exported, trials=[trial])
    epochs = []
    result = train_final(one, tmp_path / "full", "full", torch.device("cpu"), on_epoch=lambda t, e: epochs.append(e))
    [model] = result.models
    assert [e.epoch for e in epochs] == [0, 1] and all(e.fold == 0 and np.isnan(e.macro_f1) for e in epochs)
    assert model.fold is None and model.f1 is None and model.epochs == 2
    assert full_data_config(one.trials[0].config, one.trials[0].best_epochs).patience is None
    assert (tmp_path / "full" / f"trial{one.trials[0].trial}-full.pt").is_file()


def test_other_data_is_refused_and_nothing_is_written(exported, image_root, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "labels.csv").write_text((image_root / "labels.csv").read_text().replace("c0_red-0", "moved"))
    for sub in ("c0_red", "c1_green", "c2_blue"):
        (other / sub).symlink_to(image_root / sub)
    with pytest.raises(DataError, match="is not the data study 'tiny' was run on"):
        train_final(exported, tmp_path / "final", "folds", torch.device("cpu"), [f"data.root={other}"])
    assert not (tmp_path / "final").exists()


def test_out_that_hpo_did_not_write_or_a_foreign_config_is_refused_before_training(exported, tmp_path):
    mine = tmp_path / "mydata"
    mine.mkdir()
    (mine / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="--out .*mydata exists and is not a folder hpo train wrote"):
        train_final(exported, mine, "folds", torch.device("cpu"))
    assert (mine / "precious.txt").read_text() == "keep me"
    first = exported.trials[0]
    edited = dataclasses.replace(first, config=dataclasses.replace(first.config, backbone="resnet999"))
    with pytest.raises(ConfigError, match=f"trial {first.trial}: backbone: unknown timm backbone 'resnet999'"):
        train_final(dataclasses.replace(exported, trials=[edited]), tmp_path / "final", "folds", torch.device("cpu"))
    edited = dataclasses.replace(first, config=dataclasses.replace(first.config, augment_on="GPU"))
    with pytest.raises(ConfigError, match=f"trial {first.trial}: augment_on 'GPU'; use one of: workers, gpu"):
        train_final(dataclasses.replace(exported, trials=[edited]), tmp_path / "final", "folds", torch.device("cpu"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mydata"]  # no .partial left


def test_an_export_without_trials_is_refused(exported, tmp_path):
    empty = tmp_path / "empty.yaml"
    write_export(dataclasses.replace(exported, trials=[]), empty)
    with pytest.raises(ConfigError, match="the export holds no trial"):
        read_export(empty)
