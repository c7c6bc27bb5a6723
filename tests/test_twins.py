"""The platform twins: the five notebooks run as a student runs them ("Run all"), on Colab's and on Kaggle's facts.

Each test reads what `.ci/twins/twin.py TWIN` did (both twins run at once: twin_runs). See twin.py's docstring: the
platform's package versions in a venv built by .ci/twins/setup.sh, its files in a private mount namespace, its
kernel and variables from tests/platform_facts.py, the repository cloned by the setup cell from a snapshot of this
working tree, profile `tiny`; the Kaggle twin runs README's Kaggle cell over two sessions (a run paused by
max_epochs_this_call, continued from the attached output). A test passes when its twin's every check passed; the
twin's one-line summary is printed.
A twin that cannot run here (no venv, not root, no `unshare`, no ../shared/data/make_cifar10.py) FAILS
under CI (CI=true or CIFAR10_REQUIRE_TWINS=1, which .ci/run sets) and is skipped elsewhere, saying why.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from utils.runtime.platforms import REPO_ROOT

TWIN = REPO_ROOT / ".ci" / "twins" / "twin.py"
TWINS = ["colab", "kaggle"]
CANNOT_RUN = 3                     # twin.py's exit code when the twin cannot run on this machine
TIMEOUT_S = 30 * 60                # both twins side by side: minutes on 2 CPU cores; a shared CPU can be slower


def required() -> bool:
    return os.environ.get("CIFAR10_REQUIRE_TWINS") == "1" or os.environ.get("CI", "").lower() in ("1", "true")


@pytest.fixture(scope="module")
def twin_runs(request, tmp_path_factory):
    """Both twins started at once, each in its own process and mount namespace: much of a twin's time is one
    thread's (kernels starting, imports, pip, figures), so two share the cores well. The platforms' root folders
    (/content, /kaggle) are made here for both and removed once both have ended, so that neither twin removes
    a folder the other's namespace still has a mount on (an rmdir in another namespace unmounts it)."""
    roots = [Path(p) for p in ("/content", "/kaggle")]
    made = []
    with contextlib.suppress(OSError):          # not root: the twins say they cannot run
        for root in roots:
            if not root.exists():
                root.mkdir()
                made.append(root)
    selected = {item.callspec.params.get("twin") for item in request.session.items if hasattr(item, "callspec")}
    wanted = [twin for twin in TWINS if twin in selected]
    folder = tmp_path_factory.mktemp("twins")
    with contextlib.ExitStack() as files:           # files, not pipes: no twin waits on a reader busy with the other
        procs = {twin: subprocess.Popen([sys.executable, str(TWIN), twin], cwd=REPO_ROOT,
                                        stdout=files.enter_context((folder / f"{twin}.out").open("w")),
                                        stderr=files.enter_context((folder / f"{twin}.err").open("w")))
                 for twin in wanted}
    done = {}
    try:
        for twin, proc in procs.items():
            proc.wait(timeout=TIMEOUT_S)
            done[twin] = subprocess.CompletedProcess(proc.args, proc.returncode, (folder / f"{twin}.out").read_text(),
                                                     (folder / f"{twin}.err").read_text())
    finally:
        for proc in procs.values():
            proc.kill()
        for root in made:
            with contextlib.suppress(OSError):
                root.rmdir()
    return done


@pytest.mark.twins
@pytest.mark.notebooks
@pytest.mark.parametrize("twin", TWINS)
def test_the_five_notebooks_run_all_under_the_platform_twin(twin, twin_runs, capsys):
    done = twin_runs[twin]
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
