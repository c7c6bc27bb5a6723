"""Ensemble members: train several models of one recipe, one fresh process each, side by side on the devices there are.

Design choices:
- A member is `utils.train.fit` of the same Config with `member = k`: its own training seed and folder
  (`Config.training_seed`, `Config.member_path`: member 0 = run_path, member k = run_path / "member-k"), the
  data of `seed`. This module only launches, watches and reports; it trains nothing itself.
- One process per member, each a fresh interpreter (`python -m utils.members`) seeing one GPU, its environment
  and its end with the launcher as utils.runtime.launch sets them (Kaggle's T4 x2: two members side by
  side); with one GPU, or a CPU, the members run one after another. `devices` may name the slots instead
  (["cpu", "cpu"]: two CPU processes, the tests' stand-in for two GPUs); CPU slots that run side by side share
  the cores (`threads` each; default: the cores divided among them).
- Each member's lines come back prefixed ("[member 1] epoch   3 ...") and are appended to `train.log` in
  its folder. A process that dies (out of memory, killed) does not stop the others; the call then ends with
  a `MemberError` naming each dead member, how it ended and its log. Calling again trains only what is
  unfinished: finished members are skipped, the others resume from their own last.pt.
- A member process never outlives its launcher (`--launcher-pid`, utils.runtime.launch.end_with_launcher); its
  last.pt, written atomically each epoch, is what a rerun resumes.
- Before any process starts, every member folder's last.pt is checked as resume checks it
  (`utils.resume.check_resumable`): one of another recipe is refused, naming the member.
- Inference never imports this module (utils.ensemble reads the members' best.pt).
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .checkpoint import CheckpointError, Progress, load_checkpoint, read_progress
from .config import Config
from .resume import check_resumable
from .runtime import platforms
from .runtime.launch import child_env, end_with_launcher, how_it_ended
from .runtime.locate import TRAIN_LOG


class MemberError(RuntimeError):
    """One or more member processes died; the message names each, how it ended, and its log."""


# --------------------------------------------------------------------------------------------
# Where the members stand (read from their folders)
# --------------------------------------------------------------------------------------------
@dataclass
class MemberRun:
    member: int
    folder: Path
    training_seed: int
    progress: Progress | None                     # None: not started (no last.pt)
    best_val_acc: float | None = None
    history: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def finished(self) -> bool:
        return bool(self.progress is not None and self.progress.finished)

    @property
    def log_path(self) -> Path:
        return self.folder / TRAIN_LOG


def member_run(cfg: Config, member: int) -> MemberRun:
    """Member `member`'s state from its folder: last.pt's progress record and history.csv."""
    return _run_in(cfg.member_path(member), member, cfg.training_seed(member))


def _run_in(folder: Path, member: int, training_seed: int) -> MemberRun:
    last, history = folder / "last.pt", folder / "history.csv"
    progress = best = None
    if last.is_file():
        ckpt = load_checkpoint(last)
        progress, best = read_progress(ckpt, last), ckpt.get("best_val_acc")
    return MemberRun(member, folder, training_seed, progress, best,
                     pd.read_csv(history) if history.is_file() else None)


def member_runs(cfg: Config, members: Sequence[int] | None = None) -> list[MemberRun]:
    return [member_run(cfg, k) for k in (range(cfg.members) if members is None else members)]


def status_table(runs: Sequence[MemberRun]) -> pd.DataFrame:
    """One row per member: folder, training seed, epochs done / planned, finished, and its last measure."""
    rows = []
    for r in runs:
        p, h = r.progress, r.history
        monitor = (h["monitor_acc"].dropna() if h is not None and "monitor_acc" in h else pd.Series(dtype=float))
        rows.append({"member": r.member, "folder": str(r.folder), "training seed": r.training_seed,
                     "epochs done": p.epochs_done if p else 0, "epochs planned": p.epochs_planned if p else None,
                     "finished": r.finished, "stopped early": bool(p and p.stopped_early),
                     "best val acc": r.best_val_acc,
                     "last monitor acc": float(monitor.iloc[-1]) if len(monitor) else None})
    return pd.DataFrame(rows).set_index("member")


def unfinished_note(cfg: Config) -> str | None:
    """None when every member this run trains (`cfg.member_indices`) has finished (or stopped early), and so has the
    self-training round where it is on; else where the unfinished ones stand: "member 0 at epoch 1 of 3
    (max_epochs_this_call 1)", "the self-training round at epoch 0 of 3"."""
    open_runs = [r for r in member_runs(cfg, cfg.member_indices) if not r.finished]
    if open_runs:
        where = ", ".join(f"member {r.member} at epoch {r.progress.epochs_done if r.progress else 0} of {cfg.epochs}"
                          for r in open_runs)
    elif cfg.self_training and cfg.member is None and not (student := student_run(cfg)).finished:
        where = (f"the self-training round at epoch {student.progress.epochs_done if student.progress else 0} of "
                 f"{cfg.epochs}")
    else:
        return None
    return where + (f" (max_epochs_this_call {cfg.epoch_limit})" if cfg.epoch_limit else "")


def student_run(cfg: Config) -> MemberRun:
    """The self-training round's student (utils.self_training), read from its folder like a member."""
    return _run_in(cfg.student_path, 0, cfg.training_seed(0))


# --------------------------------------------------------------------------------------------
# Launching
# --------------------------------------------------------------------------------------------
def default_devices(cfg: Config) -> list[str]:
    """One slot per visible CUDA device when cfg.device allows CUDA (auto / cuda), else the one device there is."""
    import torch
    if cfg.device in ("auto", "cuda") and torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if cfg.device == "auto":
        from .runtime.device import pick_device
        return [str(pick_device("auto"))]
    return [cfg.device]


def _unfinished(cfg: Config, indices: Sequence[int], log: Callable[[str], object]) -> list[int]:
    """The members still to train; a member folder whose last.pt is another recipe's is refused here."""
    todo, problems = [], []
    for k in indices:
        last = cfg.member_path(k) / "last.pt"
        if cfg.resume and last.is_file():
            ckpt = load_checkpoint(last)
            try:
                check_resumable(ckpt, cfg, k, last)
            except CheckpointError as err:
                problems.append(f"member {k}: {err}")
                continue
            progress = read_progress(ckpt, last)
            if progress.finished:
                log(f"[member {k}] already trained ({progress.describe()}): {last.parent}; skipped")
                continue
        todo.append(k)
    if problems:
        raise CheckpointError("\n".join(problems))
    return todo


def train_members(cfg: Config, devices: Sequence[str] | None = None, log: Callable[[str], object] = print,
                  threads: int | None = None) -> list[MemberRun]:
    """Train the unfinished members of `cfg.member_indices` (all members, or `cfg.member` alone), one fresh
    process each, as many at a time as there are `devices` (default: every visible GPU, else the one device);
    return every member's state. Raises MemberError, after the others have finished, when a process died."""
    indices = cfg.member_indices
    todo = _unfinished(cfg, indices, log)
    slots = list(devices) if devices is not None else default_devices(cfg)
    cpu_slots = sum(d == "cpu" for d in slots)
    if threads is None and cpu_slots > 1 and len(todo) > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores // min(cpu_slots, len(todo)))
    at_once = max(1, min(len(slots), len(todo)))
    if not todo:
        return member_runs(cfg, indices)
    base = cfg.to_dict()
    base["run_dir"] = str(cfg.run_path)           # resolved here: the same folder whatever the child detects
    log(f"Training member(s) {', '.join(map(str, todo))} of {cfg.members}: {at_once} at a time on "
        f"{', '.join(slots[:at_once])}" + (f", {threads} thread(s) each" if threads else "") +
        f"; each in a fresh process, its lines prefixed and kept in <member folder>/{TRAIN_LOG}.")

    lines: queue.Queue = queue.Queue()
    pending, free = deque(todo), list(range(len(slots)))
    running: dict[int, tuple[subprocess.Popen, int, object, float]] = {}
    dead: list[str] = []
    started_all = time.perf_counter()

    def start(k: int, slot: int) -> None:
        env, device = child_env(slots[slot])
        folder = cfg.member_path(k)
        folder.mkdir(parents=True, exist_ok=True)
        logfile = open(folder / TRAIN_LOG, "a", buffering=1)  # noqa: SIM115 (closed when the process ends)
        config = json.dumps({**base, "member": k, "device": device})
        cmd = [sys.executable, "-m", "utils.members", "--config", config, "--at-once", str(at_once),
               "--in-call", str(len(todo)), "--launcher-pid", str(os.getpid())]
        cmd += ["--threads", str(threads)] if threads else []
        proc = subprocess.Popen(cmd, cwd=platforms.REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        logfile.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} member {k} on {slots[slot]} (pid {proc.pid}) ===\n")
        log(f"[member {k}] started on {slots[slot]} (pid {proc.pid}), log: {folder / TRAIN_LOG}")

        def read() -> None:
            for line in proc.stdout:
                lines.put((k, line.rstrip("\n")))
            lines.put((k, None))

        threading.Thread(target=read, daemon=True).start()
        running[k] = (proc, slot, logfile, time.perf_counter())

    try:
        while pending or running:
            while pending and free:
                start(pending.popleft(), free.pop(0))
            try:
                k, line = lines.get(timeout=1.0)
            except queue.Empty:
                continue
            proc, slot, logfile, began = running[k]
            if line is not None:
                logfile.write(line + "\n")
                log(f"[member {k}] {line}")
                continue
            code = proc.wait()                  # its output has ended: the process has (or is about to)
            logfile.close()
            del running[k]
            free.append(slot)
            if code == 0:
                log(f"[member {k}] done in {time.perf_counter() - began:.0f} s")
            else:
                tail = (cfg.member_path(k) / TRAIN_LOG).read_text().splitlines()[-3:]
                dead.append(f"member {k} died ({how_it_ended(code)}); its log: {cfg.member_path(k) / TRAIN_LOG}"
                            + "".join(f"\n    {t}" for t in tail))
                log(f"[member {k}] DIED ({how_it_ended(code)}); the other members go on")
    except BaseException:                       # Ctrl-C, or the caller's error: stop the children too
        for proc, *_ in running.values():
            proc.terminate()
        for proc, *_ in running.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise
    log(f"Member(s) {', '.join(map(str, todo))} ran in {time.perf_counter() - started_all:.0f} s, "
        f"{at_once} at a time.")
    if dead:
        raise MemberError("\n".join(dead) + "\nThe other members went on. Run notebook 03 again (or the same "
                          "command): it trains only what is unfinished, each member resuming from its last.pt.")
    return member_runs(cfg, indices)


# --------------------------------------------------------------------------------------------
# The member process: python -m utils.members --config JSON
# --------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train one ensemble member (started by train_members).")
    parser.add_argument("--config", required=True, help="the member's Config as JSON (member and device set)")
    parser.add_argument("--at-once", type=int, default=1, help="members training side by side (for the estimate)")
    parser.add_argument("--in-call", type=int, default=1, help="members this call trains (for the estimate)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--launcher-pid", type=int, default=None, help="end when this parent process is gone")
    args = parser.parse_args(argv)
    if args.launcher_pid is not None:
        end_with_launcher(args.launcher_pid)
    import torch

    from .train import fit
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = Config.from_params(json.loads(args.config))
    fit(cfg, progress=False, log=lambda line: print(line, flush=True), members_at_once=args.at_once,
        members_in_call=args.in_call)
    return 0


if __name__ == "__main__":
    sys.exit(main())
