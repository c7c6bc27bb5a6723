"""The five notebooks and run.py.

Fast: each notebook is committed clean (no outputs), its first code cell is tagged `parameters`,
declares only Config fields (plus REPO_URL) with the paper profile's defaults, and all share one
setup cell. Slow (`-m notebooks`, about 10 minutes on 2 CPU cores): `python run.py --profile smoke`
end to end on real CIFAR-10, its figures, tables and submission, then nbval on the executed copies
(`--nbval-lax`: every cell must run; cells marked `# NBVAL_CHECK_OUTPUT` must print the same again).
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from PIL import Image

import run as runner
from utils.config import REPO_ROOT, Config, load_config, read_profile
from utils.submission import validate_submission

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = runner.NOTEBOOKS
NOT_CONFIG = {"REPO_URL"}            # the only parameter that is not a Config field
REQUIRED = {"profile", "data_dir", "run_dir", "device", "seed", "REPO_URL"}
FIGURES = ["samples.png", "class_counts.png", "training_curves.png", "confusion_matrix.png", "misclassified.png"]
TABLES = ["param_table", "per_class_metrics"]
TEST_ACCURACY = re.compile(r"Test accuracy \(labeled CIFAR-10 test_batch[^)]*\): ([0-9.]+)")
SMOKE_TIMEOUT_S = 30 * 60            # generous: the budget is ~10 min, but a shared CPU can be slower


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK_DIR / name, as_version=4)


def code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def parameters_of(nb) -> dict:
    """name -> literal default of every assignment in the `parameters` cell."""
    tree = ast.parse(code_cells(nb)[0].source)
    return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}


# --------------------------------------------------------------------------------------------
# Fast: the committed notebooks
# --------------------------------------------------------------------------------------------
def test_the_five_notebooks_are_the_ones_run_py_runs():
    assert sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_clean_with_a_title_and_python3_kernel(name):
    nb = read(name)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{name}: cells {dirty} have outputs or execution counts; clear them before committing"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_first_code_cell_is_the_parameters_cell_with_the_paper_defaults(name):
    nb = read(name)
    first = code_cells(nb)[0]
    assert "parameters" in first.metadata.get("tags", []), f"{name}: first code cell is not tagged `parameters`"
    assert not any("parameters" in c.metadata.get("tags", []) for c in code_cells(nb)[1:])
    params = parameters_of(nb)
    assert REQUIRED <= set(params), f"{name}: parameters cell lacks {sorted(REQUIRED - set(params))}"
    unknown = set(params) - set(Config.field_names()) - NOT_CONFIG
    assert not unknown, f"{name}: {sorted(unknown)} are not Config fields, so Config.from_params would drop them"
    paper = read_profile("paper")
    differ = {k: (v, paper[k]) for k, v in params.items() if k in paper and v != paper[k]}
    assert not differ, f"{name}: defaults differ from configs/paper.yaml (notebook, yaml): {differ}"
    defaults = Config().to_dict()   # keys paper.yaml leaves out (paths, runtime) keep Config's defaults
    differ = {k: (v, defaults[k]) for k, v in params.items() if k in defaults and k not in paper and v != defaults[k]}
    assert not differ, f"{name}: defaults differ from utils.config.Config (notebook, Config): {differ}"


def test_all_notebooks_share_one_setup_cell():
    setups = {name: code_cells(read(name))[1].source for name in NOTEBOOKS}
    assert len(set(setups.values())) == 1, "the setup cells (second code cell) have drifted apart"
    assert "Config.from_params(globals())" in setups[NOTEBOOKS[0]]


def test_run_py_lists_profiles_and_rejects_unknown_parameters():
    listed = subprocess.run([sys.executable, "run.py", "--list"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert listed.returncode == 0 and {"paper", "smoke"} <= {line.split()[0] for line in listed.stdout.splitlines()}
    bad = subprocess.run([sys.executable, "run.py", "--profile", "smoke", "-p", "epoch", "3"], cwd=REPO_ROOT,
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown parameter(s) ['epoch']" in bad.stderr + bad.stdout


# --------------------------------------------------------------------------------------------
# Slow: the whole pipeline on the smoke profile, then nbval on what it produced
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke_run(cifar_dir):
    """`python run.py --profile smoke` from a fresh run folder; the same data for the kernels nbval starts."""
    env = {**os.environ, "CIFAR10_DIR": str(cifar_dir)}
    shutil.rmtree(load_config("smoke").run_path, ignore_errors=True)   # train from scratch, not resume
    started = time.time()
    done = subprocess.run([sys.executable, "run.py", "--profile", "smoke"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S)
    return done, env, started


@pytest.mark.notebooks
def test_smoke_run_writes_figures_tables_submission_and_learns(smoke_run, cifar_dir):
    done, _, started = smoke_run
    assert done.returncode == 0, f"run.py failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    cfg = load_config("smoke")
    for name in FIGURES:
        path = cfg.figures_path / name
        assert path.is_file() and path.stat().st_mtime >= started, f"{path} was not written by this run"
        with Image.open(path) as image:
            image.verify()
            assert image.format == "PNG" and min(image.size) > 200
    for stem in TABLES:
        table = pd.read_csv(cfg.figures_path / f"{stem}.csv")
        assert len(table) >= 7 and (cfg.figures_path / f"{stem}.md").read_text().startswith("|")
    submission = validate_submission(cfg.submission_file, cifar_dir / "cifar_test_nolabel.pkl")
    assert len(submission) == 10_000

    executed = {name: nbformat.read(REPO_ROOT / "runs" / "smoke" / name, as_version=4) for name in NOTEBOOKS}
    text = "".join(out.get("text", "") for cell in code_cells(executed["04_analysis.ipynb"])
                   for out in cell.get("outputs", []))
    found = TEST_ACCURACY.search(text)
    assert found, "04_analysis printed no test accuracy"
    assert float(found.group(1)) > 0.15, f"smoke test accuracy {found.group(1)}: the model did not learn"


@pytest.mark.notebooks
def test_executed_smoke_notebooks_pass_nbval(smoke_run):
    done, env, _ = smoke_run
    assert done.returncode == 0, "run.py failed; see the previous test"
    executed = [str(REPO_ROOT / "runs" / "smoke" / name) for name in NOTEBOOKS]
    nbval = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                            "--nbval-current-env", *executed], cwd=REPO_ROOT, env=env, capture_output=True,
                           text=True, timeout=SMOKE_TIMEOUT_S)
    assert nbval.returncode == 0, f"nbval failed:\n{nbval.stdout[-6000:]}\n{nbval.stderr[-2000:]}"
