"""Shared test fixtures. `cifar_dir`: a folder holding the full real CIFAR-10 in the Kaggle layout.

Where it comes from: $CIFAR10_DIR if that holds a full layout, else REPO_ROOT/data, else it is laid out with
../shared/data/make_cifar10.py (about 15 s) into REPO_ROOT/data, or into data/full-cifar10/ when data/ already
holds a `--limit-per-class` subset (which the make script would leave alone). When none of this works the
tests that need it FAIL under CI (CIFAR10_REQUIRE_DATA=1, set by .ci/run) and are skipped, saying why, elsewhere.
"""
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
REQUIRE_ENV = "CIFAR10_REQUIRE_DATA"


def is_full_layout(folder: Path) -> bool:
    """All six batches (full size), the meta file and the unlabeled pickle are there."""
    batches = folder / BATCHES
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return ((folder / "cifar_test_nolabel.pkl").is_file() and (batches / "batches.meta").is_file()
            and all((batches / n).is_file() and (batches / n).stat().st_size > FULL_BATCH_BYTES for n in names))


def layout_target() -> Path:
    """REPO_ROOT/data, unless it holds something else (a subset): then a folder of our own inside it."""
    data = REPO_ROOT / "data"
    return data if not (data / BATCHES).exists() else data / "full-cifar10"


def no_data(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"real CIFAR-10 is required ({REQUIRE_ENV}=1) but {reason}", pytrace=False)
    pytest.skip(f"no real CIFAR-10: {reason}")


def find_or_lay_out() -> Path | None:
    env = os.environ.get("CIFAR10_DIR")
    for folder in ([Path(env)] if env else []) + [REPO_ROOT / "data", REPO_ROOT / "data" / "full-cifar10"]:
        if is_full_layout(folder):
            return folder.resolve()
    if not MAKE_CIFAR10.is_file():
        no_data(f"{REPO_ROOT / 'data'} holds no full layout and {MAKE_CIFAR10} is missing")
    target = layout_target()
    done = subprocess.run([sys.executable, str(MAKE_CIFAR10), str(target)], capture_output=True, text=True)
    if done.returncode != 0 or not is_full_layout(target):
        no_data(f"laying it out in {target} failed: {(done.stderr or done.stdout).strip()[-500:]}")
    return target.resolve()


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    return find_or_lay_out()
