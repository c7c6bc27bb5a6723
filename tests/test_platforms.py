"""utils.runtime.platforms: which platform, where outputs go, what is refused and what survives; every platform's facts
from its sheet (tests/platform_facts.py), played in temporary folders (tests/platform_sandbox.py).

Colab is its sheet plus a fake `google.colab` whose `drive.mount` records its calls; Kaggle is its sheet (Kaggle's
variables AND Colab's, google.colab importable: the image is Colab's) with temporary folders standing for
/kaggle/input and /kaggle/working. Tests run as root, so a read-only folder or a full disk is simulated by
patching the probe or mkdir to raise. Also here: utils.notebook.setup on each platform, and the package's import
graph (one way, platforms at the bottom, no module left importing utils.environment).
"""
from __future__ import annotations

import ast
import errno
import os
import pickle
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
from helpers import top_level_imports
from platform_facts import COLAB, COLAB_CHILD, COLAB_SHELL, KAGGLE, LOCAL, SHEETS
from platform_sandbox import enter, fake_google_colab, isolate, make_shell, output_root_of, real

from utils.runtime import install, platforms

REPO_ROOT = Path(__file__).resolve().parents[1]
UTILS = REPO_ROOT / "utils"
MODULE_FILE = UTILS / "runtime" / "platforms.py"
REAL_COLAB_IMPORTABLE = platforms._colab_importable
REAL_CURRENT_SHELL = platforms.current_shell
KAGGLE_SHEETS = {name: sheet for name, sheet in SHEETS.items() if sheet.name == "kaggle"}
COLAB_SHEETS = {name: sheet for name, sheet in SHEETS.items() if sheet.name == "colab"}
# The platform line's first two fields, as the platform twins read them (.ci/twins/twin.py, PLATFORM_LINE).
PLATFORM_LINE = re.compile(r"platform: (\w+) \| outputs: (\S+)")
PATCHED_CONSTANTS = {"REPO_ROOT", "COLAB_DRIVE", "COLAB_MYDRIVE", "KAGGLE_INPUT", "KAGGLE_WORKING",
                     "KAGGLEHUB_CACHE"}


@pytest.fixture(autouse=True)
def sandbox(monkeypatch, tmp_path):
    return isolate(monkeypatch, tmp_path)


@pytest.fixture
def colab(monkeypatch):
    """Colab's sheet (its kernel, its variables) with a fake google.colab; returns drive.mount's calls."""
    calls = fake_google_colab(monkeypatch)
    enter(monkeypatch, COLAB)
    return calls


@pytest.fixture(params=sorted(KAGGLE_SHEETS))
def kaggle(request, monkeypatch):
    """Each of Kaggle's sheets (both mount layouts, interactive and batch): Kaggle's variables and Colab's, and a
    google.colab whose drive.mount records its calls (Kaggle's image carries the package). Returns the sheet."""
    sheet = KAGGLE_SHEETS[request.param]
    request.node.mounts = fake_google_colab(monkeypatch)
    enter(monkeypatch, sheet)
    return sheet


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


# --------------------------------------------------------------------------------------------
# Detection: every sheet is detected as its platform, whatever else its image carries
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SHEETS))
def test_each_sheet_is_detected_as_its_platform(name):
    sheet = SHEETS[name]
    assert platforms.detect(sheet.environ, set(sheet.modules), make_shell(sheet.shell)) == sheet.name


@pytest.mark.parametrize("name", sorted(KAGGLE_SHEETS))
@pytest.mark.parametrize("shell", [KAGGLE.shell, COLAB_SHELL, None], ids=["ipykernel", "colab-shell", "no-ipython"])
@pytest.mark.parametrize("loaded", [True, False], ids=["colab-loaded", "colab-importable"])
def test_kaggle_is_kaggle_with_every_colab_signal_present(name, shell, loaded, monkeypatch):
    """Kaggle's image is Colab's (COLAB_RELEASE_TAG set, google.colab installed): Kaggle's own variables decide
    first, whatever the shell, whether google.colab was imported or not."""
    sheet = KAGGLE_SHEETS[name]
    assert {"COLAB_RELEASE_TAG", "KAGGLE_KERNEL_RUN_TYPE"} <= set(sheet.environ) and "google.colab" in sheet.modules
    stand_in = make_shell(shell) if shell else None
    found = platforms.detection(sheet.environ, set(sheet.modules), stand_in)
    assert (found.platform, found.signal) == ("kaggle", "KAGGLE_KERNEL_RUN_TYPE is set")
    # the same through this process's own signals
    if loaded:
        fake_google_colab(monkeypatch)
    enter(monkeypatch, sheet)
    monkeypatch.setattr(platforms, "current_shell", lambda: stand_in)
    assert platforms.detect() == "kaggle" and platforms.output_root() == platforms.KAGGLE_WORKING


def test_kaggle_url_base_alone_is_kaggle_too():
    environ = {k: v for k, v in KAGGLE.environ.items() if k != "KAGGLE_KERNEL_RUN_TYPE"}
    found = platforms.detection(environ, set(KAGGLE.modules), make_shell(KAGGLE.shell))
    assert (found.platform, found.signal) == ("kaggle", "KAGGLE_URL_BASE is set")


@pytest.mark.parametrize("name", sorted(COLAB_SHEETS))
@pytest.mark.parametrize("shell", [True, False], ids=["in-its-kernel", "no-ipython"])
def test_colab_kernel_and_its_papermill_child_are_colab(name, shell):
    """Colab's own kernel (its shell is google.colab._shell.Shell) and a papermill child kernel started by
    `!python run.py` (a plain ipykernel shell that inherits Colab's variables), and run.py itself (no IPython)."""
    sheet = COLAB_SHEETS[name]
    found = platforms.detection(sheet.environ, set(sheet.modules), make_shell(sheet.shell) if shell else None)
    assert found.platform == "colab"
    if sheet.colab_kernel and shell:
        assert found.signal == f"the kernel is Colab's, {COLAB_SHELL}"
    else:
        assert found.signal == "COLAB_RELEASE_TAG is set"


def test_colab_kernel_alone_decides_without_any_variable():
    found = platforms.detection({}, set(), make_shell(COLAB_SHELL))
    assert (found.platform, found.signal) == ("colab", f"the kernel is Colab's, {COLAB_SHELL}")


@pytest.mark.parametrize("shell", [LOCAL.shell, None], ids=["local-jupyter", "python"])
def test_local_is_local(shell):
    found = platforms.detection(LOCAL.environ, set(LOCAL.modules), make_shell(shell) if shell else None)
    assert (found.platform, found.signal) == ("local", "no Kaggle or Colab signal")


@pytest.mark.parametrize("environ, modules, expected", [
    ({}, {}, "local"),
    ({}, {"google.colab": object()}, "colab"),
    ({"COLAB_RELEASE_TAG": "release-colab_20250101"}, {}, "colab"),
    ({"COLAB_GPU": "1"}, {}, "colab"),
    ({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, {}, "kaggle"),
    ({"KAGGLE_URL_BASE": "https://www.kaggle.com"}, {}, "kaggle"),
    ({"KAGGLE_URL_BASE": "https://www.kaggle.com", "COLAB_GPU": "1"}, {"google.colab": object()}, "kaggle"),
    ({"CIFAR10_PLATFORM": "kaggle"}, {"google.colab": object()}, "kaggle"),
    ({"CIFAR10_PLATFORM": " Local ", "COLAB_GPU": "1", "KAGGLE_KERNEL_RUN_TYPE": "Batch"}, {}, "local"),
    ({"CIFAR10_PLATFORM": "colab", **KAGGLE.environ}, {}, "colab"),
    ({"COLAB_GPU": ""}, {}, "local"),
    ({"KAGGLE_KERNEL_RUN_TYPE": "", "COLAB_GPU": "1"}, {}, "colab"),
])
def test_detect(environ, modules, expected):
    assert platforms.detect(environ, modules, None) == expected


def test_the_override_names_itself_as_the_signal():
    found = platforms.detection({"CIFAR10_PLATFORM": "Kaggle"}, set(), None)
    assert (found.platform, found.signal) == ("kaggle", "$CIFAR10_PLATFORM=kaggle")


def test_detect_defaults_read_os_environ_sys_modules_and_the_shell(monkeypatch, colab):
    assert platforms.detection().signal == f"the kernel is Colab's, {COLAB_SHELL}"
    monkeypatch.setattr(platforms, "current_shell", lambda: None)
    assert platforms.detection().signal == "COLAB_RELEASE_TAG is set"
    monkeypatch.delenv("COLAB_RELEASE_TAG")
    assert platforms.detection().signal == "google.colab is loaded"
    monkeypatch.setenv("CIFAR10_PLATFORM", "local")
    assert platforms.detect() == "local"


def test_detect_counts_an_importable_google_colab_only_for_the_real_modules(monkeypatch):
    monkeypatch.setattr(platforms, "_colab_importable", lambda: True)
    assert platforms.detection().signal == "google.colab is importable"
    assert platforms.detect({}, {}, None) == "local"


def test_detect_refuses_an_unknown_override():
    with pytest.raises(ValueError, match="CIFAR10_PLATFORM.*colab, kaggle, local"):
        platforms.detect({"CIFAR10_PLATFORM": "azure"}, {}, None)


def test_real_colab_probe():
    assert REAL_COLAB_IMPORTABLE() is False   # google.colab is not installed here (the sandbox patches it out)


def test_is_colab_shell_by_class_or_by_what_str_shows():
    assert platforms.is_colab_shell(make_shell(COLAB_SHELL))
    assert str(make_shell(COLAB_SHELL)).startswith(f"<{COLAB_SHELL} object at")   # what kagglehub looks at

    class Renamed:
        def __str__(self):
            return "<google.colab._shell.Shell object at 0x1>"

    assert platforms.is_colab_shell(Renamed())
    assert not platforms.is_colab_shell(make_shell(KAGGLE.shell))
    assert not platforms.is_colab_shell(None)


def test_current_shell_asks_a_loaded_ipython_and_never_imports_it(monkeypatch):
    monkeypatch.setattr(platforms, "current_shell", REAL_CURRENT_SHELL)
    shell = make_shell(COLAB_SHELL)
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    assert platforms.current_shell() is shell and platforms.detect({}, set()) == "colab"

    def broken():
        raise RuntimeError("half-initialised")

    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=broken))
    assert platforms.current_shell() is None
    monkeypatch.delitem(sys.modules, "IPython")
    assert platforms.current_shell() is None and "IPython" not in sys.modules



@pytest.mark.parametrize("name", sorted(n for n, s in SHEETS.items() if not s.colab_kernel))
def test_the_issues_command_in_a_fresh_process(name):
    """`python -c "from utils.runtime import platforms as e; print(e.detect(), e.output_root())"` with the sheet's
    variables and nothing else of this shell's platform variables: on Kaggle `kaggle /kaggle/working`."""
    sheet = SHEETS[name]
    env = {k: v for k, v in os.environ.items() if k not in (*platforms.COLAB_ENV_VARS, *platforms.KAGGLE_ENV_VARS,
                                                           platforms.PLATFORM_ENV)}
    code = "from utils.runtime import platforms as e; print(e.detect(), e.output_root())"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env={**env, **sheet.environ},
                          capture_output=True, text=True, check=True)
    root = str(REPO_ROOT) if sheet.output_root == "{repo}" else sheet.output_root.format(repo=REPO_ROOT.name)
    assert done.stdout.split() == [sheet.name, root]
    if sheet.name == "kaggle":
        assert done.stdout == "kaggle /kaggle/working\n"


@pytest.mark.parametrize("name", sorted(SHEETS))
def test_the_platform_line_names_platform_outputs_and_the_deciding_signal(name, monkeypatch):
    sheet = SHEETS[name]
    if sheet.drive:
        fake_google_colab(monkeypatch)
    enter(monkeypatch, sheet)
    line = platforms.describe()
    found = PLATFORM_LINE.search(line)
    assert found and found.groups() == (sheet.name, str(output_root_of(sheet))), line
    assert line.endswith(f"| detected by: {platforms.detection().signal}")
    if sheet.name == "kaggle":
        assert line.endswith("| detected by: KAGGLE_KERNEL_RUN_TYPE is set")
    assert platforms.describe("local").endswith("| detected by: chosen by the caller")


# --------------------------------------------------------------------------------------------
# Local: the defaults are unchanged
# --------------------------------------------------------------------------------------------
def test_local_outputs_stay_in_the_repository(monkeypatch):
    enter(monkeypatch, LOCAL)
    assert platforms.detect() == "local"
    assert platforms.REPO_ROOT == REPO_ROOT == output_root_of(LOCAL)
    assert platforms.output_root() == REPO_ROOT
    assert platforms.resolve_output("figures") == REPO_ROOT / "figures"
    assert platforms.resolve_output("runs/paper/checkpoints") == REPO_ROOT / "runs" / "paper" / "checkpoints"
    assert platforms.is_persistent(REPO_ROOT / "figures") is True
    assert platforms.persistence_note(REPO_ROOT / "figures") is None
    line = platforms.describe()
    assert "local" in line and str(REPO_ROOT) in line and "(kept)" in line


def test_resolve_output_keeps_absolute_and_expands_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert platforms.resolve_output(tmp_path / "x") == tmp_path / "x"
    assert platforms.resolve_output("~/runs") == tmp_path / "home" / "runs"
    assert platforms.resolve_output("runs", platform="kaggle") == platforms.KAGGLE_WORKING / "runs"


def test_local_ensure_writable_creates_and_probes(tmp_path):
    target = tmp_path / "out" / "deep" / "er"
    assert platforms.ensure_writable(target, "figures_dir") == target
    assert target.is_dir() and list(target.iterdir()) == []   # the probe file is gone
    assert platforms.ensure_writable(str(target), "figures_dir") == target  # again: already there


def test_kagglehub_cache_follows_its_variable(monkeypatch, tmp_path):
    assert platforms.kagglehub_cache() == platforms.KAGGLEHUB_CACHE
    monkeypatch.setattr(platforms, "KAGGLEHUB_CACHE", Path("~/.cache/kagglehub"))
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert platforms.kagglehub_cache() == tmp_path / "h" / ".cache" / "kagglehub"
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "elsewhere"))
    assert platforms.kagglehub_cache() == tmp_path / "elsewhere"


# --------------------------------------------------------------------------------------------
# Colab
# --------------------------------------------------------------------------------------------
def test_colab_outputs_go_to_drive_under_the_repository_name(colab):
    assert platforms.detect() == "colab"
    root = output_root_of(COLAB)
    assert root == platforms.COLAB_MYDRIVE / REPO_ROOT.name and platforms.output_root() == root
    assert platforms.resolve_output("runs/paper/checkpoints/") == root / "runs" / "paper" / "checkpoints"
    assert platforms.resolve_output("submissions/submission.csv") == root / "submissions" / "submission.csv"


def test_colab_child_kernel_outputs_go_to_drive_too(monkeypatch):
    enter(monkeypatch, COLAB_CHILD)
    assert platforms.detect() == "colab" and platforms.output_root() == output_root_of(COLAB_CHILD)


def test_colab_refuses_drive_while_unmounted_then_mounts_once(colab):
    target = platforms.resolve_output("runs/paper/checkpoints")
    with pytest.raises(platforms.OutputError) as info:
        platforms.ensure_writable(target, "run_dir (checkpoints)")
    message = str(info.value)
    assert str(target) in message and "run_dir (checkpoints)" in message and "not mounted" in message
    assert f"from google.colab import drive; drive.mount('{platforms.COLAB_DRIVE}')" in message
    assert "setup cell" in message
    assert not target.exists() and not platforms.COLAB_DRIVE.exists()   # nothing written to the VM disk
    assert "(Google Drive, not mounted yet)" in platforms.describe()
    assert "not mounted" in platforms.persistence_note(target)

    platforms.mount_drive()
    platforms.mount_drive()
    assert colab == [str(platforms.COLAB_DRIVE)]   # once
    assert platforms.drive_mounted()
    assert platforms.ensure_writable(target, "run_dir (checkpoints)") == target and target.is_dir()
    assert platforms.is_persistent(target) and platforms.persistence_note(target) is None
    assert "colab" in platforms.describe() and "kept across sessions" in platforms.describe()


def test_drive_mounted_needs_both_the_folder_and_the_mount_point(monkeypatch):
    assert not platforms.drive_mounted()
    platforms.COLAB_MYDRIVE.mkdir(parents=True)
    assert not platforms.drive_mounted()   # a folder on the VM disk is not Drive
    monkeypatch.setattr(platforms, "is_mount", lambda path: Path(path) == platforms.COLAB_DRIVE)
    assert platforms.drive_mounted()
    platforms.COLAB_MYDRIVE.rmdir()
    assert not platforms.drive_mounted()


def test_unmounted_drive_is_refused_on_any_platform_and_by_symlink(tmp_path):
    link = tmp_path / "runs-link"
    platforms.COLAB_MYDRIVE.mkdir(parents=True)
    link.symlink_to(platforms.COLAB_MYDRIVE)
    for path in (platforms.COLAB_MYDRIVE / "x", link / "x"):
        with pytest.raises(platforms.OutputError, match="not mounted"):
            platforms.ensure_writable(path, "figures_dir")


def test_mount_drive_does_nothing_off_colab(monkeypatch, colab):
    monkeypatch.setenv("CIFAR10_PLATFORM", "local")
    platforms.mount_drive()
    monkeypatch.setenv("CIFAR10_PLATFORM", "kaggle")
    platforms.mount_drive()
    assert colab == []


def test_colab_vm_disk_is_not_persistent(colab, tmp_path):
    vm_path = tmp_path / "content" / "main" / "runs"
    assert not platforms.is_persistent(vm_path)
    note = platforms.persistence_note(vm_path)
    assert str(vm_path) in note and "lost" in note and str(platforms.COLAB_MYDRIVE) in note
    assert platforms.is_persistent(platforms.COLAB_MYDRIVE / "x")


# --------------------------------------------------------------------------------------------
# Kaggle (each sheet: both mount layouts, interactive and batch; Colab's signals present in all)
# --------------------------------------------------------------------------------------------
def test_kaggle_outputs_go_to_working_and_drive_is_never_mounted(kaggle, request):
    assert platforms.detect() == "kaggle"
    assert platforms.output_root() == platforms.KAGGLE_WORKING == real(kaggle.output_root)
    assert platforms.resolve_output("figures") == platforms.KAGGLE_WORKING / "figures"
    assert platforms.kaggle_submission() == platforms.KAGGLE_WORKING / "submission.csv"
    target = platforms.ensure_writable(platforms.resolve_output("runs/paper/checkpoints"), "run_dir")
    assert target.is_dir() and platforms.is_persistent(target)
    note = platforms.persistence_note(target)
    assert "Save Version" in note and str(platforms.KAGGLE_WORKING) in note
    assert "kaggle" in platforms.describe() and "committed" in platforms.describe()
    platforms.mount_drive()
    assert request.node.mounts == []


def test_kaggle_input_is_refused_as_read_only(kaggle, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the read-only input folder must be refused before touching it")

    monkeypatch.setattr(platforms, "probe_writable", never)
    monkeypatch.setattr(Path, "mkdir", never)
    for fact in kaggle.read_only:
        target = real(fact) / "my-dataset" / "runs"
        with pytest.raises(platforms.OutputError) as info:
            platforms.ensure_writable(target, "run_dir")
        message = str(info.value)
        assert str(target) in message and "read-only" in message and "run_dir" in message
        assert str(platforms.KAGGLE_WORKING) in message


def test_kaggle_read_only_folder_reported_by_the_probe(kaggle, monkeypatch, tmp_path):
    def read_only(folder):
        raise PermissionError(errno.EACCES, "Permission denied", str(folder))

    monkeypatch.setattr(platforms, "probe_writable", read_only)
    target = tmp_path / "elsewhere"
    with pytest.raises(platforms.OutputError) as info:
        platforms.ensure_writable(target, "figures_dir")
    assert str(target) in str(info.value) and "permission denied" in str(info.value)
    assert "set figures_dir to a folder you can write to" in str(info.value)
    assert isinstance(info.value.__cause__, PermissionError)


def test_kaggle_read_only_mkdir(kaggle, monkeypatch, tmp_path):
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(platforms.OutputError, match="read-only.*\n.*figures_dir"):
        platforms.ensure_writable(tmp_path / "ro", "figures_dir")


def test_kaggle_outside_working_is_not_persistent(kaggle, tmp_path):
    assert not platforms.is_persistent(tmp_path / "tmp")
    assert "discards" in platforms.persistence_note(tmp_path / "tmp")


# --------------------------------------------------------------------------------------------
# OSErrors become OutputError naming the path
# --------------------------------------------------------------------------------------------
def test_full_disk_becomes_output_error(monkeypatch, tmp_path):
    def full(folder):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(platforms, "probe_writable", full)
    target = tmp_path / "runs"
    with pytest.raises(platforms.OutputError) as info:
        platforms.ensure_writable(target, "run_dir (checkpoints)")
    error = info.value
    assert isinstance(error, OSError)
    assert error.path == target and error.what == "run_dir (checkpoints)"
    assert str(target) in str(error) and "no space left" in str(error) and "free some space" in str(error)
    assert "run_dir (checkpoints)" in error.fix


def test_parent_is_a_file_becomes_output_error(tmp_path):
    blocker = touch(tmp_path / "runs")
    target = blocker / "paper" / "checkpoints"
    with pytest.raises(platforms.OutputError) as info:
        platforms.ensure_writable(target, "run_dir")
    message = str(info.value)
    assert str(target) in message and f"{blocker} is a file, not a folder" in message and "run_dir" in message
    assert isinstance(info.value.__cause__, (NotADirectoryError, FileExistsError))


def test_path_itself_a_file_becomes_output_error(tmp_path):
    blocker = touch(tmp_path / "figures")
    with pytest.raises(platforms.OutputError, match="is a file, not a folder"):
        platforms.ensure_writable(blocker, "figures_dir")


def test_output_error_pickles_with_its_fields(tmp_path):
    error = platforms.OutputError(tmp_path, "run_dir", "because", "do this")
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) == f"Cannot write run_dir to {tmp_path}: because.\nFix: do this"
    assert (copy.path, copy.what, copy.reason, copy.fix) == (tmp_path, "run_dir", "because", "do this")


# --------------------------------------------------------------------------------------------
# utils.notebook.setup: what every notebook does after its setup cell found the code
# --------------------------------------------------------------------------------------------
@pytest.fixture
def installs(monkeypatch):
    calls = []
    monkeypatch.setattr(install, "install_missing", lambda path: calls.append(Path(path)) or ["nothing to install"])
    return calls


def test_notebook_setup_on_colab_installs_what_is_missing_mounts_drive_and_writes_there(colab, installs, capsys):
    from utils.notebook import setup
    cfg, device = setup({"profile": "smoke", "device": "cpu", "epochs": 3})
    assert installs == [REPO_ROOT / "requirements.txt"] and colab == [str(platforms.COLAB_DRIVE)]
    root = output_root_of(COLAB)
    assert cfg.run_path == root / "runs" / "smoke" / "checkpoints" and cfg.run_path.is_dir()
    assert cfg.figures_path == root / "figures" and cfg.submission_file.parent.is_dir()
    assert (cfg.profile, cfg.epochs, str(device)) == ("smoke", 3, "cpu")
    assert f"platform: colab | outputs: {root} (Google Drive, kept across sessions) | detected by: the kernel is " \
           f"Colab's, {COLAB_SHELL}" in capsys.readouterr().out


def test_notebook_setup_on_colab_when_drive_does_not_mount_names_the_fix(colab, installs, monkeypatch):
    """Colab's drive.mount fails for some users with "ValueError: mount failed" (googlecolab/colabtools#6062): the
    setup ends in one error that names what to do (run it again, a fresh runtime, or folders under /content that do
    not survive it), shown in a notebook without a traceback, and nothing is written off Drive instead."""
    from utils.notebook import setup

    def mount_failed(mountpoint: str, **kwargs) -> None:
        colab.append(mountpoint)
        raise ValueError("mount failed")            # what Colab's google/colab/drive.py raises

    monkeypatch.setattr(sys.modules["google.colab.drive"], "mount", mount_failed)
    with pytest.raises(platforms.DriveMountError) as info:
        setup({"profile": "smoke", "device": "cpu"})
    message = str(info.value)
    assert colab == [str(platforms.COLAB_DRIVE)] and isinstance(info.value.__cause__, ValueError)
    assert f"{platforms.COLAB_DRIVE}: Google Drive did not mount (ValueError: mount failed).\nFix: " in message
    assert "run this cell again" in message and "Runtime > Disconnect and delete runtime" in message
    assert "set run_dir, figures_dir and submission_path to folders under /content" in message
    assert info.value._render_traceback_() == [f"DriveMountError: {message}"]     # what IPython shows of it
    assert not platforms.drive_mounted() and not output_root_of(COLAB).exists()


def test_notebook_setup_on_kaggle_writes_to_working_and_never_mounts_drive(kaggle, installs, request, capsys):
    from utils.notebook import setup
    cfg, _ = setup({"profile": "smoke", "device": "cpu"})
    assert installs and cfg.run_path == platforms.KAGGLE_WORKING / "runs" / "smoke" / "checkpoints"
    assert request.node.mounts == [] and not platforms.COLAB_DRIVE.exists()
    out = capsys.readouterr().out
    assert f"platform: kaggle | outputs: {platforms.KAGGLE_WORKING} (kept once the notebook is committed) | " \
           "detected by: KAGGLE_KERNEL_RUN_TYPE is set" in out


def test_notebook_setup_locally_installs_nothing_and_refuses_bad_values_before_any_work(installs, tmp_path):
    from utils.config import ConfigError
    from utils.notebook import setup
    with pytest.raises(ConfigError, match=r"epochs = 0: expected an integer >= 1"):
        setup({"profile": "smoke", "epochs": 0, "run_dir": str(tmp_path / "never")})
    assert not installs and not (tmp_path / "never").exists()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(platforms.OutputError, match="is a file, not a folder"):
        setup({"profile": "smoke", "device": "cpu", "run_dir": str(blocker / "ckpt")})


# --------------------------------------------------------------------------------------------
# The module's place in the package: at the bottom, imports one way, constants in one home
# --------------------------------------------------------------------------------------------
def test_only_standard_library_imports():
    imported = top_level_imports(MODULE_FILE)
    foreign = imported - set(sys.stdlib_module_names) - {"__future__", "google"}
    assert not foreign, f"non-standard imports: {foreign}"


def test_importing_it_loads_neither_torch_nor_other_utils():
    code = ("import sys, utils.runtime.platforms; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('utils.') or m == 'yaml'))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "['utils.runtime', 'utils.runtime.platforms']"


def module_name(path: Path) -> str:
    """utils/config.py -> "config", utils/runtime/platforms.py -> "runtime.platforms"."""
    return ".".join(path.relative_to(UTILS).with_suffix("").parts)


def utils_imports() -> dict[str, set[str]]:
    """{module: the utils modules it imports} for every module of the package ("config", "runtime.platforms")."""
    graph = {}
    for path in sorted(UTILS.rglob("*.py")):
        if path.name == "__init__.py":
            continue
        package = module_name(path).split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package[:len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
            elif (node.module or "").startswith("utils"):
                base = node.module.split(".")[1:]
            else:
                continue
            names = [a.name for a in node.names]
            subpackage = UTILS.joinpath(*base)
            if base and (UTILS.joinpath(*base).with_suffix(".py")).is_file():
                deps.add(".".join(base))
            else:                      # `from . import config` / `from .runtime import platforms`: names are modules
                deps |= {".".join([*base, n]) for n in names if subpackage.joinpath(f"{n}.py").is_file()}
        graph[module_name(path)] = deps
    return graph


def test_the_import_graph_is_one_way_with_platforms_at_the_bottom():
    graph = utils_imports()
    assert "environment" not in graph, "utils/environment.py was split into platforms, locate and install"
    assert graph["runtime.platforms"] == set() and graph["runtime.install"] == set()
    assert graph["runtime.locate"] <= {"runtime.platforms", "runtime.files"}, "locate sits below dataset and checkpoint"
    assert "runtime.locate" in graph["checkpoint"] and "runtime.locate" in graph["dataset"]
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join((*path, module))}"
        if module not in done:
            for dep in sorted(graph.get(module, ())):
                visit(dep, (*path, module))
            done.add(module)

    for module in graph:
        visit(module, ())


def test_nothing_imports_the_old_environment_module():
    sources = [*UTILS.rglob("*.py"), REPO_ROOT / "run.py", *(REPO_ROOT / "benchmarks").glob("*.py"),
               *(REPO_ROOT / "tests").glob("*.py")]
    stale = [str(p.relative_to(REPO_ROOT)) for p in sources if p != Path(__file__)
             and re.search(r"utils\.environment\b|from \. import environment\b|from \.environment import",
                          p.read_text())]
    assert not stale, f"still import utils.environment: {stale}"


def test_patched_constants_live_in_platforms_only():
    """Tests patch platforms.KAGGLE_INPUT and its siblings; a module that copied one (`from .platforms import
    KAGGLE_INPUT`, or `KAGGLE_INPUT = ...`) would keep the unpatched path. They are read as platforms.X instead."""
    offenders = []
    for path in [*UTILS.rglob("*.py"), REPO_ROOT / "run.py"]:
        if path == MODULE_FILE:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("platforms"):
                offenders += [f"{path.name}: from-imports {a.name}" for a in node.names if a.name in PATCHED_CONSTANTS]
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            offenders += [f"{path.name}: binds {t.id}" for t in targets
                          if isinstance(t, ast.Name) and t.id in PATCHED_CONSTANTS]
    assert not offenders, offenders


def test_style():
    for name in ("runtime/platforms", "runtime/locate", "runtime/install", "notebook"):
        lines = (UTILS / f"{name}.py").read_text().splitlines()
        assert "from __future__ import annotations" in lines, name
        assert [i for i, line in enumerate(lines, 1) if len(line) > 120] == [], name
        assert [i for i, line in enumerate(lines, 1) if line.rstrip().endswith("\\")] == [], name
