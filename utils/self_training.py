"""Self-training: the members label the competition's unlabeled images; the confident ones join the training images
for a second training of the same model, the round's student, which notebook 05 then submits.

Why: the hidden set's images come from another source than CIFAR-10 (peers lose 8-12 points there). Training on
those very images, with the labels the model gave them, adapts it to their source: classic self-training, and
Noisy Student (Xie et al. 2020); the best public score of this competition (rigvedrs/Optimised-ResNet-for-CIFAR-10)
came from doing it by hand. Whether it pays for this project is measured, not assumed: docs/benchmarks.md
(benchmarks/self_training.py); a profile turns it on only where that table says so.

Design choices:
- One round, after every member has finished: the members' ensemble (utils.ensemble, with the profile's TTA)
  labels every unlabeled image; the label is the argmax, the confidence its probability.
- Selection per predicted class: the `self_training` share of N/10 images, the most confident of each class
  (fewer where the ensemble predicts a class less often). A class the model over-predicts on the new source
  cannot flood the training set, and the threshold needs no tuning per profile. Hard labels, as the published
  round did; label smoothing, where the profile has it, softens them like the real ones.
- The table (id, label, class, confidence, used) is written once, atomically, in `Config.student_path`, and read
  back on every later call: a round that a session's end interrupts resumes on the data it started with. A table
  that does not match the pickle or the share asked for now is refused, never silently redone.
- The student is member 0 of the same recipe (its training seed, its normalisation, its validation split), in its
  own folder, trained by `utils.train.fit` on the training images plus the used ones; it resumes like any run.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from .config import NUM_CLASSES, Config
from .dataset import DataNotFoundError, Splits, find_nolabel, load_unlabeled
from .ensemble import ensemble_probabilities, find_members, predict_members
from .members import member_runs
from .runtime.device import decide
from .runtime.files import write_text
from .train import TrainResult, fit

LABELS_FILE = "pseudo_labels.csv"
COLUMNS = ["id", "label", "class", "confidence", "used"]


class RoundError(ValueError):
    """The self-training round cannot run as asked; the message says why and what to change."""


def round_inputs(cfg: Config) -> tuple[Path, np.ndarray, np.ndarray]:
    """The unlabeled pickle the round labels: (path, images, ids). Checked before any training starts: a missing
    pickle, or a share that selects no image of a class, is refused with what to change."""
    try:
        path = find_nolabel(cfg.nolabel_path, cfg.data_path)
    except DataNotFoundError as err:
        raise DataNotFoundError(f"self_training {cfg.self_training:g}: the self-training round labels the "
                                f"competition's unlabeled images and needs them. {err}\nOr set self_training = 0."
                                ) from None
    images, ids = load_unlabeled(path)
    if images_per_class(cfg.self_training, len(ids)) < 1:
        raise RoundError(f"self_training {cfg.self_training:g} of the {len(ids):,} unlabeled images in {path} selects "
                         f"no image per class; expected a share of at least {NUM_CLASSES / (2 * len(ids)):.4g}, or 0 "
                         "for no round.")
    return path, images, ids


def images_per_class(share: float, n: int) -> int:
    return int(round(share * n / NUM_CLASSES))


def select_confident(labels: np.ndarray, confidence: np.ndarray, share: float) -> np.ndarray:
    """A mask of the images used: per predicted class, the `share` x N/10 most confident (ties: the earlier row)."""
    labels, confidence = np.asarray(labels), np.asarray(confidence)
    k = images_per_class(share, len(labels))
    used = np.zeros(len(labels), dtype=bool)
    for c in range(NUM_CLASSES):
        rows = np.flatnonzero(labels == c)
        used[rows[np.argsort(-confidence[rows], kind="stable")[:k]]] = True
    return used


def label_table(ids: np.ndarray, probs: np.ndarray, classes: list[str], share: float) -> pd.DataFrame:
    """One row per unlabeled image: its id, the ensemble's label (index and class), confidence, whether it is used."""
    labels, confidence = probs.argmax(1), probs.max(1)
    return pd.DataFrame({"id": ids, "label": labels, "class": np.asarray(classes)[labels],
                         "confidence": confidence.astype(np.float64),
                         "used": select_confident(labels, confidence, share)})


def read_labels(path: Path, ids: np.ndarray, share: float) -> pd.DataFrame:
    """The round's saved table, checked against the pickle's ids and the share asked for now."""
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise RoundError(f"{path}: cannot read the round's labels ({err}); delete the file to label again.") from None
    if list(table.columns) != COLUMNS or table["label"].isna().any():
        raise RoundError(f"{path}: expected the columns {','.join(COLUMNS)} with a label in every row; delete the file "
                         "to label again.")
    if not np.array_equal(np.sort(table["id"].to_numpy()), np.sort(np.asarray(ids))):
        raise RoundError(f"{path}: its ids are not those of the unlabeled pickle used now; it was made for other "
                         f"images. Move {path.parent} away to start the round over.")
    used = select_confident(table["label"].to_numpy(), table["confidence"].to_numpy(), share)
    if not np.array_equal(used, table["used"].to_numpy(dtype=bool)):
        raise RoundError(f"{path}: made with another self_training share ({int(table['used'].sum()):,} images used; "
                         f"self_training {share:g} uses {int(used.sum()):,}). Set self_training back to the share "
                         f"it was made with, or move {path.parent} away to start the round over.")
    return table


def labels_for_round(cfg: Config, device, log: Callable[[str], object] = print
                     ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(table, unlabeled images, their ids): the saved table in `cfg.student_path`, else the members' ensemble labels
    the images now and the table is saved there."""
    path, images, ids = round_inputs(cfg)
    table_path = cfg.student_path / LABELS_FILE
    if table_path.is_file():
        table = read_labels(table_path, ids, cfg.self_training)
        log(f"self-training: the labels of {table_path} ({int(table['used'].sum()):,} of {len(table):,} images used)")
        return table, images, ids
    members = find_members(cfg, device, log)
    plan = decide(device, cfg.amp, cfg.channels_last)
    probs = ensemble_probabilities(predict_members(members, images, cfg, plan))
    table = label_table(ids, probs, members[0].checkpoint["classes"], cfg.self_training)
    write_text(table_path, table.to_csv(index=False), "the self-training labels", "run_dir")
    used = table[table["used"]]
    log(f"self-training: {len(members)} member(s) labelled the {len(ids):,} images of {path} (TTA {cfg.tta}); "
        f"{len(used):,} used, the most confident {images_per_class(cfg.self_training, len(ids)):,} per class "
        f"(lowest confidence used: {used['confidence'].min():.3f}); saved {table_path}")
    return table, images, ids


def student_splits(splits: Splits, table: pd.DataFrame, images: np.ndarray, ids: np.ndarray) -> Splits:
    """The members' splits with the used unlabeled images (and their labels) added to the training images."""
    used = table[table["used"]]
    position = pd.Series(np.arange(len(ids)), index=np.asarray(ids))
    rows = position.loc[used["id"].to_numpy()].to_numpy()
    return replace(splits, train_images=np.concatenate([splits.train_images, images[rows]]),
                   train_labels=np.concatenate([splits.train_labels,
                                                used["label"].to_numpy(dtype=splits.train_labels.dtype)]))


def student_config(cfg: Config) -> Config:
    """The student's Config: member 0 of the recipe, in the round's folder."""
    return cfg.replace(run_dir=str(cfg.student_path), members=1, member=None)


def train_student(cfg: Config, splits: Splits, device, log: Callable[[str], object] = print,
                  **fit_kwargs) -> TrainResult:
    """The round: label (or read the saved labels), then train the student on the training images plus the used
    ones, resuming its last.pt like any run."""
    table, images, ids = labels_for_round(cfg, device, log)
    data = student_splits(splits, table, images, ids)
    log(f"self-training: the student trains on {len(splits.train_labels):,} training + "
        f"{len(data.train_labels) - len(splits.train_labels):,} self-labelled images, in {cfg.student_path}")
    return fit(student_config(cfg), data, log=log, **fit_kwargs)


def round_now(cfg: Config, members_done_before: bool, log: Callable[[str], object] = print) -> bool:
    """Whether this call of notebook 03 trains the round: it is on, this call trains every member (`member` unset),
    every member has finished, and, where `max_epochs_this_call` splits training over sessions, this call trained
    no member epoch (the limit budgets one training per call). Says why not when it is on but waits."""
    if not cfg.self_training:
        return False
    if cfg.member is not None:
        log(f"self-training: this call trains member {cfg.member} alone; the round runs in a call that trains every "
            "member (member = None) once all have finished.")
        return False
    waiting = [r.member for r in member_runs(cfg) if not r.finished]
    if waiting:
        log(f"self-training: the round waits for member(s) {waiting} to finish; run this notebook again.")
        return False
    if cfg.epoch_limit and not members_done_before:
        log(f"self-training: the members finished in this call; with max_epochs_this_call {cfg.epoch_limit} the "
            "round starts in the next call (run this notebook again).")
        return False
    return True
