"""Tiny CIFAR-format layouts written into a temp dir: the exact Kaggle file names and pickle formats."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from utils.dataset import BATCHES_SUBDIR, NOLABEL_FILE, TRAIN_FILES

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def dump(obj, path: Path, protocol: int = 4) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


def images_for(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def to_rows(images: np.ndarray) -> np.ndarray:
    """NHWC -> the official (N, 3072) channel-first rows."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def batch_dict(images: np.ndarray, labels) -> dict:
    return {b"batch_label": b"tiny", b"labels": [int(v) for v in labels], b"data": to_rows(images),
            b"filenames": [b"x.png"] * len(images)}


def make_layout(root: Path, per_batch: int = 20, n_test: int = 40, n_unlabeled: int = 30,
                flat_unlabeled: bool = False) -> Path:
    """Five train batches, a test batch, batches.meta and cifar_test_nolabel.pkl; labels cycle 0-9."""
    batches = root / BATCHES_SUBDIR
    for i, name in enumerate(TRAIN_FILES):
        dump(batch_dict(images_for(per_batch, i), np.arange(per_batch) % 10), batches / name)
    dump(batch_dict(images_for(n_test, 99), np.arange(n_test) % 10), batches / "test_batch")
    dump({b"num_cases_per_batch": per_batch, b"label_names": [c.encode() for c in CLASSES], b"num_vis": 3072},
         batches / "batches.meta")
    unlabeled = images_for(n_unlabeled, 123)
    dump({b"data": to_rows(unlabeled) if flat_unlabeled else unlabeled,
          b"ids": np.arange(n_unlabeled, dtype=np.int64)}, root / NOLABEL_FILE)
    return root
