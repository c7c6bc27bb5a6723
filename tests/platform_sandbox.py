"""A platform fact sheet (tests/platform_facts.py) played in temporary folders, for the platform tests.

`isolate` points every path constant of utils.runtime.platforms into tmp_path and clears every platform signal (no
variable, no google.colab, no IPython shell); `enter(sheet)` then gives this process what the sheet says the
platform gives a notebook: its variables, google.colab importable where it is, and its kernel's shell (a stand-in
whose class is the sheet's, e.g. google.colab._shell.Shell). `real(fact)` maps a path of a sheet
("/kaggle/input/competitions/...", "~/.cache/kagglehub/...") to where the sandbox keeps it.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

from platform_facts import COMPETITION, Platform

from utils.runtime import platforms

CLEARED_ENV = (platforms.PLATFORM_ENV, "CIFAR10_DIR", platforms.KAGGLEHUB_CACHE_ENV, *platforms.COLAB_ENV_VARS,
               *platforms.KAGGLE_ENV_VARS)
USER, SLUG = "student", "cifar10-train"      # an attached notebook: kaggle.com/code/student/cifar10-train


def make_shell(class_path: str) -> object:
    """An object whose class is `class_path` as far as anyone can tell (module and qualified name), as
    `str(get_ipython())` shows a kernel's shell: "<google.colab._shell.Shell object at 0x...>"."""
    module, _, name = class_path.rpartition(".")
    return type(name, (), {"__module__": module, "__qualname__": name})()


def isolate(monkeypatch, tmp_path: Path) -> Path:
    """No platform signal at all, every platform path inside tmp_path, cwd tmp_path/cwd."""
    for name in CLEARED_ENV:
        monkeypatch.delenv(name, raising=False)
    for name in ("google.colab", "google.colab.drive"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    drive = tmp_path / "content" / "drive"
    monkeypatch.setattr(platforms, "COLAB_DRIVE", drive)
    monkeypatch.setattr(platforms, "COLAB_MYDRIVE", drive / "MyDrive")
    monkeypatch.setattr(platforms, "KAGGLE_INPUT", tmp_path / "kaggle" / "input")
    monkeypatch.setattr(platforms, "KAGGLE_WORKING", tmp_path / "kaggle" / "working")
    monkeypatch.setattr(platforms, "KAGGLEHUB_CACHE", tmp_path / "home" / ".cache" / "kagglehub")
    monkeypatch.setattr(platforms, "_colab_importable", lambda: False)
    monkeypatch.setattr(platforms, "current_shell", lambda: None)
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    monkeypatch.chdir(cwd)
    return tmp_path


def fake_google_colab(monkeypatch) -> list[str]:
    """A google.colab in sys.modules whose drive.mount records its calls and mounts like the real one (a folder
    MyDrive/ and a mount point that utils.runtime.platforms.is_mount then reports)."""
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
    monkeypatch.setattr(platforms, "is_mount", lambda path: Path(path) in mounted)
    return calls


def enter(monkeypatch, sheet: Platform, shell: bool = True) -> None:
    """This process as a notebook kernel on `sheet`'s platform (after `isolate`): its variables, google.colab
    importable where the sheet says so, and its kernel's shell (none with shell=False: a plain `python`)."""
    for name, value in sheet.environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(platforms, "_colab_importable", lambda: platforms.COLAB_MODULE in sheet.modules)
    stand_in = make_shell(sheet.shell) if shell else None
    monkeypatch.setattr(platforms, "current_shell", lambda: stand_in)
    if sheet.competition_dir or sheet.notebook_output_dir:     # Kaggle: the input folder exists, working is writable
        platforms.KAGGLE_INPUT.mkdir(parents=True, exist_ok=True)
        platforms.KAGGLE_WORKING.mkdir(parents=True, exist_ok=True)


def real(fact: str, **names: str) -> Path:
    """Where the sandbox keeps the sheet's path `fact` ({repo}, {user} and {slug} filled in)."""
    text = fact.format(**{"repo": platforms.REPO_ROOT.name, "user": USER, "slug": SLUG, **names})
    roots = (("/kaggle/input", platforms.KAGGLE_INPUT), ("/kaggle/working", platforms.KAGGLE_WORKING),
             ("/content/drive", platforms.COLAB_DRIVE), ("~/.cache/kagglehub", platforms.kagglehub_cache()))
    for prefix, root in roots:
        if text == prefix or text.startswith(prefix + "/"):
            return root / text[len(prefix):].lstrip("/")
    raise ValueError(f"{fact}: no sandbox folder stands for it")


def output_root_of(sheet: Platform) -> Path:
    """The sheet's output root, in the sandbox ("{repo}" alone: the repository itself)."""
    return platforms.REPO_ROOT if sheet.output_root == "{repo}" else real(sheet.output_root)


def competition_cache(sheet: Platform) -> Path:
    return real(sheet.kagglehub_cache, slug=COMPETITION)
