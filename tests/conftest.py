"""Shared test fixtures. `cifar_dir`: a folder holding the full real CIFAR-10 in the Kaggle layout."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MAKE_CIFAR10 = REPO_ROOT.parent / "shared" / "data" / "make_cifar10.py"
BATCHES = Path("cifar-10-python") / "cifar-10-batches-py"
FULL_BATCH_BYTES = 30_000_000   # a data_batch of 10,000 images; a --limit-per-class layout is smaller


def is_full_layout(folder: Path) -> bool:
    """All six batches (full size), the meta file and the unlabeled pickle are there."""
    batches = folder / BATCHES
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return ((folder / "cifar_test_nolabel.pkl").is_file() and (batches / "batches.meta").is_file()
            and all((batches / n).is_file() and (batches / n).stat().st_size > FULL_BATCH_BYTES for n in names))


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    """$CIFAR10_DIR if it holds a full layout, else REPO_ROOT/data, else lays the data out there
    with ../shared/data/make_cifar10.py (about 10 s, idempotent); skips when none of these works."""
    env = os.environ.get("CIFAR10_DIR")
    if env and is_full_layout(Path(env)):
        return Path(env).resolve()
    target = REPO_ROOT / "data"
    if not is_full_layout(target):
        if not MAKE_CIFAR10.is_file():
            pytest.skip(f"no CIFAR-10 data: {target} is not laid out and {MAKE_CIFAR10} is missing")
        done = subprocess.run([sys.executable, str(MAKE_CIFAR10), str(target)], capture_output=True, text=True)
        if done.returncode != 0 or not is_full_layout(target):
            pytest.skip(f"could not lay out CIFAR-10 in {target}: {done.stderr.strip()[-500:]}")
    return target
