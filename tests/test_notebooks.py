"""The five notebooks and run.py.

Fast: each notebook is committed clean (no outputs), its first code cell is tagged `parameters`, declares only
Config fields (plus REPO_URL) with Config's defaults and none that a profile sets; all share one setup cell, which
refuses the placeholder REPO_URL and clones / updates the repository; every notebook ends with what it produced.
Slow (`-m notebooks`, about 8 minutes on 2 CPU cores): `python run.py --profile smoke` end to end on real CIFAR-10
into temporary folders, its figures, tables, printed values and submission, then nbval on the executed copies
(`--nbval-lax`: every cell must run; cells marked `# NBVAL_CHECK_OUTPUT` must print the same again); and the
`leaderboard` profile (val_fraction 0) at tiny scale through all five notebooks.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from PIL import Image

import run as runner
from utils.config import REPO_ROOT, Config, available_profiles, read_profile
from utils.corruptions import CORRUPTIONS
from utils.submission import validate_submission

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = runner.NOTEBOOKS
NOT_CONFIG = {"REPO_URL"}            # the only parameter that is not a Config field
REQUIRED = {"profile", "data_dir", "run_dir", "device", "seed", "REPO_URL"}
FIGURES = ["samples.png", "class_counts.png", "augmentation.png", "lr_schedule.png", "training_curves.png",
           "confusion_matrix.png", "misclassified.png", "robustness.png"]
TABLES = ["param_table", "per_class_metrics", "robustness"]
TEST_ACCURACY = re.compile(r"Test accuracy \(labeled CIFAR-10 test_batch[^)]*\): ([0-9.]+)")
MEAN_CORRUPTION = re.compile(r"Mean accuracy over (\d+) corruption x severity sets: ([0-9.]+)")
CLEAN_ON_SUBSET = re.compile(r"Clean accuracy on these [0-9,]+ test images: ([0-9.]+)")
EPOCH_LINE = re.compile(r"^epoch +(\d+)  train loss [0-9.]+ acc [0-9.]+  ", re.M)
SMOKE_TIMEOUT_S = 30 * 60            # generous: the budget is ~8 min, but a shared CPU can be slower
SMOKE_MIN_TEST_ACC = 0.40            # the smoke run is deterministic on this CPU (README: measured value)


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


def test_no_profile_sets_a_field_a_notebook_declares():
    """A notebook's parameters cell overrides its profile, so a field both set would silently lose the profile's."""
    declared = set().union(*(parameters_of(read(name)) for name in NOTEBOOKS)) - {"profile"}
    clashes = {p: sorted(declared & set(read_profile(p))) for p in available_profiles()}
    assert not any(clashes.values()), f"profiles set fields the notebooks declare: {clashes}"


def test_all_notebooks_share_one_setup_cell():
    setups = {name: code_cells(read(name))[1].source for name in NOTEBOOKS}
    assert len(set(setups.values())) == 1, "the setup cells (second code cell) have drifted apart"
    assert "setup(globals())" in setups[NOTEBOOKS[0]]
    lines = [line for line in setups[NOTEBOOKS[0]].splitlines() if line.strip() and not line.startswith("#")]
    assert len(lines) <= 18, f"the setup cell has grown to {len(lines)} lines; move logic into utils.notebook"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_notebook_ends_saying_what_it_produced(name):
    last = read(name).cells[-1]
    assert last.cell_type == "markdown" and last.source.startswith("## What this produced")


def test_training_notebook_shows_augmentation_and_schedule_before_training_and_curves_after():
    sources = [c.source for c in code_cells(read("03_train.ipynb"))]
    order = [next(i for i, s in enumerate(sources) if call in s)
             for call in ("plots.augmentation_grid(", "plots.lr_schedule(", "fit(cfg", "plots.training_curves(")]
    assert order == sorted(order), order


def run_setup_cell(tmp_path: Path, repo_url: str, **params) -> dict:
    """Execute the notebooks' setup cell as Colab would, from a folder outside any checkout."""
    workdir = tmp_path / "content"
    workdir.mkdir(exist_ok=True)
    namespace = {"profile": "smoke", "data_dir": None, "run_dir": str(tmp_path / "ckpt"), "device": "cpu",
                 "seed": 0, "figures_dir": str(tmp_path / "fig"), "submission_path": str(tmp_path / "s.csv"),
                 "REPO_URL": repo_url, **params}
    source = code_cells(read(NOTEBOOKS[0]))[1].source
    cwd, path = os.getcwd(), list(sys.path)
    os.chdir(workdir)
    # As on Colab: this checkout is not on sys.path (its modules stay imported, so the cell's import still works).
    sys.path[:] = [p for p in path if not (Path(p or cwd) / "utils" / "notebook.py").is_file()]
    try:
        exec(compile(source, "setup-cell", "exec"), namespace)
    finally:
        os.chdir(cwd)
        sys.path[:] = path
    return namespace


def test_setup_cell_refuses_the_placeholder_repo_url_naming_it(tmp_path, monkeypatch):
    monkeypatch.delenv("REPO_URL", raising=False)
    with pytest.raises(RuntimeError, match=r"Set REPO_URL in the first cell \(or the REPO_URL environment"):
        run_setup_cell(tmp_path, "https://github.com/YOUR-USER/YOUR-REPO.git")
    assert not (tmp_path / "content" / "YOUR-REPO").exists()


def git(*args: str, cwd: Path | None = None) -> None:
    identity = ["-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run(["git", *identity, *args], cwd=cwd, check=True, capture_output=True)


def test_setup_cell_clones_the_repository_then_updates_the_clone(tmp_path, monkeypatch):
    """Colab's first run clones REPO_URL next to the notebook; a later run pulls (fast-forward), never re-clones.
    The repository here is a stand-in holding utils/notebook.py (the file the cell looks for); the package the
    cell then imports is this checkout's, already loaded."""
    monkeypatch.delenv("REPO_URL", raising=False)
    monkeypatch.setenv("CIFAR10_PLATFORM", "local")
    work, origin = tmp_path / "work", tmp_path / "origin.git"
    (work / "utils").mkdir(parents=True)
    (work / "utils" / "notebook.py").write_text("# stand-in\n")
    git("init", "-q", str(work))
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "first", cwd=work)
    git("clone", "-q", "--bare", str(work), str(origin))
    namespace = run_setup_cell(tmp_path, str(origin))
    clone = tmp_path / "content" / "origin"
    assert (clone / "utils" / "notebook.py").is_file() and namespace["REPO"] == clone
    assert namespace["cfg"].profile == "smoke" and str(namespace["DEVICE"]) == "cpu"
    (work / "NEW_FILE").write_text("x")
    git("add", "NEW_FILE", cwd=work)
    git("commit", "-q", "-m", "upstream change", cwd=work)
    git("push", "-q", str(origin), "HEAD", cwd=work)
    run_setup_cell(tmp_path, str(origin))
    assert (clone / "NEW_FILE").is_file()


def test_run_py_lists_profiles_and_rejects_unknown_parameters():
    listed = subprocess.run([sys.executable, "run.py", "--list"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert listed.returncode == 0 and {"paper", "smoke"} <= {line.split()[0] for line in listed.stdout.splitlines()}
    bad = subprocess.run([sys.executable, "run.py", "--profile", "smoke", "-p", "epoch", "3"], cwd=REPO_ROOT,
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown parameter(s) ['epoch']" in bad.stderr + bad.stdout


# --------------------------------------------------------------------------------------------
# Slow: the whole pipeline on the smoke profile, then nbval on what it produced
# --------------------------------------------------------------------------------------------
def run_profile(profile: str, folder: Path, cifar_dir: Path, *overrides: str) -> tuple[subprocess.CompletedProcess,
                                                                                          dict[str, Path]]:
    """`python run.py --profile PROFILE` with every output in `folder` (the committed figures stay untouched)."""
    out = {"executed": folder / "executed", "run_dir": folder / "checkpoints", "figures_dir": folder / "figures",
           "submission_path": folder / "submission.csv"}
    args = [a for key in ("run_dir", "figures_dir", "submission_path") for a in ("-p", key, str(out[key]))]
    env = {**os.environ, "CIFAR10_DIR": str(cifar_dir)}
    done = subprocess.run([sys.executable, "run.py", "--profile", profile, "--out", str(out["executed"]), *args,
                           *overrides], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=SMOKE_TIMEOUT_S)
    return done, out


def outputs_text(executed: Path, name: str) -> str:
    nb = nbformat.read(executed / name, as_version=4)
    return "".join(out.get("text", "") for cell in code_cells(nb) for out in cell.get("outputs", []))


@pytest.fixture(scope="module")
def smoke_run(cifar_dir, tmp_path_factory):
    """`python run.py --profile smoke` into temporary folders; the same data for the kernels nbval starts."""
    done, out = run_profile("smoke", tmp_path_factory.mktemp("smoke"), cifar_dir)
    assert done.returncode == 0, f"run.py failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done, out


@pytest.mark.notebooks
def test_smoke_run_writes_figures_tables_submission_and_learns(smoke_run, cifar_dir):
    _, out = smoke_run
    for name in FIGURES:
        path = out["figures_dir"] / name
        assert path.is_file(), f"{path} was not written by this run"
        with Image.open(path) as image:
            image.verify()
            assert image.format == "PNG" and min(image.size) > 200
    for stem in TABLES:
        table = pd.read_csv(out["figures_dir"] / f"{stem}.csv")
        assert len(table) >= 7 and (out["figures_dir"] / f"{stem}.md").read_text().startswith("|")
    submission = validate_submission(out["submission_path"], cifar_dir / "cifar_test_nolabel.pkl")
    assert len(submission) == 10_000

    found = TEST_ACCURACY.search(outputs_text(out["executed"], "04_analysis.ipynb"))
    assert found, "04_analysis printed no test accuracy"
    assert float(found.group(1)) >= SMOKE_MIN_TEST_ACC, f"smoke test accuracy {found.group(1)}"


@pytest.mark.notebooks
def test_smoke_run_prints_the_values_it_should(smoke_run):
    """Values, not re-runs: the smoke subset is 450 train / 50 val images per class of 5,000 / 1,000."""
    _, out = smoke_run
    counts = outputs_text(out["executed"], "01_data.ipynb")
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    for name in classes:
        assert re.search(rf"^{name} +5000 +1000 +450 +50$", counts, re.M), f"class counts of {name}:\n{counts}"
    assert re.search(r"^total +50000 +10000 +4500 +500$", counts, re.M)
    assert "images (50000, 32, 32, 3) uint8" in counts and "images (10000, 32, 32, 3) uint8" in counts
    assert "Trainable parameters: 4,997,722" in outputs_text(out["executed"], "02_model.ipynb")
    training = outputs_text(out["executed"], "03_train.ipynb")
    assert [int(e) for e in EPOCH_LINE.findall(training)] == list(range(1, 9)), training[-2000:]
    assert "submission.csv: 10,000 rows, columns ID,Labels" in outputs_text(out["executed"], "05_kaggle_submit.ipynb")


@pytest.mark.notebooks
def test_batch_runs_save_epoch_lines_not_frozen_progress_widgets(smoke_run):
    _, out = smoke_run
    nb = nbformat.read(out["executed"] / "03_train.ipynb", as_version=4)
    widgets = [o for c in code_cells(nb) for o in c.get("outputs", [])
               if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert not widgets, "03_train saved progress-bar widgets: they show as frozen bars where graders read it"


@pytest.mark.notebooks
def test_smoke_run_reports_robustness_next_to_clean_accuracy(smoke_run):
    _, out = smoke_run
    table = pd.read_csv(out["figures_dir"] / "robustness.csv")
    assert list(table.columns[:3]) == ["corruption", "severity", "accuracy"]
    assert (table["corruption"] == "clean").sum() == 1 and table.iloc[0]["severity"] == 0
    corrupted = table[table["corruption"] != "clean"]
    per_type = corrupted.groupby("corruption")["severity"].nunique()
    assert len(per_type) >= 8 and (per_type >= 3).all() and set(per_type.index) == set(CORRUPTIONS)
    assert (table["images"] == 500).all()                       # the smoke profile's corruption_images
    text = outputs_text(out["executed"], "04_analysis.ipynb")
    sets, mean = MEAN_CORRUPTION.search(text).groups()
    clean = float(CLEAN_ON_SUBSET.search(text).group(1))
    assert int(sets) == len(corrupted) and float(mean) == pytest.approx(corrupted["accuracy"].mean(), abs=1e-4)
    assert float(mean) < clean and "synthetic proxy" in text


@pytest.mark.notebooks
def test_executed_smoke_notebooks_pass_nbval(smoke_run, cifar_dir):
    _, out = smoke_run
    executed = [str(out["executed"] / name) for name in NOTEBOOKS]
    # The executed copies sit in a temporary folder, outside the checkout: the setup cell finds it on sys.path.
    env = {**os.environ, "CIFAR10_DIR": str(cifar_dir), "PYTHONPATH": str(REPO_ROOT)}
    nbval = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                            "--nbval-current-env", *executed], cwd=REPO_ROOT, env=env, capture_output=True,
                           text=True, timeout=SMOKE_TIMEOUT_S)
    assert nbval.returncode == 0, f"nbval failed:\n{nbval.stdout[-6000:]}\n{nbval.stderr[-2000:]}"


@pytest.mark.notebooks
def test_leaderboard_profile_without_a_validation_split_runs_all_five_notebooks(tmp_path, cifar_dir):
    """The issue's command (`-p subset_per_class 20 -p epochs 1`), with a small test and corruption set for time."""
    started = time.perf_counter()
    done, out = run_profile("leaderboard", tmp_path, cifar_dir, "-p", "subset_per_class", "20", "-p", "epochs", "1",
                            "-p", "val_fraction", "0", "-p", "test_limit", "300", "-p", "corruption_images", "30")
    assert done.returncode == 0, f"run.py failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "early stopping (patience" not in done.stdout   # leaderboard sets patience 0: nothing to report
    assert "val_fraction 0: no validation split" in done.stdout
    training = outputs_text(out["executed"], "03_train.ipynb")
    assert "200 train / 0 val images" in training and "no validation split" in training
    analysis = outputs_text(out["executed"], "04_analysis.ipynb")
    assert "No validation split (val_fraction 0)" in analysis and TEST_ACCURACY.search(analysis)
    assert "TTA flip_shift" in analysis
    assert "no validation split" in outputs_text(out["executed"], "05_kaggle_submit.ipynb")
    assert (out["figures_dir"] / "training_curves.png").is_file() and (out["figures_dir"] / "robustness.csv").is_file()
    validate_submission(out["submission_path"], cifar_dir / "cifar_test_nolabel.pkl")
    assert time.perf_counter() - started < SMOKE_TIMEOUT_S
