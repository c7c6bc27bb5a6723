"""The self-training round (utils.self_training, notebooks 03-05): which unlabeled images it uses and with which
labels, the saved table and its checks, the student's data, resume across calls, and the refusals before training.

Members and students are real trainings of a tiny CustomResNet on a synthetic layout (tests/layouts.py), a second
or two each on a CPU; the notebooks run the round end to end in tests/test_notebooks.py (the leaderboard test)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from layouts import make_layout

from utils.config import NUM_CLASSES, Config
from utils.dataset import NOLABEL_FILE, DataNotFoundError, Splits, load_unlabeled, prepare_splits
from utils.ensemble import STUDENT, UnfinishedError, ensemble_probabilities, find_members, find_student, predict_members
from utils.members import unfinished_note
from utils.runtime.device import decide
from utils.self_training import (
    LABELS_FILE,
    RoundError,
    read_labels,
    round_inputs,
    round_now,
    select_confident,
    student_splits,
    train_student,
)
from utils.train import fit

RECIPE = dict(channels=[8, 16], blocks=[1, 1], epochs=2, batch_size=16, val_fraction=0.0, monitor_every=1,
              test_limit=20, device="cpu", deterministic=True, self_training=0.4)
N_UNLABELED = 50          # 0.4 x 50 / 10 classes = 2 images per predicted class at most


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    return make_layout(tmp_path_factory.mktemp("cifar"), per_batch=20, n_test=20, n_unlabeled=N_UNLABELED)


def recipe(tmp_path, layout, **kw) -> Config:
    return Config(**{**RECIPE, "run_dir": str(tmp_path / "run"), "data_dir": str(layout), **kw})


def quiet(line: str) -> None:
    pass


def train_members(cfg: Config) -> None:
    for k in cfg.member_indices:
        fit(cfg.replace(member=k), progress=False, log=quiet)


# --------------------------------------------------------------------------------------------
# Selection and the table
# --------------------------------------------------------------------------------------------
def test_each_predicted_class_gives_its_most_confident_share_and_a_rare_class_gives_what_it_has():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(60, int), np.ones(30, int), np.full(10, 2)]        # 100 images, classes 0, 1 and 2
    confidence = rng.uniform(0.2, 1.0, 100)
    used = select_confident(labels, confidence, share=0.5)                      # 0.5 x 100 / 10 = 5 per class
    for c in range(3):                                                         # 60, 30 and 10 predictions
        rows = np.flatnonzero(labels == c)
        assert used[rows].sum() == 5, f"class {c}: a balanced share, however often it was predicted"
        assert confidence[rows][used[rows]].min() >= confidence[rows][~used[rows]].max()
    assert select_confident(labels, confidence, share=1.0)[labels == 2].all()  # 10 per class: class 2 has 10
    assert select_confident(labels, confidence, share=0.0).sum() == 0


def test_the_student_trains_on_the_training_images_plus_the_used_ones_matched_by_id():
    images = np.arange(6, dtype=np.uint8)[:, None, None, None] * np.ones((1, 32, 32, 3), np.uint8)   # image i: all i
    ids = np.array([40, 7, 13, 99, 2, 58])                                       # shuffled, not 0..n-1
    table = pd.DataFrame({"id": [2, 99, 7, 40, 13, 58], "label": [3, 1, 4, 1, 5, 9], "class": "x",
                          "confidence": 0.9, "used": [True, True, False, True, False, False]})
    train = np.zeros((4, 32, 32, 3), np.uint8) + 200
    splits = Splits(train, np.array([0, 1, 2, 3]), train[:0], np.array([], int), train[:1], np.array([0]),
                    [str(c) for c in range(NUM_CLASSES)], [0.5] * 3, [0.25] * 3, None)
    data = student_splits(splits, table, images, ids)
    assert len(data.train_images) == 7 and (data.train_images[:4] == 200).all()
    assert [int(x[0, 0, 0]) for x in data.train_images[4:]] == [4, 3, 0]          # ids 2, 99, 40 -> rows 4, 3, 0
    assert data.train_labels.tolist() == [0, 1, 2, 3, 3, 1, 1]
    assert data.val_images is splits.val_images and data.mean == splits.mean       # the members' split and scale


# --------------------------------------------------------------------------------------------
# The round, trained
# --------------------------------------------------------------------------------------------
def test_the_round_labels_with_the_members_ensemble_saves_the_table_and_resumes_on_it(tmp_path, layout):
    cfg = recipe(tmp_path, layout, members=2, max_epochs_this_call=1)
    train_members(cfg.replace(max_epochs_this_call=None))
    assert unfinished_note(cfg) == "the self-training round at epoch 0 of 2 (max_epochs_this_call 1)"
    lines: list[str] = []
    first = train_student(cfg, prepare_splits(cfg), "cpu", log=lines.append)
    assert not first.finished and first.run_dir == cfg.student_path

    table = pd.read_csv(cfg.student_path / LABELS_FILE)
    images, ids = load_unlabeled(layout / NOLABEL_FILE)
    members = find_members(cfg, "cpu", quiet)
    assert len(members) == 2
    probs = ensemble_probabilities(predict_members(members, images, cfg, decide("cpu", cfg.amp, cfg.channels_last)))
    assert table["id"].tolist() == ids.tolist()
    assert table["label"].tolist() == probs.argmax(1).tolist(), "the labels are the ensemble's, not one member's"
    np.testing.assert_allclose(table["confidence"], probs.max(1), rtol=1e-6)
    assert table["used"].tolist() == select_confident(probs.argmax(1), probs.max(1), 0.4).tolist()
    used = int(table["used"].sum())
    assert 0 < used <= 2 * NUM_CLASSES
    assert any(f"{100 + used} train / 0 val images" in line for line in lines), lines   # 5 batches of 20 + used
    assert unfinished_note(cfg) == "the self-training round at epoch 1 of 2 (max_epochs_this_call 1)"

    for m in members:                                  # the second call cannot label again: it must read the table
        m.best_path.unlink()
    lines.clear()
    second = train_student(cfg, prepare_splits(cfg), "cpu", log=lines.append)
    assert second.finished and len(second.history) == 2
    assert any(f"the labels of {cfg.student_path / LABELS_FILE}" in line for line in lines), lines
    assert any("Resumed" in line and "after epoch 1" in line for line in lines), lines
    assert unfinished_note(cfg) is None
    student = find_student(cfg, "cpu", quiet)
    assert student.label == STUDENT and student.progress.finished and student.best_path.parent == cfg.student_path


def test_a_saved_table_of_other_images_or_another_share_is_refused_not_redone(tmp_path, layout):
    _, ids = load_unlabeled(layout / NOLABEL_FILE)
    rng = np.random.default_rng(1)
    labels, confidence = np.arange(len(ids)) % NUM_CLASSES, rng.uniform(0.3, 1, len(ids))
    table = pd.DataFrame({"id": ids, "label": labels, "class": "x", "confidence": confidence,
                          "used": select_confident(labels, confidence, 0.4)})
    path = tmp_path / LABELS_FILE
    table.to_csv(path, index=False)
    assert read_labels(path, ids, 0.4)["used"].sum() == table["used"].sum()
    with pytest.raises(RoundError, match=r"another self_training share \(20 images used; self_training 0.8 uses 40\)"):
        read_labels(path, ids, 0.8)
    with pytest.raises(RoundError, match="not those of the unlabeled pickle"):
        read_labels(path, ids + 1000, 0.4)
    table.drop(columns="confidence").to_csv(path, index=False)
    with pytest.raises(RoundError, match="expected the columns id,label,class,confidence,used"):
        read_labels(path, ids, 0.4)


# --------------------------------------------------------------------------------------------
# Refusals and waits, before any training
# --------------------------------------------------------------------------------------------
def test_without_the_unlabeled_images_the_round_is_refused_naming_it_and_where_it_looked(tmp_path, layout):
    missing = tmp_path / "nowhere" / NOLABEL_FILE
    cfg = recipe(tmp_path, layout, nolabel_path=str(missing))
    with pytest.raises(DataNotFoundError) as err:
        round_inputs(cfg)
    assert "the self-training round labels the competition's unlabeled images" in str(err.value)
    assert str(missing) in str(err.value) and "self_training = 0" in str(err.value)
    with pytest.raises(RoundError, match=r"selects no image per class; expected a share of at least 0.1"):
        round_inputs(recipe(tmp_path, layout, self_training=0.05))      # 0.05 x 50 / 10 rounds to 0


def test_the_round_waits_for_every_member_and_for_the_next_call_under_an_epoch_limit(tmp_path, layout):
    lines: list[str] = []
    cfg = recipe(tmp_path, layout, members=2)
    assert not round_now(cfg.replace(self_training=0.0), True, lines.append) and not lines
    train_members(cfg.replace(members=2, member=0))
    assert not round_now(cfg, False, lines.append) and "waits for member(s) [1]" in lines[-1]
    assert not round_now(cfg.replace(member=0), True, lines.append) and "trains member 0 alone" in lines[-1]
    train_members(cfg.replace(member=1))
    assert round_now(cfg, False, lines.append)                       # no epoch limit: members, then the round
    assert not round_now(cfg.replace(max_epochs_this_call=1), False, lines.append)
    assert "starts in the next call" in lines[-1]
    assert round_now(cfg.replace(max_epochs_this_call=1), True, lines.append)


def test_inference_refuses_a_missing_or_unfinished_round_and_ignores_it_when_off(tmp_path, layout):
    cfg = recipe(tmp_path, layout)
    assert find_student(cfg.replace(self_training=0.0), "cpu", quiet) is None
    with pytest.raises(UnfinishedError, match="the round has not trained its model yet"):
        find_student(cfg, "cpu", quiet)
    train_members(cfg)
    train_student(cfg.replace(max_epochs_this_call=1), prepare_splits(cfg), "cpu", log=quiet)
    with pytest.raises(UnfinishedError, match="trained 1 of its 2 epochs"):
        find_student(cfg, "cpu", quiet)
    lines: list[str] = []
    student = find_student(cfg.replace(allow_unfinished=True), "cpu", lines.append)
    assert student.progress.epochs_done == 1 and "allow_unfinished=True" in lines[0]
    assert isinstance(student.model, torch.nn.Module)
