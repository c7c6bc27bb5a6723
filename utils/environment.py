"""Where the project runs (Colab, Kaggle or a laptop) and what that means for its files: one module decides.

This module sits at the bottom of the package: standard library only (plus `packaging` when it is
installed), no torch, no other `utils` module, so `utils.config` and the notebooks' setup cells can import
it before anything heavy is installed. Every path it uses is a module-level constant (`COLAB_DRIVE`,
`KAGGLE_INPUT`, ...) that tests monkeypatch to a temporary folder.

Decisions, and why:
- Detection (`detect`). Colab: `google.colab` is loaded or importable, or `COLAB_RELEASE_TAG` / `COLAB_GPU`
  is set. Kaggle: `KAGGLE_KERNEL_RUN_TYPE` or `KAGGLE_URL_BASE` is set. Anything else is "local".
  `$CIFAR10_PLATFORM` (colab|kaggle|local) overrides all of it, for tests and odd setups.
- Outputs (`output_root`, `resolve_output`). Each Colab notebook gets its own machine: the `best.pt`
  notebook 03 wrote is not there when 04 and 05 open, and the VM disk is wiped at disconnect. So on
  Colab relative output paths go to Google Drive, `MyDrive/<repo folder name>/`, which all five notebooks
  share. On Kaggle they go to `/kaggle/working`, the only place kept as the notebook's output. Locally
  they go to the repository root, as they always did. Absolute paths are kept as given.
- Refusals (`ensure_writable`). Writing under `/content/drive` while Drive is not mounted silently writes
  to the VM disk and is lost, so it is refused with the one-line mount as the fix. `/kaggle/input` is
  read-only, so it is refused with `/kaggle/working` as the fix. Any other folder is created and probed
  with a temporary file; any OSError (permission, read-only file system, full disk, a file where a
  folder should be) becomes an `OutputError` naming the path, what it was for, why, and what to change.
- Persistence (`is_persistent`, `persistence_note`). Colab: only Drive survives the runtime. Kaggle:
  `/kaggle/working` survives as the notebook's output once the notebook is committed ("Save Version").
  Local: everything survives.
- Inputs (`data_dirs`, `nolabel_candidates`, `checkpoint_candidates`) are ordered candidate lists; the
  callers take the first that exists and name them all in their own error. On Kaggle a dataset is mounted
  at `/kaggle/input/<whatever the dataset folder is called>/`, possibly nested (`competitions/<slug>/`),
  so that folder is searched by content, not by name, a few levels deep. "Searched to depth N" means the
  folders 0..N levels below it are looked into. An explicit path is a promise: when one is given it is the
  only candidate, so a typo is an error rather than a silent fallback to other data.
- Requirements (`requirement_status`, `install_missing`). Colab and Kaggle ship torch built for their GPU
  and CUDA; `pip install -r requirements.txt` could replace it with a mismatched wheel. So only missing
  packages are installed (with our lower bound), and packages older than our lower bound are reported,
  never upgraded. Names are compared the PEP 503 way (case-insensitive, `-`, `_` and `.` alike), so
  "PyYAML", "pyyaml" and "scikit_learn" match their installed distributions.
"""
from __future__ import annotations

import errno
import importlib
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

try:  # optional: a full version parser; a small release-number comparison is used without it
    from packaging.version import InvalidVersion as _InvalidVersion
    from packaging.version import Version as _Version
except ImportError:  # pragma: no cover - depends on the machine
    _Version = None
    _InvalidVersion = ValueError

# --------------------------------------------------------------------------------------------
# Constants (module-level so tests can monkeypatch them)
# --------------------------------------------------------------------------------------------
REPO_ROOT = Path(__file__).resolve().parents[1]
COLAB_DRIVE = Path("/content/drive")
COLAB_MYDRIVE = COLAB_DRIVE / "MyDrive"
KAGGLE_INPUT = Path("/kaggle/input")
KAGGLE_WORKING = Path("/kaggle/working")

PLATFORM_ENV = "CIFAR10_PLATFORM"
DATA_ENV = "CIFAR10_DIR"
PLATFORMS = ("colab", "kaggle", "local")
COLAB_ENV_VARS = ("COLAB_RELEASE_TAG", "COLAB_GPU")
KAGGLE_ENV_VARS = ("KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_URL_BASE")

BATCHES_SUBDIR = Path("cifar-10-python") / "cifar-10-batches-py"
NOLABEL_FILE = "cifar_test_nolabel.pkl"
DATA_SEARCH_DEPTH = 4
NOLABEL_SEARCH_DEPTH = 4
CHECKPOINT_SEARCH_DEPTH = 6



# --------------------------------------------------------------------------------------------
# Which platform
# --------------------------------------------------------------------------------------------
def _colab_importable() -> bool:
    try:
        return importlib.util.find_spec("google.colab") is not None
    except (ImportError, ValueError):  # no `google` package at all, or a module without a spec
        return False


def detect(environ: Mapping[str, str] | None = None, modules: Mapping[str, object] | None = None) -> str:
    """"colab", "kaggle" or "local"; `$CIFAR10_PLATFORM` overrides. Defaults: os.environ and sys.modules
    (then `google.colab` also counts when it is importable without being loaded)."""
    env = os.environ if environ is None else environ
    override = env.get(PLATFORM_ENV, "").strip().lower()
    if override:
        if override not in PLATFORMS:
            raise ValueError(f"${PLATFORM_ENV}={env[PLATFORM_ENV]!r} is not one of {', '.join(PLATFORMS)}. "
                             f"Fix: set it to one of these, or unset it to detect the platform.")
        return override
    loaded = sys.modules if modules is None else modules
    if "google.colab" in loaded or any(env.get(k) for k in COLAB_ENV_VARS):
        return "colab"
    if any(env.get(k) for k in KAGGLE_ENV_VARS):
        return "kaggle"
    if modules is None and _colab_importable():
        return "colab"
    return "local"


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


def mount_drive() -> None:
    """On Colab, mount Google Drive at COLAB_DRIVE unless it already is; elsewhere do nothing."""
    if detect() != "colab" or drive_mounted():
        return
    from google.colab import drive  # only exists on Colab
    drive.mount(str(COLAB_DRIVE))


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
    cannot take it (Kaggle's read-only input). Every file write checks this (utils.files.atomic_write)."""
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


# --------------------------------------------------------------------------------------------
# Where inputs are looked for
# --------------------------------------------------------------------------------------------
def walk_dirs(root: Path, max_depth: int) -> Iterator[Path]:
    """`root` and the folders 1..max_depth levels below it, shallowest first, sorted by name; hidden
    folders and unreadable ones are skipped. Nothing when `root` is not a folder."""
    if not root.is_dir():
        return
    queue: deque[tuple[Path, int]] = deque([(root, 0)])
    while queue:
        folder, depth = queue.popleft()
        yield folder
        if depth == max_depth:
            continue
        try:
            with os.scandir(folder) as entries:
                subdirs = sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())
        except OSError:
            continue
        queue.extend((folder / name, depth + 1) for name in subdirs)


def _unique(paths: Iterable[Path]) -> list[Path]:
    """Absolute, in order, without repeats (two spellings of one folder count once)."""
    seen: set[str] = set()
    out: list[Path] = []
    for path in paths:
        path = Path(os.path.abspath(path))
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            out.append(path)
    return out


def _env_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    value = (os.environ if environ is None else environ).get(DATA_ENV, "").strip()
    return Path(value).expanduser() if value else None


def _repo_path(value: str | Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def data_dirs(explicit: str | Path | None = None) -> list[Path]:
    """Folders that may hold `cifar-10-python/cifar-10-batches-py/`, in order: an explicit folder only
    (relative to REPO_ROOT), else $CIFAR10_DIR, REPO_ROOT/data, ./data, then every folder under
    KAGGLE_INPUT (to depth 4) that holds the batches, whatever the dataset folder is called."""
    if explicit:
        return [Path(os.path.abspath(_repo_path(explicit)))]
    env = _env_dir()
    found = ([env] if env else []) + [REPO_ROOT / "data", Path.cwd() / "data"]
    found += [d for d in walk_dirs(KAGGLE_INPUT, DATA_SEARCH_DEPTH) if (d / BATCHES_SUBDIR).is_dir()]
    return _unique(found)


def nolabel_candidates(explicit: str | Path | None = None, data_dir: str | Path | None = None,
                       filename: str = NOLABEL_FILE) -> list[Path]:
    """Where the unlabeled test pickle may be, in order: an explicit file only (relative to REPO_ROOT), else
    $CIFAR10_DIR/filename, data_dir/filename, REPO_ROOT/data/filename, on Colab the Drive output folder (and its
    data/), then every match under KAGGLE_INPUT (depth 4)."""
    if explicit:
        return [Path(os.path.abspath(_repo_path(explicit)))]
    env = _env_dir()
    found = [env / filename] if env else []
    if data_dir:
        found.append(_repo_path(data_dir) / filename)
    found.append(REPO_ROOT / "data" / filename)
    if _platform(None) == "colab":       # uploaded to the Drive folder the notebooks share (the clone is per machine)
        found += [output_root() / filename, output_root() / "data" / filename]
    found += [d / filename for d in walk_dirs(KAGGLE_INPUT, NOLABEL_SEARCH_DEPTH) if (d / filename).is_file()]
    return _unique(found)


def checkpoint_candidates(run_path: str | Path, name: str = "best.pt", profile: str | None = None,
                          platform: str | None = None) -> list[Path]:
    """Where a checkpoint may be, in order: run_path/name; on Kaggle then every `name` under KAGGLE_INPUT
    (an attached notebook output, depth 6), those whose path names `profile` first."""
    found = [Path(run_path).expanduser() / name]
    if _platform(platform) == "kaggle":
        matches = [d / name for d in walk_dirs(KAGGLE_INPUT, CHECKPOINT_SEARCH_DEPTH) if (d / name).is_file()]
        if profile:
            def rank(p: Path) -> int:
                rel = p.relative_to(KAGGLE_INPUT)
                return 0 if profile in rel.parts else 1 if profile in str(rel) else 2
            matches.sort(key=rank)  # stable: shallower first within a rank
        found += matches
    return _unique(found)


# --------------------------------------------------------------------------------------------
# Requirements: install what is missing, never upgrade the platform's packages
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Requirement:
    name: str               # as written in the requirements file
    lower: str | None       # the `>=` bound, None when the line names the package only
    installed: str | None   # the installed version, None when missing
    status: str             # "ok" | "missing" | "older"

    @property
    def spec(self) -> str:
        return f"{self.name}>={self.lower}" if self.lower else self.name


_LINE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(?:>=\s*(?P<lower>[^\s,;#]+))?\s*$")


def canonical_name(name: str) -> str:
    """PEP 503: case-insensitive, runs of '-', '_' and '.' alike."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_versions() -> dict[str, str]:
    """{canonical distribution name: version} for everything importlib.metadata sees."""
    versions: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata else None
        if name:
            versions.setdefault(canonical_name(name), dist.version)
    return versions


def _release(version: str) -> tuple[int, ...]:
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    if not match:
        raise ValueError(f"cannot read the version {version!r}")
    parts = [int(p) for p in match.group(1).split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def version_at_least(installed: str, lower: str) -> bool:
    """installed >= lower; with `packaging` when it is installed and can read both, else by release numbers."""
    if _Version is not None:
        try:
            return _Version(installed) >= _Version(lower)
        except _InvalidVersion:
            pass
    return _release(installed) >= _release(lower)


def parse_requirements(requirements_file: str | Path) -> list[tuple[str, str | None]]:
    """(name, lower bound) per `name>=x.y` or `name` line; comments and blank lines are skipped.
    Other specifiers (==, <, ~=, options) are refused: the file holds lower bounds only."""
    path = Path(requirements_file)
    out: list[tuple[str, str | None]] = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        match = _LINE.match(line)
        if match is None:
            raise ValueError(f"{path}:{number}: {raw.strip()!r} is not `name` or `name>=version`. Fix: write a "
                             "lower bound only, so the platform's preinstalled packages are never replaced.")
        out.append((match["name"], match["lower"]))
    return out


def requirement_status(requirements_file: str | Path,
                       installed: Mapping[str, str] | None = None) -> list[Requirement]:
    """One Requirement per line of the file: "ok", "missing" or "older" than our lower bound.
    `installed` ({name: version}, any spelling) defaults to what importlib.metadata sees."""
    versions = {canonical_name(k): v for k, v in (installed_versions() if installed is None else installed).items()}
    result = []
    for name, lower in parse_requirements(requirements_file):
        have = versions.get(canonical_name(name))
        if have is None:
            status = "missing"
        elif lower is not None and not version_at_least(have, lower):
            status = "older"
        else:
            status = "ok"
        result.append(Requirement(name, lower, have, status))
    return result


def install_missing(requirements_file: str | Path, run: Callable[..., object] = subprocess.run,
                    installed: Mapping[str, str] | None = None) -> list[str]:
    """`python -m pip install -q` the missing requirements only (with their lower bound); packages older
    than our bound are reported, not upgraded. Returns human-readable lines about what was done."""
    status = requirement_status(requirements_file, installed)
    missing = [r for r in status if r.status == "missing"]
    older = [r for r in status if r.status == "older"]
    lines: list[str] = []
    if missing:
        specs = [r.spec for r in missing]
        command = [sys.executable, "-m", "pip", "install", "-q", *specs]
        try:
            run(command, check=True)
        except subprocess.CalledProcessError as err:
            raise RuntimeError(f"`{' '.join(command)}` failed (exit {err.returncode}). Fix: check the network "
                               "(on Kaggle: Settings > Internet on), then run the setup cell again.") from err
        importlib.invalidate_caches()
        lines.append(f"installed: {', '.join(specs)}")
    for r in older:
        lines.append(f"kept {r.name} {r.installed}, older than our lower bound {r.lower} (not upgraded, to keep "
                     f"the platform's packages consistent; `pip install -U '{r.spec}'` if something fails)")
    if not missing:
        lines.insert(0, f"nothing to install: all {len(status)} requirements are present")
    return lines


# --------------------------------------------------------------------------------------------
# One line for the notebooks' setup
# --------------------------------------------------------------------------------------------
def describe(platform: str | None = None) -> str:
    """One line: the platform, where outputs go, and whether they persist."""
    platform = _platform(platform)
    root = output_root(platform)
    kept = {"colab": "Google Drive, kept across sessions", "kaggle": "kept once the notebook is committed",
            "local": "kept"}[platform]
    if not is_persistent(root, platform):
        kept = "NOT kept after this session"
    elif platform == "colab" and not drive_mounted():
        kept = "Google Drive, not mounted yet"
    return f"platform: {platform} | outputs: {root} ({kept})"
