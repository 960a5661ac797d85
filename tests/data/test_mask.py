"""The mask competition's archive read as it is (format: mask)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hpo.data.folds import make_fold_plan
from hpo.data.formats import load_table
from hpo.data.formats.mask import CLASSES, FACTORS, encode
from hpo.errors import DataError
from hpo.train.losses import FactorizedLoss, build_criterion
from hpo.train.models import FactorizedModel, create_model

PEOPLE, PHOTOS = 24, 7


def load(root, **options):
    return load_table("mask", {"root": str(root), "corrupt": "skip", **options})


def relative(table, root):
    base = root / "train" / "images"
    return [str(Path(table.describe(i)).relative_to(base)) for i in range(len(table))]


def test_every_photo_gets_its_18_class_label(mask_archive):
    table = load(mask_archive.root)
    assert table.classes == CLASSES and len(CLASSES) == 18
    assert len(table) == PEOPLE * PHOTOS - 1  # the corrupt photo is left out
    names = relative(table, mask_archive.root)
    expected = np.array([encode(*mask_archive.expected[name]) for name in names])
    assert np.array_equal(table.labels, expected)
    assert set(table.labels.tolist()) == set(range(18))  # all 18 classes present
    # Spot-check the formula mask*6 + gender*3 + age and the class names.
    assert CLASSES[encode(2, 1, 2)] == "not_worn/female/>=60" and encode(2, 1, 2) == 17
    assert CLASSES[encode(1, 0, 1)] == "incorrect/male/30-59" and encode(1, 0, 1) == 7
    # The group of every photo is its person.
    person = [name.split("_")[0] for name in names]
    assert table.groups.tolist() == person
    assert table.factors == FACTORS


def test_junk_is_skipped_and_counted(mask_archive, tmp_path):
    root = tmp_path / "archive"
    shutil.copytree(mask_archive.root, root)
    folder = next((root / "train" / "images").glob("000002_*"))
    (folder / "notes.txt").write_text("not a photo")
    (folder / "mask9.jpg").write_bytes((folder.glob("mask1.*").__next__()).read_bytes())
    table = load(root)
    assert table.skipped == {"hidden file (._* and the like)": mask_archive.junk, "not an image": 1,
                             "unknown photo name": 1, "corrupt": 1}
    assert len(table) == PEOPLE * PHOTOS - 1


def test_corrupt_photo_fails_with_its_path_or_is_skipped(mask_archive):
    [corrupt] = mask_archive.corrupt
    with pytest.raises(DataError, match=rf"corrupt image {corrupt} .*set data.corrupt=skip"):
        load(mask_archive.root, corrupt="fail")
    table = load(mask_archive.root, corrupt="skip")
    assert str(corrupt) not in {table.describe(i) for i in range(len(table))}
    # Labels stay with their photos: skipping shifted nothing.
    names = relative(table, mask_archive.root)
    assert all(encode(*mask_archive.expected[n]) == label for n, label in zip(names, table.labels, strict=True))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_person_in_two_folds(mask_archive, seed):
    table = load(mask_archive.root)
    plan = make_fold_plan(table, 5, seed)
    for person in np.unique(table.groups):
        assert len(set(plan[table.groups == person].tolist())) == 1
    assert sorted(set(plan.tolist())) == [0, 1, 2, 3, 4]


def test_relabel_list_corrects_gender_age_and_swapped_photos(mask_archive, tmp_path):
    before = load(mask_archive.root)
    relabel = [{"id": "000001", "gender": "female"}, {"id": 2, "age": 65},
               {"id": "000003", "swap": ["incorrect_mask", "normal"]}]
    after = load(mask_archive.root, relabel=relabel)
    labels = dict(zip(relative(after, mask_archive.root), after.labels.tolist(), strict=True))
    assert len(labels) == len(before)
    for name, label in labels.items():
        mask, gender, age = mask_archive.expected[name]
        if name.startswith("000001_"):
            gender = 1
        if name.startswith("000002_"):
            age = 2
        if name.startswith("000003_") and mask in (1, 2):
            mask = 3 - mask  # the incorrect_mask photo shows no mask, and the other way round
        assert label == encode(mask, gender, age), name
    assert after.fingerprint() != before.fingerprint()  # corrected data is different data
    csv_file = tmp_path / "relabel.csv"
    csv_file.write_text("id,gender,age,swap\n000001,female,,\n000002,,65,\n000003,,,incorrect_mask;normal\n")
    assert np.array_equal(load(mask_archive.root, relabel=str(csv_file)).labels, after.labels)
    with pytest.raises(DataError, match="person '999999' is not in train.csv"):
        load(mask_archive.root, relabel=[{"id": "999999", "age": 40}])


def test_age_boundary_changes_training_labels_only(mask_archive):
    table = load(mask_archive.root)
    ages = np.array([mask_archive.ages[g] for g in table.groups])
    lowered = table.training_labels({"age_boundary": 58})
    at_58 = ages == 58
    assert at_58.any()
    assert np.all(lowered[at_58] % 3 == 2) and np.all(table.labels[at_58] % 3 == 1)
    assert np.array_equal(lowered[~at_58], table.labels[~at_58])
    assert np.array_equal(table.training_labels({}), table.labels)


def test_three_heads_give_18_class_log_probabilities_and_a_summed_loss():
    torch.manual_seed(0)
    model = create_model("test_resnet", False, 18, "factorized", FACTORS)
    assert isinstance(model, FactorizedModel)
    x = torch.randn(4, 3, 32, 32)
    joint = model(x)
    assert joint.shape == (4, 18)
    assert torch.allclose(joint.exp().sum(1), torch.ones(4), atol=1e-5)
    heads = model.head(model.body(x)).split((3, 2, 3), dim=1)
    # Class m*6+g*3+a has log p(m) + log p(g) + log p(a).
    m, g, a = 2, 1, 0
    expected = sum(h.log_softmax(1)[:, i] for h, i in zip(heads, (m, g, a), strict=True))
    assert torch.allclose(joint[:, m * 6 + g * 3 + a], expected, atol=1e-5)
    target = torch.tensor([0, 7, 17, 11])
    criterion = build_criterion("cross_entropy", {}, "none", np.ones(18), torch.device("cpu"), FACTORS, "factorized")
    assert isinstance(criterion, FactorizedLoss)
    parts = [target // 6, (target // 3) % 2, target % 3]
    summed = sum(torch.nn.functional.cross_entropy(h, t) for h, t in zip(heads, parts, strict=True))
    assert torch.allclose(criterion(joint, target), summed, atol=1e-5)


def test_a_factorized_head_fits_a_backbone_with_a_pre_logits_layer():
    """MobileNetV3 returns its 1024-wide pre-logits layer, not its 288 features: the head is
    sized from what the body returns, and the model runs."""
    model = create_model("mobilenetv3_small_050", False, 18, "factorized", FACTORS)
    assert model.body.num_features != model.head.in_features == 1024
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 18)
