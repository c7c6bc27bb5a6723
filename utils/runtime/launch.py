"""Starting training processes and ending them with their launcher: the plumbing under utils.members.

- A child is a FRESH interpreter (subprocess: fork + exec, never a fork of the caller): a notebook kernel has
  already touched CUDA, which a forked child cannot use. It sees one GPU through CUDA_VISIBLE_DEVICES, writes
  progress as lines (no bars: its output is prefixed and logged by the launcher) and finds the repository on
  PYTHONPATH.
- A child never outlives its launcher: SIGTERM or SIGKILL to the launcher (a kernel restarted, a job cancelled)
  skips its cleanup, so the child watches its parent and ends itself once that is gone (`end_with_launcher`);
  what it wrote atomically (last.pt each epoch) is what a rerun resumes. benchmarks/ use it the same way.
- How a child ended is said in words, with the likely cause of a SIGKILL (the system's OOM killer).
"""
from __future__ import annotations

import os
import signal
import threading
import time

from . import platforms
from .progress import PROGRESS_ENV


def child_env(device: str) -> tuple[dict[str, str], str]:
    """The environment of a training process on `device` (a slot: "cpu", "cuda:1", ...) and the device name it
    uses inside: one GPU through CUDA_VISIBLE_DEVICES (so "cuda"), progress as lines, the repository importable."""
    env = {**os.environ, PROGRESS_ENV: "lines", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(platforms.REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        env["CUDA_VISIBLE_DEVICES"] = visible[index] if index < len(visible) else str(index)
        return env, "cuda"
    return env, device


def how_it_ended(code: int) -> str:
    if code < 0:
        name = signal.Signals(-code).name
        return f"killed by {name}" + (" (out of memory? the system's OOM killer sends SIGKILL)"
                                      if name == "SIGKILL" else "")
    return f"exit code {code}"


def end_with_launcher(launcher_pid: int, every_s: float = 1.0) -> None:
    """End this process (SIGTERM to itself) once its parent is no longer `launcher_pid`, checked every `every_s`."""
    def watch() -> None:
        while os.getppid() == launcher_pid:
            time.sleep(every_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()
