"""The `cifar_dir` fixture: CI fails (never skips) without the real data, and a subset in data/ does not count."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MAKE_CIFAR10, REQUIRE_ENV

TESTS = Path(__file__).resolve().parent
USES_DATA = '''
import numpy as np
from utils.dataset import load_cifar10


def test_it(cifar_dir):
    assert np.bincount(load_cifar10(cifar_dir).train_labels).tolist() == [5000] * 10
'''


def fake_checkout(root: Path) -> Path:
    """A checkout without data: the real conftest and one test that needs the data, beside nothing (no ../shared)."""
    (root / "repo" / "tests").mkdir(parents=True)
    shutil.copy(TESTS / "conftest.py", root / "repo" / "tests" / "conftest.py")
    (root / "repo" / "tests" / "test_needs_data.py").write_text(USES_DATA)
    return root / "repo"


def run_pytest(repo: Path, require: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CIFAR10_DIR", REQUIRE_ENV)}
    env["PYTHONPATH"] = str(TESTS.parent)                 # the package under test; conftest from the fake checkout
    if require:
        env[REQUIRE_ENV] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(repo / "tests")],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=600)


def test_without_the_data_ci_fails_and_a_local_run_skips_saying_why(tmp_path):
    repo = fake_checkout(tmp_path)
    ci = run_pytest(repo, require=True)
    assert ci.returncode != 0 and "real CIFAR-10 is required" in ci.stdout, ci.stdout[-2000:]
    local = run_pytest(repo, require=False)
    assert local.returncode == 0 and "1 skipped" in local.stdout and "no real CIFAR-10" in local.stdout


@pytest.mark.slow
def test_a_subset_in_data_is_not_taken_for_the_data_the_full_layout_is_made_beside_it(tmp_path):
    repo = fake_checkout(tmp_path)
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(MAKE_CIFAR10.parent)     # ../shared/data beside the checkout
    subprocess.run([sys.executable, str(MAKE_CIFAR10), str(repo / "data"), "--limit-per-class", "3"], check=True,
                   capture_output=True)
    done = run_pytest(repo, require=True)
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout[-2000:]
    assert (repo / "data" / "full-cifar10" / "cifar_test_nolabel.pkl").is_file()
