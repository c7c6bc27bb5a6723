"""utils.environment: each platform (Colab, Kaggle, local) simulated in temporary folders, every decision asserted.

Colab is a fake `google.colab` module in sys.modules whose `drive.mount` records its calls; Kaggle is its
environment variable with temporary folders standing for /kaggle/input and /kaggle/working. Tests run as
root, so a read-only folder or a full disk is simulated by patching the probe or mkdir to raise.
"""
from __future__ import annotations

import errno
import pickle
import subprocess
import sys
import types
from pathlib import Path

import pytest
from helpers import top_level_imports

from utils import environment as env

REPO_ROOT = Path(__file__).resolve().parents[1]
MODULE_FILE = REPO_ROOT / "utils" / "environment.py"
REAL_COLAB_IMPORTABLE = env._colab_importable
CLEARED_ENV = ("CIFAR10_PLATFORM", "CIFAR10_DIR", "COLAB_RELEASE_TAG", "COLAB_GPU", "KAGGLE_KERNEL_RUN_TYPE",
               "KAGGLE_URL_BASE")


@pytest.fixture(autouse=True)
def sandbox(monkeypatch, tmp_path):
    """Every platform path points into tmp_path; no platform variable, no google.colab; cwd is tmp_path/cwd."""
    for name in CLEARED_ENV:
        monkeypatch.delenv(name, raising=False)
    for name in ("google.colab", "google.colab.drive"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    drive = tmp_path / "content" / "drive"
    monkeypatch.setattr(env, "COLAB_DRIVE", drive)
    monkeypatch.setattr(env, "COLAB_MYDRIVE", drive / "MyDrive")
    monkeypatch.setattr(env, "KAGGLE_INPUT", tmp_path / "kaggle" / "input")
    monkeypatch.setattr(env, "KAGGLE_WORKING", tmp_path / "kaggle" / "working")
    monkeypatch.setattr(env, "_colab_importable", lambda: False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return tmp_path


@pytest.fixture
def colab(monkeypatch):
    """A fake google.colab whose drive.mount records its calls and mounts like the real one."""
    calls: list[str] = []
    mounted: set[Path] = set()

    def mount(mountpoint: str, **kwargs) -> None:
        calls.append(mountpoint)
        (Path(mountpoint) / "MyDrive").mkdir(parents=True, exist_ok=True)
        mounted.add(Path(mountpoint))

    drive = types.ModuleType("google.colab.drive")
    drive.mount = mount
    colab_module = types.ModuleType("google.colab")
    colab_module.drive = drive
    google = sys.modules.get("google") or types.ModuleType("google")
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab_module)
    monkeypatch.setitem(sys.modules, "google.colab.drive", drive)
    monkeypatch.setattr(env, "is_mount", lambda path: Path(path) in mounted)
    return calls


@pytest.fixture
def kaggle(monkeypatch, sandbox):
    """Kaggle's environment variable; the input folder exists (empty), the working folder is writable."""
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    env.KAGGLE_INPUT.mkdir(parents=True)
    env.KAGGLE_WORKING.mkdir(parents=True)
    return env.KAGGLE_INPUT


def lay_out_batches(folder: Path) -> Path:
    (folder / env.BATCHES_SUBDIR).mkdir(parents=True)
    return folder


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


# --------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("environ, modules, expected", [
    ({}, {}, "local"),
    ({}, {"google.colab": object()}, "colab"),
    ({"COLAB_RELEASE_TAG": "release-colab_20250101"}, {}, "colab"),
    ({"COLAB_GPU": "1"}, {}, "colab"),
    ({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, {}, "kaggle"),
    ({"KAGGLE_URL_BASE": "https://www.kaggle.com"}, {}, "kaggle"),
    ({"CIFAR10_PLATFORM": "kaggle"}, {"google.colab": object()}, "kaggle"),
    ({"CIFAR10_PLATFORM": " Local ", "COLAB_GPU": "1"}, {}, "local"),
    ({"CIFAR10_PLATFORM": "colab"}, {}, "colab"),
    ({"COLAB_GPU": ""}, {}, "local"),
])
def test_detect(environ, modules, expected):
    assert env.detect(environ, modules) == expected


def test_detect_defaults_read_os_environ_and_sys_modules(monkeypatch, colab):
    assert env.detect() == "colab"
    monkeypatch.setenv("CIFAR10_PLATFORM", "local")
    assert env.detect() == "local"


def test_detect_counts_an_importable_google_colab_only_for_the_real_modules(monkeypatch):
    monkeypatch.setattr(env, "_colab_importable", lambda: True)
    assert env.detect() == "colab"
    assert env.detect({}, {}) == "local"


def test_detect_refuses_an_unknown_override():
    with pytest.raises(ValueError, match="CIFAR10_PLATFORM.*colab, kaggle, local"):
        env.detect({"CIFAR10_PLATFORM": "azure"}, {})


def test_real_colab_probe():
    assert REAL_COLAB_IMPORTABLE() is False   # google.colab is not installed here (the sandbox patches it out)


# --------------------------------------------------------------------------------------------
# Local: the defaults are unchanged
# --------------------------------------------------------------------------------------------
def test_local_outputs_stay_in_the_repository():
    assert env.detect() == "local"
    assert env.REPO_ROOT == REPO_ROOT
    assert env.output_root() == REPO_ROOT
    assert env.resolve_output("figures") == REPO_ROOT / "figures"
    assert env.resolve_output("runs/paper/checkpoints") == REPO_ROOT / "runs" / "paper" / "checkpoints"
    assert env.is_persistent(REPO_ROOT / "figures") is True
    assert env.persistence_note(REPO_ROOT / "figures") is None
    assert "local" in env.describe() and str(REPO_ROOT) in env.describe() and "kept" in env.describe()


def test_resolve_output_keeps_absolute_and_expands_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert env.resolve_output(tmp_path / "x") == tmp_path / "x"
    assert env.resolve_output("~/runs") == tmp_path / "home" / "runs"
    assert env.resolve_output("runs", platform="kaggle") == env.KAGGLE_WORKING / "runs"


def test_local_ensure_writable_creates_and_probes(tmp_path):
    target = tmp_path / "out" / "deep" / "er"
    assert env.ensure_writable(target, "figures_dir") == target
    assert target.is_dir() and list(target.iterdir()) == []   # the probe file is gone
    assert env.ensure_writable(str(target), "figures_dir") == target  # again: already there


def test_local_data_dirs_default_order(monkeypatch, tmp_path):
    assert env.data_dirs() == [REPO_ROOT / "data", tmp_path / "cwd" / "data"]
    monkeypatch.setenv("CIFAR10_DIR", str(tmp_path / "mine"))
    assert env.data_dirs() == [tmp_path / "mine", REPO_ROOT / "data", tmp_path / "cwd" / "data"]
    monkeypatch.chdir(REPO_ROOT)   # ./data is REPO_ROOT/data: listed once
    assert env.data_dirs() == [tmp_path / "mine", REPO_ROOT / "data"]


def test_explicit_data_dir_is_the_only_candidate(monkeypatch, tmp_path, kaggle):
    monkeypatch.setenv("CIFAR10_DIR", str(tmp_path / "mine"))
    lay_out_batches(kaggle / "whatever")
    assert env.data_dirs(tmp_path / "given") == [tmp_path / "given"]
    assert env.data_dirs("somewhere/data") == [REPO_ROOT / "somewhere" / "data"]


# --------------------------------------------------------------------------------------------
# Colab
# --------------------------------------------------------------------------------------------
def test_colab_outputs_go_to_drive_under_the_repository_name(colab):
    assert env.detect() == "colab"
    root = env.COLAB_MYDRIVE / REPO_ROOT.name
    assert env.output_root() == root
    assert env.resolve_output("runs/paper/checkpoints/") == root / "runs" / "paper" / "checkpoints"
    assert env.resolve_output("submissions/submission.csv") == root / "submissions" / "submission.csv"


def test_colab_finds_the_unlabeled_pickle_uploaded_to_the_shared_drive_folder(colab):
    root = env.COLAB_MYDRIVE / REPO_ROOT.name
    found = env.nolabel_candidates()
    assert found[-2:] == [root / env.NOLABEL_FILE, root / "data" / env.NOLABEL_FILE]
    assert root / env.NOLABEL_FILE not in env.nolabel_candidates(root / "elsewhere.pkl")   # explicit: only it


def test_colab_refuses_drive_while_unmounted_then_mounts_once(colab):
    target = env.resolve_output("runs/paper/checkpoints")
    with pytest.raises(env.OutputError) as info:
        env.ensure_writable(target, "run_dir (checkpoints)")
    message = str(info.value)
    assert str(target) in message and "run_dir (checkpoints)" in message and "not mounted" in message
    assert f"from google.colab import drive; drive.mount('{env.COLAB_DRIVE}')" in message
    assert "setup cell" in message
    assert not target.exists() and not env.COLAB_DRIVE.exists()   # nothing written to the VM disk
    assert env.describe().endswith("(Google Drive, not mounted yet)")
    assert "not mounted" in env.persistence_note(target)

    env.mount_drive()
    env.mount_drive()
    assert colab == [str(env.COLAB_DRIVE)]   # once
    assert env.drive_mounted()
    assert env.ensure_writable(target, "run_dir (checkpoints)") == target and target.is_dir()
    assert env.is_persistent(target) and env.persistence_note(target) is None
    assert "colab" in env.describe() and "kept across sessions" in env.describe()


def test_drive_mounted_needs_both_the_folder_and_the_mount_point(monkeypatch):
    assert not env.drive_mounted()
    env.COLAB_MYDRIVE.mkdir(parents=True)
    assert not env.drive_mounted()   # a folder on the VM disk is not Drive
    monkeypatch.setattr(env, "is_mount", lambda path: Path(path) == env.COLAB_DRIVE)
    assert env.drive_mounted()
    env.COLAB_MYDRIVE.rmdir()
    assert not env.drive_mounted()


def test_unmounted_drive_is_refused_on_any_platform_and_by_symlink(tmp_path):
    link = tmp_path / "runs-link"
    env.COLAB_MYDRIVE.mkdir(parents=True)
    link.symlink_to(env.COLAB_MYDRIVE)
    for path in (env.COLAB_MYDRIVE / "x", link / "x"):
        with pytest.raises(env.OutputError, match="not mounted"):
            env.ensure_writable(path, "figures_dir")


def test_mount_drive_does_nothing_off_colab(monkeypatch, colab):
    monkeypatch.setenv("CIFAR10_PLATFORM", "local")
    env.mount_drive()
    monkeypatch.setenv("CIFAR10_PLATFORM", "kaggle")
    env.mount_drive()
    assert colab == []


def test_colab_vm_disk_is_not_persistent(colab, tmp_path):
    vm_path = tmp_path / "content" / "main" / "runs"
    assert not env.is_persistent(vm_path)
    note = env.persistence_note(vm_path)
    assert str(vm_path) in note and "lost" in note and str(env.COLAB_MYDRIVE) in note
    assert env.is_persistent(env.COLAB_MYDRIVE / "x")


# --------------------------------------------------------------------------------------------
# Kaggle
# --------------------------------------------------------------------------------------------
def test_kaggle_outputs_go_to_working(kaggle):
    assert env.detect() == "kaggle"
    assert env.output_root() == env.KAGGLE_WORKING
    assert env.resolve_output("figures") == env.KAGGLE_WORKING / "figures"
    assert env.kaggle_submission() == env.KAGGLE_WORKING / "submission.csv"
    target = env.ensure_writable(env.resolve_output("runs/paper/checkpoints"), "run_dir")
    assert target.is_dir() and env.is_persistent(target)
    note = env.persistence_note(target)
    assert "Save Version" in note and str(env.KAGGLE_WORKING) in note
    assert "kaggle" in env.describe() and "committed" in env.describe()


def test_kaggle_input_is_refused_as_read_only(kaggle, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the read-only input folder must be refused before touching it")

    monkeypatch.setattr(env, "probe_writable", never)
    monkeypatch.setattr(Path, "mkdir", never)
    target = kaggle / "my-dataset" / "runs"
    with pytest.raises(env.OutputError) as info:
        env.ensure_writable(target, "run_dir")
    message = str(info.value)
    assert str(target) in message and "read-only" in message and "run_dir" in message
    assert str(env.KAGGLE_WORKING) in message


def test_kaggle_read_only_folder_reported_by_the_probe(kaggle, monkeypatch, tmp_path):
    def read_only(folder):
        raise PermissionError(errno.EACCES, "Permission denied", str(folder))

    monkeypatch.setattr(env, "probe_writable", read_only)
    target = tmp_path / "elsewhere"
    with pytest.raises(env.OutputError) as info:
        env.ensure_writable(target, "figures_dir")
    assert str(target) in str(info.value) and "permission denied" in str(info.value)
    assert "set figures_dir to a folder you can write to" in str(info.value)
    assert isinstance(info.value.__cause__, PermissionError)


def test_kaggle_read_only_mkdir(kaggle, monkeypatch, tmp_path):
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(env.OutputError, match="read-only.*\n.*figures_dir"):
        env.ensure_writable(tmp_path / "ro", "figures_dir")


def test_kaggle_outside_working_is_not_persistent(kaggle, tmp_path):
    assert not env.is_persistent(tmp_path / "tmp")
    assert "discards" in env.persistence_note(tmp_path / "tmp")


def test_kaggle_data_found_whatever_the_dataset_is_called(kaggle):
    shallow = lay_out_batches(kaggle / "Some Weird Name_v3")
    nested = lay_out_batches(kaggle / "competitions" / "deep-learning-spring-2025-project-1")
    deepest = lay_out_batches(kaggle / "a" / "b" / "c" / "d")          # depth 4: found
    lay_out_batches(kaggle / "a" / "b" / "c" / "d" / "e")              # depth 5: not searched
    (kaggle / "empty-dataset").mkdir()
    found = env.data_dirs()
    assert found[:2] == [REPO_ROOT / "data", Path.cwd() / "data"]
    assert found[2:] == [shallow, nested, deepest]


def test_kaggle_data_at_the_input_root_itself(kaggle):
    lay_out_batches(kaggle)
    assert env.data_dirs()[-1] == kaggle


def test_no_kaggle_input_folder_means_no_kaggle_candidates():
    assert not env.KAGGLE_INPUT.exists()
    assert len(env.data_dirs()) == 2


def test_nolabel_found_in_each_place(monkeypatch, tmp_path, kaggle):
    name = env.NOLABEL_FILE
    mine = tmp_path / "mine"
    monkeypatch.setenv("CIFAR10_DIR", str(mine))
    in_kaggle = touch(kaggle / "any-dataset-name" / name)
    deeper = touch(kaggle / "competitions" / "slug" / "x" / name)
    touch(kaggle / "a" / "b" / "c" / "d" / "e" / name)                 # too deep
    found = env.nolabel_candidates(data_dir=tmp_path / "data")
    assert found == [mine / name, tmp_path / "data" / name, REPO_ROOT / "data" / name, in_kaggle, deeper]
    assert env.nolabel_candidates(data_dir="data")[1] == REPO_ROOT / "data" / name   # relative: repo
    assert env.nolabel_candidates(tmp_path / "given.pkl") == [tmp_path / "given.pkl"]
    assert env.nolabel_candidates(data_dir=tmp_path, filename="other.pkl")[1] == tmp_path / "other.pkl"
    monkeypatch.delenv("CIFAR10_DIR")
    assert env.nolabel_candidates() == [REPO_ROOT / "data" / name, in_kaggle, deeper]


def test_checkpoint_found_in_an_attached_kaggle_output(kaggle, tmp_path):
    run_path = env.KAGGLE_WORKING / "runs" / "paper" / "checkpoints"
    other = touch(kaggle / "cifar10-train-notebook" / "runs" / "fast" / "checkpoints" / "best.pt")
    mine = touch(kaggle / "cifar10-train-notebook" / "runs" / "paper" / "checkpoints" / "best.pt")
    touch(kaggle / "a" / "b" / "c" / "d" / "e" / "f" / "g" / "best.pt")   # depth 7: not searched
    found = env.checkpoint_candidates(run_path, profile="paper")
    assert found == [run_path / "best.pt", mine, other]
    assert env.checkpoint_candidates(run_path, profile="fast")[1:] == [other, mine]
    assert env.checkpoint_candidates(run_path, name="last.pt") == [run_path / "last.pt"]


def test_checkpoint_search_only_on_kaggle(kaggle, monkeypatch, tmp_path):
    touch(kaggle / "nb" / "best.pt")
    monkeypatch.setenv("CIFAR10_PLATFORM", "local")
    assert env.checkpoint_candidates(tmp_path / "run") == [tmp_path / "run" / "best.pt"]
    assert env.checkpoint_candidates(tmp_path / "run", platform="kaggle")[-1] == kaggle / "nb" / "best.pt"


def test_walk_dirs_depth_and_order(tmp_path):
    for rel in ("b/x", "a/y/z", ".hidden/q"):
        (tmp_path / "w" / rel).mkdir(parents=True)
    root = tmp_path / "w"
    rels = [p.relative_to(root).as_posix() for p in env.walk_dirs(root, 1)]
    assert rels == [".", "a", "b"]
    assert [p.relative_to(root).as_posix() for p in env.walk_dirs(root, 5)] == [".", "a", "b", "a/y", "b/x", "a/y/z"]
    assert list(env.walk_dirs(tmp_path / "missing", 3)) == []


# --------------------------------------------------------------------------------------------
# OSErrors become OutputError naming the path
# --------------------------------------------------------------------------------------------
def test_full_disk_becomes_output_error(monkeypatch, tmp_path):
    def full(folder):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(env, "probe_writable", full)
    target = tmp_path / "runs"
    with pytest.raises(env.OutputError) as info:
        env.ensure_writable(target, "run_dir (checkpoints)")
    error = info.value
    assert isinstance(error, OSError)
    assert error.path == target and error.what == "run_dir (checkpoints)"
    assert str(target) in str(error) and "no space left" in str(error) and "free some space" in str(error)
    assert "run_dir (checkpoints)" in error.fix


def test_parent_is_a_file_becomes_output_error(tmp_path):
    blocker = touch(tmp_path / "runs")
    target = blocker / "paper" / "checkpoints"
    with pytest.raises(env.OutputError) as info:
        env.ensure_writable(target, "run_dir")
    message = str(info.value)
    assert str(target) in message and f"{blocker} is a file, not a folder" in message and "run_dir" in message
    assert isinstance(info.value.__cause__, (NotADirectoryError, FileExistsError))


def test_path_itself_a_file_becomes_output_error(tmp_path):
    blocker = touch(tmp_path / "figures")
    with pytest.raises(env.OutputError, match="is a file, not a folder"):
        env.ensure_writable(blocker, "figures_dir")


def test_output_error_pickles_with_its_fields(tmp_path):
    error = env.OutputError(tmp_path, "run_dir", "because", "do this")
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) == f"Cannot write run_dir to {tmp_path}: because.\nFix: do this"
    assert (copy.path, copy.what, copy.reason, copy.fix) == (tmp_path, "run_dir", "because", "do this")


# --------------------------------------------------------------------------------------------
# Requirements
# --------------------------------------------------------------------------------------------
REQUIREMENTS = """# Lower bounds only.
torch>=2.3
Pillow>=10.0            # an image library
scikit-learn>=1.3

pyyaml>=6.0
seaborn>=0.13
tqdm[notebook] >= 4.66
torchinfo>=1.8
timm
"""
INSTALLED = {"torch": "2.1.0+cu121", "pillow": "11.0.0", "scikit_learn": "1.5.2", "PyYAML": "6.0.1",
             "tqdm": "4.67.1", "timm": "1.0"}


@pytest.fixture
def requirements_file(tmp_path) -> Path:
    path = tmp_path / "requirements.txt"
    path.write_text(REQUIREMENTS)
    return path


def test_requirement_status(requirements_file):
    status = {r.name: (r.lower, r.installed, r.status) for r in env.requirement_status(requirements_file, INSTALLED)}
    assert status == {
        "torch": ("2.3", "2.1.0+cu121", "older"),
        "Pillow": ("10.0", "11.0.0", "ok"),
        "scikit-learn": ("1.3", "1.5.2", "ok"),
        "pyyaml": ("6.0", "6.0.1", "ok"),
        "seaborn": ("0.13", None, "missing"),
        "tqdm": ("4.66", "4.67.1", "ok"),
        "torchinfo": ("1.8", None, "missing"),
        "timm": (None, "1.0", "ok"),
    }


def test_install_missing_installs_only_missing_and_never_upgrades(requirements_file):
    calls = []

    def runner(command, **kwargs):
        calls.append((command, kwargs))
        return subprocess.CompletedProcess(command, 0)

    lines = env.install_missing(requirements_file, run=runner, installed=INSTALLED)
    assert calls == [([sys.executable, "-m", "pip", "install", "-q", "seaborn>=0.13", "torchinfo>=1.8"],
                      {"check": True})]
    flat = " ".join(calls[0][0])
    assert "torch" not in flat.replace("torchinfo", "") and "-U" not in flat and "--upgrade" not in flat
    assert lines[0] == "installed: seaborn>=0.13, torchinfo>=1.8"
    assert len(lines) == 2 and "torch 2.1.0+cu121" in lines[1] and "2.3" in lines[1] and "not upgraded" in lines[1]


def test_install_missing_runs_nothing_when_all_present(requirements_file):
    installed = {**INSTALLED, "torch": "2.5.1", "seaborn": "0.13.2", "torchinfo": "1.8.0"}
    lines = env.install_missing(requirements_file, run=lambda *a, **k: pytest.fail("pip must not run"),
                                installed=installed)
    assert lines == ["nothing to install: all 8 requirements are present"]


def test_install_missing_failure_says_what_to_do(requirements_file):
    def failing(command, **kwargs):
        raise subprocess.CalledProcessError(1, command)

    with pytest.raises(RuntimeError, match="Internet"):
        env.install_missing(requirements_file, run=failing, installed=INSTALLED)


def test_requirement_status_reads_installed_metadata(tmp_path):
    path = tmp_path / "r.txt"
    path.write_text("PyTest>=1.0\nPY_YAML>=1.0\nsurely-not-a-package-xyz>=1\n")
    status = env.requirement_status(path)
    assert [r.status for r in status] == ["ok", "missing", "missing"]   # PY_YAML is not PyYAML
    path.write_text("PyYAML>=1.0\npyyaml>=99\n")
    assert [r.status for r in env.requirement_status(path)] == ["ok", "older"]


def test_the_projects_requirements_file_parses():
    names = [r.name for r in env.requirement_status(REPO_ROOT / "requirements.txt", installed={})]
    assert "torch" in names and "Pillow" in names and all(r for r in names)


@pytest.mark.parametrize("line", ["numpy==1.26", "numpy<2", "-r other.txt", "numpy>=1.24,<2"])
def test_requirements_other_than_lower_bounds_are_refused(tmp_path, line):
    path = tmp_path / "r.txt"
    path.write_text(f"torch>=2.3\n{line}\n")
    with pytest.raises(ValueError, match=r"r\.txt:2:.*lower bound"):
        env.requirement_status(path, {})


@pytest.mark.parametrize("installed, lower, expected", [
    ("2.3.0+cu121", "2.3", True), ("2.2.2", "2.3", False), ("10.0", "10.0.0", True), ("0.13.2", "0.13", True),
    ("1.10", "1.9", True), ("2.4.0rc1", "2.3", True),
])
@pytest.mark.parametrize("with_packaging", [True, False])
def test_version_at_least(monkeypatch, installed, lower, expected, with_packaging):
    if not with_packaging:
        monkeypatch.setattr(env, "_Version", None)
    assert env.version_at_least(installed, lower) is expected


# --------------------------------------------------------------------------------------------
# Small helpers and the module's place in the package
# --------------------------------------------------------------------------------------------
def test_only_standard_library_imports():
    imported = top_level_imports(MODULE_FILE)
    foreign = imported - set(sys.stdlib_module_names) - {"packaging", "__future__", "google"}
    assert not foreign, f"non-standard imports: {foreign}"


def test_importing_it_loads_neither_torch_nor_other_utils():
    code = ("import sys, utils.environment; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('utils.') or m == 'yaml'))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "['utils.environment']"


def test_style():
    lines = MODULE_FILE.read_text().splitlines()
    assert "from __future__ import annotations" in lines
    assert [i for i, line in enumerate(lines, 1) if len(line) > 120] == []
    assert [i for i, line in enumerate(lines, 1) if line.rstrip().endswith("\\")] == []


# --------------------------------------------------------------------------------------------
# utils.notebook.setup: what every notebook does after its setup cell found the code
# --------------------------------------------------------------------------------------------
@pytest.fixture
def installs(monkeypatch):
    calls = []
    monkeypatch.setattr(env, "install_missing", lambda path: calls.append(Path(path)) or ["nothing to install"])
    return calls


def test_notebook_setup_on_colab_installs_what_is_missing_mounts_drive_and_writes_there(colab, installs):
    from utils.notebook import setup
    cfg, device = setup({"profile": "smoke", "device": "cpu", "epochs": 3})
    assert installs == [REPO_ROOT / "requirements.txt"] and colab == [str(env.COLAB_DRIVE)]
    root = env.COLAB_MYDRIVE / REPO_ROOT.name
    assert cfg.run_path == root / "runs" / "smoke" / "checkpoints" and cfg.run_path.is_dir()
    assert cfg.figures_path == root / "figures" and cfg.submission_file.parent.is_dir()
    assert (cfg.profile, cfg.epochs, str(device)) == ("smoke", 3, "cpu")


def test_notebook_setup_on_kaggle_writes_to_working(kaggle, installs):
    from utils.notebook import setup
    cfg, _ = setup({"profile": "smoke", "device": "cpu"})
    assert installs and cfg.run_path == env.KAGGLE_WORKING / "runs" / "smoke" / "checkpoints"


def test_notebook_setup_locally_installs_nothing_and_refuses_bad_values_before_any_work(installs, tmp_path):
    from utils.config import ConfigError
    from utils.notebook import setup
    with pytest.raises(ConfigError, match=r"epochs = 0: expected an integer >= 1"):
        setup({"profile": "smoke", "epochs": 0, "run_dir": str(tmp_path / "never")})
    assert not installs and not (tmp_path / "never").exists()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(env.OutputError, match="is a file, not a folder"):
        setup({"profile": "smoke", "device": "cpu", "run_dir": str(blocker / "ckpt")})
