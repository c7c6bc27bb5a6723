"""Which platform the project runs on (Colab, Kaggle or a laptop) and where its outputs go: one module decides.

This module sits at the bottom of the package: standard library only, no torch, no other `utils` module, so
`utils.config`, `utils.notebook` and the notebooks' setup can import it before anything is installed. Every path
it uses is a module-level constant (`COLAB_DRIVE`, `KAGGLE_INPUT`, ...) that lives here and nowhere else; the
other modules read it at call time (`platforms.KAGGLE_INPUT`), so a test that monkeypatches it reaches them all.

Decisions, and why:
- Detection (`detection`, `detect`), in this order; the first signal found decides, and `describe` names it:
  1. `$CIFAR10_PLATFORM` (colab|kaggle|local) overrides everything, for tests and odd setups.
  2. Kaggle's own variables, `KAGGLE_KERNEL_RUN_TYPE` or `KAGGLE_URL_BASE`: Kaggle's GPU image is built FROM
     Colab's runtime image (Kaggle/docker-python, Dockerfile.tmpl: `FROM .../colab-images/public/runtime:
     release-colab-external-images_20260514-...`), so on Kaggle `COLAB_RELEASE_TAG` is set and `google.colab` is
     importable too; only Kaggle's variables tell the two apart. Kaggle's own client changed its detection for
     this reason (Kaggle/kagglehub commit f81f26f, "Change colab environment detection logic").
  3. Colab's kernel: `"google.colab" in str(get_ipython())` (its shell is `google.colab._shell.Shell`; the test
     kagglehub adopted in f81f26f), when IPython is running.
  4. Colab's variables, `COLAB_RELEASE_TAG` or `COLAB_GPU`: a papermill child kernel on Colab (`!python run.py`)
     runs a plain ipykernel shell but inherits them, so it is still Colab (its outputs must go to Drive too).
  5. `google.colab` loaded, or importable.
  Anything else is "local".
- Outputs (`output_root`, `resolve_output`). Each Colab notebook gets its own machine: the `best.pt`
  notebook 03 wrote is not there when 04 and 05 open, and the VM disk is wiped at disconnect. So on
  Colab relative output paths go to Google Drive, `MyDrive/<repo folder name>/`, which all five notebooks
  share. On Kaggle they go to `/kaggle/working`, the only place kept as the notebook's output. Locally
  they go to the repository root, as they always did. Absolute paths are kept as given.
- Refusals (`ensure_writable`, `refuse_unsafe`). Writing under `/content/drive` while Drive is not mounted
  silently writes to the VM disk and is lost, so it is refused with the one-line mount as the fix.
  `/kaggle/input` is read-only (Kaggle mounts every attached input there read-only), so it is refused with
  `/kaggle/working` as the fix. Any other folder is created and probed with a temporary file; any OSError
  (permission, read-only file system, full disk, a file where a folder should be) becomes an `OutputError`
  naming the path, what it was for, why, and what to change. A failed `drive.mount` is a `DriveMountError` that
  says what to do (run it again, a fresh runtime, or folders under /content that do not survive it).
- Persistence (`is_persistent`, `persistence_note`). Colab: only Drive survives the runtime. Kaggle:
  `/kaggle/working` survives as the notebook's output once the notebook is committed ("Save Version").
  Local: everything survives.

Where inputs are looked for is `utils.runtime.locate`; what to install is `utils.runtime.install`.
"""
from __future__ import annotations

import errno
import importlib.util
import os
import sys
import tempfile
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

# --------------------------------------------------------------------------------------------
# Constants: the only home of these paths (tests monkeypatch them here; everyone reads them from here)
# --------------------------------------------------------------------------------------------
REPO_ROOT = Path(__file__).resolve().parents[2]
COLAB_DRIVE = Path("/content/drive")
COLAB_MYDRIVE = COLAB_DRIVE / "MyDrive"
KAGGLE_INPUT = Path("/kaggle/input")          # every attached input, read-only (tests/platform_facts.py: KAGGLE)
KAGGLE_WORKING = Path("/kaggle/working")      # the notebook's cwd and its saved output
# kagglehub's cache: ~/.cache/kagglehub unless $KAGGLEHUB_CACHE is set (Kaggle/kagglehub src/kagglehub/config.py,
# DEFAULT_CACHE_FOLDER and CACHE_FOLDER_ENV_VAR_NAME); `competition_download(slug)` extracts into
# <cache>/competitions/<slug>/ (src/kagglehub/cache.py, _get_competition_path).
KAGGLEHUB_CACHE = Path("~/.cache/kagglehub")
KAGGLEHUB_CACHE_ENV = "KAGGLEHUB_CACHE"

PLATFORM_ENV = "CIFAR10_PLATFORM"
PLATFORMS = ("colab", "kaggle", "local")
KAGGLE_ENV_VARS = ("KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_URL_BASE")   # set by Kaggle's kernel, not by Colab's image
COLAB_ENV_VARS = ("COLAB_RELEASE_TAG", "COLAB_GPU")               # set by Colab's image, so on Kaggle too
COLAB_MODULE = "google.colab"                                     # installed in Colab's image, so in Kaggle's too


def kagglehub_cache() -> Path:
    """kagglehub's cache folder: $KAGGLEHUB_CACHE, else KAGGLEHUB_CACHE (~ expanded)."""
    value = os.environ.get(KAGGLEHUB_CACHE_ENV, "").strip()
    return Path(value or KAGGLEHUB_CACHE).expanduser()


# --------------------------------------------------------------------------------------------
# Which platform
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Detection:
    """The platform and the signal that decided it (e.g. "KAGGLE_KERNEL_RUN_TYPE is set")."""
    platform: str
    signal: str


_THIS_PROCESS = object()   # `shell` default: look at this process's IPython


def current_shell() -> object | None:
    """The running IPython shell (`get_ipython()`), None outside IPython. IPython is not imported here: a process
    that runs an IPython kernel has it loaded already."""
    get = getattr(sys.modules.get("IPython"), "get_ipython", None)
    if get is None:
        return None
    try:
        return get()
    except Exception:   # a half-initialised or foreign IPython: no shell to look at
        return None


def is_colab_shell(shell: object | None) -> bool:
    """`shell` is Colab's kernel: `"google.colab" in str(get_ipython())` (kagglehub f81f26f), or its class is
    defined in google.colab (Colab's is `google.colab._shell.Shell`)."""
    if shell is None:
        return False
    if type(shell).__module__.startswith(COLAB_MODULE):
        return True
    try:
        return COLAB_MODULE in str(shell)
    except Exception:
        return False


def _colab_importable() -> bool:
    try:
        return importlib.util.find_spec(COLAB_MODULE) is not None
    except (ImportError, ValueError):  # no `google` package at all, or a module without a spec
        return False


def detection(environ: Mapping[str, str] | None = None, modules: Collection[str] | None = None,
              shell: object | None = _THIS_PROCESS) -> Detection:
    """The platform and what decided it, in the order the module docstring gives. Defaults look at this process:
    os.environ, sys.modules (plus `google.colab` importable) and IPython's current shell. Given explicitly,
    `modules` names the modules that are loaded or importable, and `shell` is the kernel's shell (None: no IPython)."""
    env = os.environ if environ is None else environ
    override = env.get(PLATFORM_ENV, "").strip().lower()
    if override:
        if override not in PLATFORMS:
            raise ValueError(f"${PLATFORM_ENV}={env[PLATFORM_ENV]!r} is not one of {', '.join(PLATFORMS)}. "
                             f"Fix: set it to one of these, or unset it to detect the platform.")
        return Detection(override, f"${PLATFORM_ENV}={override}")
    for name in KAGGLE_ENV_VARS:          # first: Kaggle's image carries every Colab signal below
        if env.get(name):
            return Detection("kaggle", f"{name} is set")
    shell = current_shell() if shell is _THIS_PROCESS else shell
    if is_colab_shell(shell):
        kind = type(shell)
        return Detection("colab", f"the kernel is Colab's, {kind.__module__}.{kind.__qualname__}")
    for name in COLAB_ENV_VARS:
        if env.get(name):
            return Detection("colab", f"{name} is set")
    if modules is None:
        if COLAB_MODULE in sys.modules:
            return Detection("colab", f"{COLAB_MODULE} is loaded")
        if _colab_importable():
            return Detection("colab", f"{COLAB_MODULE} is importable")
    elif COLAB_MODULE in modules:
        return Detection("colab", f"{COLAB_MODULE} is importable")
    return Detection("local", "no Kaggle or Colab signal")


def detect(environ: Mapping[str, str] | None = None, modules: Collection[str] | None = None,
           shell: object | None = _THIS_PROCESS) -> str:
    """"colab", "kaggle" or "local" (`detection(...).platform`)."""
    return detection(environ, modules, shell).platform


def _platform(platform: str | None) -> str:
    if platform is None:
        return detect()
    if platform not in PLATFORMS:
        raise ValueError(f"platform {platform!r} is not one of {', '.join(PLATFORMS)}")
    return platform


# --------------------------------------------------------------------------------------------
# Where outputs go
# --------------------------------------------------------------------------------------------
def output_root(platform: str | None = None) -> Path:
    """The folder relative output paths resolve against: Drive on Colab, /kaggle/working on Kaggle, else the repo."""
    platform = _platform(platform)
    if platform == "colab":
        return COLAB_MYDRIVE / REPO_ROOT.name
    if platform == "kaggle":
        return KAGGLE_WORKING
    return REPO_ROOT


def resolve_output(value: str | Path, platform: str | None = None) -> Path:
    """An absolute path (after expanding ~) as is; a relative one under `output_root()`."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else output_root(platform) / path


def kaggle_submission() -> Path:
    """Where Kaggle users look for the submission: /kaggle/working/submission.csv."""
    return KAGGLE_WORKING / "submission.csv"


def _forms(path: str | Path) -> tuple[Path, Path]:
    """The path made absolute without and with following symlinks."""
    text = os.path.expanduser(os.fspath(path))
    return Path(os.path.abspath(text)), Path(os.path.realpath(text))


def is_under(path: str | Path, root: str | Path) -> bool:
    """`path` is `root` or inside it (literally, or once symlinks are followed)."""
    roots = _forms(root)
    return any(p == r or r in p.parents for p in _forms(path) for r in roots)


# --------------------------------------------------------------------------------------------
# Errors and Google Drive
# --------------------------------------------------------------------------------------------
class OutputError(OSError):
    """An output folder cannot be used; the message names the path, what it is for, why, and the fix."""

    def __init__(self, path: str | Path, what: str, reason: str, fix: str) -> None:
        self.path, self.what, self.reason, self.fix = Path(path), what, reason, fix
        super().__init__(f"Cannot write {what} to {path}: {reason}.\nFix: {fix}")

    def __reduce__(self):
        return (type(self), (self.path, self.what, self.reason, self.fix))


def drive_mount_command() -> str:
    return f"from google.colab import drive; drive.mount('{COLAB_DRIVE}')"


def is_mount(path: Path) -> bool:
    """os.path.ismount, as a function of its own so tests can patch it."""
    return os.path.ismount(path)


def drive_mounted() -> bool:
    """Google Drive is mounted: COLAB_MYDRIVE is a folder and COLAB_DRIVE is a mount point."""
    return COLAB_MYDRIVE.is_dir() and is_mount(COLAB_DRIVE)


class DriveMountError(OutputError):
    """`drive.mount` failed; the message names the fix. A notebook shows it without a traceback (IPython prints what
    `_render_traceback_` returns instead): the traceback would only point into google.colab."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


# What to do when drive.mount fails with "ValueError: mount failed" (googlecolab/colabtools#6062, open, no cause
# given): try again, then on a fresh runtime; Drive mounts only for the Google account that runs the notebook
# (googlecolab/colabtools#1568, Colab's answer of 2022-01-20).
DRIVE_MOUNT_FIX = ("run this cell again; if it fails again, Runtime > Disconnect and delete runtime, then run the "
                   "notebook again and allow access for the Google account this notebook runs under. Or go on "
                   "without Drive: set run_dir, figures_dir and submission_path to folders under /content (they "
                   "are lost when the runtime ends, and notebooks opened later, each on its own machine, do not "
                   "see them)")


def mount_drive() -> None:
    """On Colab, mount Google Drive at COLAB_DRIVE unless it already is; elsewhere do nothing. A failed mount
    (Colab's `ValueError: mount failed`, or any other error of drive.mount) becomes a DriveMountError naming the
    fix: nothing is written anywhere else instead, since outputs off Drive are lost with the runtime."""
    if detect() != "colab" or drive_mounted():
        return
    from google.colab import drive  # only exists on Colab (and, unusable, on Kaggle: never called there)
    try:
        drive.mount(str(COLAB_DRIVE))
    except Exception as err:        # Colab's own errors are ValueError and google.colab's MessageError
        raise DriveMountError(COLAB_DRIVE, "the outputs (run_dir, figures_dir, submission_path)",
                              f"Google Drive did not mount ({type(err).__name__}: {err})", DRIVE_MOUNT_FIX) from err


# --------------------------------------------------------------------------------------------
# Writable folders
# --------------------------------------------------------------------------------------------
def probe_writable(folder: Path) -> None:
    """Create, write and delete a temporary file in `folder`; raises the OSError if any step fails."""
    fd, name = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
    try:
        os.write(fd, b"ok")
    finally:
        os.close(fd)
        os.unlink(name)


def _blocking_file(path: Path) -> Path | None:
    """The path itself or its nearest existing ancestor when that is not a folder."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return None if candidate.is_dir() else candidate
    return None


def explain_os_error(err: OSError, path: Path, what: str) -> tuple[str, str]:
    """(reason, fix) for an OSError met while creating or probing `path`."""
    elsewhere = f"set {what} to a folder you can write to (a relative path goes under {output_root()})"
    not_a_folder = isinstance(err, (NotADirectoryError, FileExistsError)) or err.errno in (errno.ENOTDIR, errno.EEXIST)
    blocker = _blocking_file(path) if not_a_folder else None
    if blocker is not None:
        return f"{blocker} is a file, not a folder", f"move or delete the file {blocker}, or {elsewhere}"
    detail = f"{type(err).__name__}: {err}"
    if err.errno == errno.ENOSPC or err.errno == getattr(errno, "EDQUOT", -1):
        return (f"no space left on the device ({detail})",
                f"free some space (old runs, checkpoints), or {elsewhere} on another disk")
    if err.errno == errno.EROFS:
        return f"the file system is read-only ({detail})", elsewhere
    if isinstance(err, PermissionError) or err.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied ({detail})", elsewhere
    return detail, elsewhere


def ensure_writable(path: str | Path, what: str) -> Path:
    """Make sure the FOLDER `path` exists and takes files; returns it. `what` names the setting to change
    (e.g. "run_dir (checkpoints)"). Raises OutputError for an unmounted Drive, /kaggle/input, or any OSError."""
    path = Path(path).expanduser()
    refuse_unsafe(path, what)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe_writable(path)
    except OSError as err:
        reason, fix = explain_os_error(err, path, what)
        raise OutputError(path, what, reason, fix) from err
    return path


def refuse_unsafe(path: str | Path, what: str) -> None:
    """Refuse, without touching the disk, a place that would lose what is written there (an unmounted Drive) or
    cannot take it (Kaggle's read-only input). Every file write checks this (utils.runtime.files.atomic_write)."""
    path = Path(path).expanduser()
    if is_under(path, COLAB_DRIVE) and not drive_mounted():
        raise OutputError(path, what, "Google Drive is not mounted, so this would write to the VM's disk "
                          "and be lost when the runtime disconnects",
                          f"run `{drive_mount_command()}` (or the notebook's setup cell, which mounts it), "
                          "then run this cell again")
    if is_under(path, KAGGLE_INPUT):
        raise OutputError(path, what, f"{KAGGLE_INPUT} is read-only on Kaggle",
                          f"write under {KAGGLE_WORKING}, the default: give {what} a relative path")


# --------------------------------------------------------------------------------------------
# What survives the session
# --------------------------------------------------------------------------------------------
def is_persistent(path: str | Path, platform: str | None = None) -> bool:
    """Files written at `path` outlive the session: Colab only on Drive, Kaggle in /kaggle/working, local yes."""
    platform = _platform(platform)
    if platform == "colab":
        return is_under(path, COLAB_DRIVE)
    if platform == "kaggle":
        return is_under(path, KAGGLE_WORKING)
    return True


def persistence_note(path: str | Path, platform: str | None = None) -> str | None:
    """What the user should know about keeping files at `path`, or None when there is nothing to say."""
    platform = _platform(platform)
    if platform == "colab":
        if not is_under(path, COLAB_DRIVE):
            return (f"{path} is on the Colab VM's disk: it is lost when the runtime disconnects, and notebooks "
                    f"opened later (each on its own machine) will not see it. Use a relative path (it goes to "
                    f"{output_root('colab')}) or one under {COLAB_MYDRIVE}.")
        if not drive_mounted():
            return f"{path} is on Google Drive, which is not mounted yet: run `{drive_mount_command()}`."
        return None
    if platform == "kaggle":
        if not is_under(path, KAGGLE_WORKING):
            return (f"{path} is outside {KAGGLE_WORKING}: Kaggle discards it when the session ends. "
                    f"Use a relative path (it goes to {KAGGLE_WORKING}).")
        return (f"Kaggle keeps {KAGGLE_WORKING} as this notebook's output only once you commit it "
                f"(Save Version); attach that output to a later notebook (Add Input) to read it from "
                f"{KAGGLE_INPUT}.")
    return None


def how_to_continue(platform: str | None = None) -> str:
    """What a student does to continue a run split over sessions (max_epochs_this_call), on `platform`."""
    platform = _platform(platform)
    if platform == "kaggle":
        return (f"keep this session's {KAGGLE_WORKING} with Save Version (Save & Run All); in the next session "
                "Add Input > Your Work > this notebook's output, and run the same cell: the run folder is copied "
                "back from the input and training continues from its last.pt.")
    if platform == "colab":
        return ("run the same cell again (now, or in a new session after a disconnect): training continues from "
                "last.pt on your Google Drive.")
    return "run the same command again: training continues from last.pt."


# --------------------------------------------------------------------------------------------
# One line for the notebooks' setup and run.py
# --------------------------------------------------------------------------------------------
def describe(platform: str | Detection | None = None) -> str:
    """One line: the platform, where outputs go, whether they persist, and which signal decided the platform:
    "platform: kaggle | outputs: /kaggle/working (kept once the notebook is committed) | detected by:
    KAGGLE_KERNEL_RUN_TYPE is set". The first two fields keep the form `platform: NAME | outputs: PATH` that
    the platform twins read (.ci/twins/twin.py, PLATFORM_LINE)."""
    if platform is None:
        platform = detection()
    elif isinstance(platform, str):
        platform = Detection(_platform(platform), "chosen by the caller")
    name = platform.platform
    root = output_root(name)
    kept = {"colab": "Google Drive, kept across sessions", "kaggle": "kept once the notebook is committed",
            "local": "kept"}[name]
    if not is_persistent(root, name):
        kept = "NOT kept after this session"
    elif name == "colab" and not drive_mounted():
        kept = "Google Drive, not mounted yet"
    return f"platform: {name} | outputs: {root} ({kept}) | detected by: {platform.signal}"
