"""One way to write a file: to a temporary file beside it, then renamed over it.

Design choices:
- Every file the project writes (checkpoints, history, figures, tables, the submission, benchmark JSON)
  goes through `atomic_write`: the bytes go to a temporary file in the same folder, are flushed and
  fsynced, optionally checked, and only then `os.replace`d over the target. A crash, a kill, a full disk or
  a failed check at any point leaves the previous file whole and no partial file behind (a kill leaves at
  most a hidden `.NAME.*.tmp`, which `remove_stale_temporaries` clears on the next run).
- A file that cannot be written (a read-only folder, a full disk, a parent that is a file) raises
  `OutputError` naming the path, what it is, the reason and the setting to change, instead of an errno deep
  in a library. Other exceptions (a failed check) pass through unchanged.
- New files get the mode `open()` would give them (0o666 less the umask); `mkstemp` alone makes them 0600.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from .platforms import OutputError, explain_os_error, refuse_unsafe


def new_file_mode() -> int:
    """The mode open() gives a new file (0o666 less the umask); mkstemp's temp files are 0600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any], what: str = "output",
                 setting: str | None = None, check: Callable[[Path], Any] | None = None) -> Path:
    """Write `path` through `write(binary_file)`, then `check(temporary_path)` if given, then rename into place.

    `what` and `setting` name the file and the Config field that chooses its place, for the error message."""
    path = Path(path)
    refuse_unsafe(path.parent, setting or what)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(tmp, new_file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(Path(tmp))
        os.replace(tmp, path)
        tmp = None
    except OutputError:
        raise
    except OSError as exc:
        reason, fix = explain_os_error(exc, path.parent, setting or what)
        raise OutputError(path, what, f"{reason}; nothing was replaced: the previous file, if any, is intact",
                          fix) from exc
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return path


def write_text(path: str | Path, content: str, what: str = "output", setting: str | None = None) -> Path:
    return atomic_write(path, lambda f: f.write(content.encode()), what, setting)


def write_json(path: str | Path, obj: Any, what: str = "JSON results", setting: str | None = None) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=float) + "\n", what, setting)


def remove_stale_temporaries(folder: Path) -> None:
    """Delete the `.NAME.*.tmp` files a process killed mid-write left; the real files are whole."""
    if folder.is_dir():
        for stale in folder.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
