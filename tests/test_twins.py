"""The platform twins: the five notebooks run as a student runs them ("Run all"), on Colab's and on Kaggle's facts.

Each test runs `.ci/twins/twin.py TWIN` (see its docstring: the platform's package versions in a venv built by
.ci/twins/setup.sh, its files in a private mount namespace, its kernel and variables from tests/platform_facts.py,
the repository cloned by the setup cell from a snapshot of this working tree, profile `tiny`) and passes when
the twin's every check passed; the twin's one-line summary is printed. A twin that cannot run here (no venv, not
root, no `unshare`, no ../shared/data/make_cifar10.py) FAILS under CI (CI=true or CIFAR10_REQUIRE_TWINS=1, which
.ci/run sets) and is skipped elsewhere, saying why.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from utils.config import REPO_ROOT

TWIN = REPO_ROOT / ".ci" / "twins" / "twin.py"
TWINS = ["colab", "kaggle"]
CANNOT_RUN = 3                     # twin.py's exit code when the twin cannot run on this machine
TIMEOUT_S = 20 * 60                # a twin takes about 2 minutes on 2 CPU cores; a shared CPU can be slower


def required() -> bool:
    return os.environ.get("CIFAR10_REQUIRE_TWINS") == "1" or os.environ.get("CI", "").lower() in ("1", "true")


@pytest.mark.twins
@pytest.mark.notebooks
@pytest.mark.parametrize("twin", TWINS)
def test_the_five_notebooks_run_all_under_the_platform_twin(twin, capsys):
    done = subprocess.run([sys.executable, str(TWIN), twin], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    output = done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith(f"twin {twin}:")]
    if done.returncode == CANNOT_RUN:
        reason = lines[-1] if lines else output.strip()[-500:]
        if required():
            pytest.fail(f"the twin is required here (CI) but {reason}", pytrace=False)
        pytest.skip(reason)
    assert done.returncode == 0, f"twin {twin} failed (exit {done.returncode}):\n{output[-8000:]}"
    summary = next(line for line in lines if " PASSED " in line)
    with capsys.disabled():        # the summary line goes to CI's log, between pytest's dots
        print(f"\n{summary}")
