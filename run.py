#!/usr/bin/env python
"""Run the five notebooks in order with papermill: data -> model -> train -> analysis -> submission.

    python run.py                         # `paper` with a CUDA GPU, else `smoke`
    python run.py --profile smoke         # configs/smoke.yaml
    python run.py --profile paper -p epochs 30 -p tta true
    python run.py --profile fast -p members 2 -p member 1   # member 1 of 2 alone (members over machines)
    python run.py --profile quick --committed   # 04 + 05 on the trained model in models/quick/, no training
    python run.py --list                  # the profiles there are

Each notebook gets the profile's values (configs/<profile>.yaml over utils.config.Config's defaults)
plus the `-p KEY VALUE` overrides (VALUE read as YAML: 30, 0.05, true, null, [48, 96, 128, 364]);
any Config field may be set, whether or not a notebook's `parameters` cell declares it. The whole
configuration is validated, the device checked and the output folders probed before notebook 01
starts: a bad value fails in seconds with exit code 2. Executed copies go to runs/<profile>/ (or
--out) under the same file names, with one text line per training epoch instead of progress bars.

What the notebooks print is shown while they run (a Colab or Kaggle cell that runs this command is
the only place a student looks during a run of hours): each notebook's start and end, the platform
line, every epoch line, the projected wall time and the Kaggle verdict, refusals with their fix.
What a setup cell printed before in this call (the platform line, the profile's notes, the install
report) is shown once, not before each notebook (`ShownOnce`). `--quiet` shows papermill's cell bar
instead; the executed copies keep everything either way.

A run split over sessions (`-p max_epochs_this_call N`) pauses: when notebook 03 has trained its
epochs and a member's schedule is not done, the run stops after 03 with exit code 0 and one line
(epoch k of N, what to run next); 04 and 05 run once training has finished. The first notebook that
fails stops the run with exit code 1, naming the notebook, the cell and the error; its executed copy,
traceback included, is kept. Ctrl-C stops with exit code 130; the checkpoints are whole, and the
same command resumes training where it stopped. What the kernels print outside their cells, and what
papermill says while it shuts them down after Ctrl-C, goes to kernels.log beside the executed copies.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import yaml

from utils.checkpoint import CheckpointError, load_checkpoint
from utils.config import (
    Config,
    ConfigError,
    available_profiles,
    load_config,
    profile_path,
    read_profile,
    recipe_differences,
    unknown_names,
)
from utils.runtime import platforms
from utils.runtime.device import DeviceError, resolve_device
from utils.runtime.progress import PROGRESS_ENV

NOTEBOOK_DIR = platforms.REPO_ROOT / "notebooks"
NOTEBOOKS = ["01_data.ipynb", "02_model.ipynb", "03_train.ipynb", "04_analysis.ipynb", "05_kaggle_submit.ipynb"]
COMMITTED_DIR = platforms.REPO_ROOT / "models"    # models/<profile>/best.pt: a trained model in the repository
KERNEL = "python3"
INTERRUPTED = 130          # the shell's code for a run stopped by Ctrl-C (128 + SIGINT)


class UsageError(Exception):
    """A bad command line or configuration: reported in one message, exit code 2, before any notebook runs."""


def default_profile() -> tuple[str, str]:
    import torch
    if torch.cuda.is_available():
        return "paper", f"a CUDA GPU is available ({torch.cuda.get_device_name(0)})"
    return "smoke", "no CUDA GPU here, and the paper profile needs one"


def describe(name: str) -> str:
    """The first comment line of configs/<name>.yaml."""
    for line in profile_path(name).read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def parse_overrides(pairs: list[list[str]]) -> dict[str, Any]:
    values = {key: yaml.safe_load(value) for key, value in pairs}
    if "profile" in values:
        raise UsageError("run.py: choose the profile with --profile NAME, not -p profile")
    unknown = unknown_names(values)
    if unknown:
        raise UsageError(f"run.py: unknown parameter(s) {unknown}; valid names are the fields of "
                         f"utils.config.Config: {', '.join(Config.field_names())}")
    return values


def check_run(profile: str, overrides: dict[str, Any]) -> tuple[Config, dict[str, Any]]:
    """The validated Config, its device and its output folders; the parameters every notebook gets."""
    try:
        cfg = load_config(profile, **overrides)
        resolve_device(cfg.device)
        for setting, folder in (("run_dir", cfg.run_path), ("figures_dir", cfg.figures_path),
                                ("submission_path", cfg.submission_file.parent)):
            platforms.ensure_writable(folder, setting)
    except (ConfigError, DeviceError, platforms.OutputError) as err:
        raise UsageError(f"run.py: {err}") from None
    return cfg, {**read_profile(profile), **overrides, "profile": profile}


def committed_run(profile: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """--committed: the overrides that point 04 and 05 at models/<profile>/best.pt, once it is known to exist;
    figures and submission go to runs/<profile>-committed/ unless -p says otherwise."""
    best = COMMITTED_DIR / profile / "best.pt"
    if not best.is_file():
        have = sorted(p.parent.name for p in COMMITTED_DIR.glob("*/best.pt"))
        raise UsageError(f"run.py: --committed: no committed model for profile '{profile}' ({best}); committed: "
                         f"{', '.join(have) or 'none'}. Train it instead: leave out --committed.")
    if "run_dir" in overrides:
        raise UsageError(f"run.py: --committed reads {best.parent}; leave out -p run_dir.")
    outputs = f"runs/{profile}-committed"    # a student's own run keeps its figures and submission.csv
    return {"figures_dir": f"{outputs}/figures", "submission_path": f"{outputs}/submission.csv", **overrides,
            "run_dir": str(best.parent)}


def check_committed_recipe(cfg: Config) -> None:
    """The committed best.pt in cfg.run_path holds cfg's recipe (the profile with its -p values)."""
    best = cfg.run_path / "best.pt"
    try:
        differences = recipe_differences(load_checkpoint(best)["config"], cfg)
    except CheckpointError as err:       # a clone cut short, a file replaced by hand
        raise UsageError(f"run.py: --committed: {err}") from None
    if differences:
        raise UsageError(f"run.py: --committed: {best} was trained with another recipe than profile '{cfg.profile}' "
                         f"with these overrides ({'; '.join(differences)}). Leave those -p out, or train without "
                         "--committed.")


def member_plan(cfg: Config) -> str:
    """What `members` / `-p member K` mean for this run: which members 03 trains, where, and what 04 / 05 use."""
    trains = (f"member {cfg.member} alone (into {cfg.member_path(cfg.member)}; the others can train elsewhere with "
              f"-p member K and be copied into {cfg.run_path})" if cfg.member is not None
              else f"members 0-{cfg.members - 1}, one process each, one per GPU at a time")
    return (f"members: 03_train trains {trains}; 04_analysis and 05_kaggle_submit use every finished member found "
            f"under {cfg.run_path} (member k >= 1 in member-k/).")


def check_kernel() -> None:
    """Warn when the `python3` kernel would start an interpreter other than this one."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    try:
        argv0 = KernelSpecManager().get_kernel_spec(KERNEL).argv[0]
    except NoSuchKernel:
        raise UsageError(f"run.py: no '{KERNEL}' Jupyter kernel; install one with: "
                         f"{sys.executable} -m ipykernel install --user") from None
    # jupyter_client replaces a bare `python` / `python3` with sys.executable; anything else is used as is.
    bare = {"python", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}"}
    if argv0 not in bare and Path(argv0).resolve() != Path(sys.executable).resolve():
        print(f"run.py: warning: the '{KERNEL}' kernel runs {argv0}, not {sys.executable}; to use this "
              f"environment: {sys.executable} -m ipykernel install --user --name {KERNEL}", file=sys.stderr)


def quiet_kernels(log_path: Path):
    """A kernel manager whose kernels write their process-level stderr (transport warnings, shutdown noise after
    Ctrl-C) to `log_path` instead of this terminal; what cells print still goes into the notebooks."""
    from jupyter_client.manager import AsyncKernelManager

    class QuietKernelManager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
            with open(log_path, "ab") as log:
                kw["stderr"] = log
                await super()._async_launch_kernel(kernel_cmd, **kw)

        # jupyter_client 7.4.9 (Colab's and Kaggle's pin: googlecolab/backend-info pip-freeze.gpu.txt) starts the
        # kernel through `_launch_kernel`, bound to the base class's function; 8.x through `_async_launch_kernel`.
        _launch_kernel = _async_launch_kernel

    return QuietKernelManager


def quiet_after_ctrl_c(log_path: Path) -> None:
    """From Ctrl-C on, what papermill and asyncio log goes to `log_path`, not this terminal, where run.py's one line
    on resuming is all a student needs. Papermill shuts the kernel down on the event loop where nbclient's tasks for
    the interrupted cell still wait; one that wakes after the kernel has gone logs "Kernel died while waiting for
    execute reply." and, when the task is collected (as late as the process's exit), an unretrieved DeadKernelError
    traceback (a race, which CI lost with its cores shared). So the logs stay there for the rest of the process.
    A SIGINT ignored when run.py started (a background job) stays ignored."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return

    def on_ctrl_c(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)   # a second Ctrl-C: Python's usual one
        handler = logging.FileHandler(log_path)
        for name in ("papermill", "asyncio"):
            logging.getLogger(name).addHandler(handler)
            logging.getLogger(name).propagate = False
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_ctrl_c)


def paused(cfg: Config) -> str | None:
    """After notebook 03: None when every member it trains has finished; else the line that ends the run."""
    from utils.members import unfinished_note
    note = unfinished_note(cfg)
    if note is None:
        return None
    return (f"run.py: paused after {NOTEBOOKS[2]}: {note}. {NOTEBOOKS[3]} and {NOTEBOOKS[4]} run once training "
            f"has finished. Next: {platforms.how_to_continue()}")


class ShownOnce:
    """What the notebooks print, on its way to `out` (papermill's `stdout_file`): passed on as it comes, except a
    whole line in `said`, which is left out. run.py puts there what it printed itself and, after each notebook, what
    that notebook's setup cell printed (`setup_said`): every setup cell prints the same platform line, notes and
    install report, which a run's stream then shows once. A line's start is held back only while it may become
    such a line."""

    def __init__(self, out: TextIO, said: set[str]) -> None:
        self.out, self.said = out, said
        self.pending = ""            # the start of a line, held back
        self.mid_line = False        # the start of the current line was passed on already

    def write(self, text: str) -> int:
        *lines, rest = (self.pending + text).split("\n")
        for line in lines:
            if self.mid_line or line not in self.said:
                self.out.write(line + "\n")
            self.mid_line = False
        self.pending = rest
        if rest and (self.mid_line or not any(line.startswith(rest) for line in self.said)):
            self.out.write(rest)
            self.pending, self.mid_line = "", True
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    def end(self) -> None:
        """At the end of a notebook: pass on what was held back."""
        if self.pending:
            self.out.write(self.pending + "\n")
        self.pending, self.mid_line = "", False
        self.out.flush()


def setup_said(executed: Path) -> set[str]:
    """The lines the setup cell (`setup(globals())`) of an executed notebook printed, blank ones left out."""
    import nbformat
    if not executed.is_file():
        return set()
    cells = [c for c in nbformat.read(executed, as_version=4).cells
             if c.cell_type == "code" and "setup(globals())" in c.source]
    text = "".join(out.get("text", "") for cell in cells[:1] for out in cell.get("outputs", [])
                   if out.get("output_type") == "stream" and out.get("name") == "stdout")
    return {line for line in text.splitlines() if line.strip()}


def run(profile: str, overrides: list[list[str]], out_dir: Path | None = None, quiet: bool = False,
        committed: bool = False) -> int:
    values = parse_overrides(overrides)
    if committed:
        values = committed_run(profile, values)
    cfg, params = check_run(profile, values)
    if committed:
        check_committed_recipe(cfg)
    notebooks = NOTEBOOKS[3:] if committed else NOTEBOOKS     # a committed model: no data, model or training step
    check_kernel()
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    out_dir = out_dir or platforms.REPO_ROOT / "runs" / (f"{profile}-committed" if committed else profile)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Every notebook gets every field; the setup cell reads them from its globals, declared or not.
    logging.getLogger("papermill").addFilter(lambda record: "Passed unknown parameter" not in record.getMessage())
    os.environ[PROGRESS_ENV] = "lines"       # the kernels inherit it: epoch lines, not frozen widget bars
    kernels_log = out_dir / "kernels.log"
    kernel_manager = quiet_kernels(kernels_log)
    quiet_after_ctrl_c(kernels_log)
    platform = platforms.describe()   # which platform (and the signal that decided it), where relative outputs go
    print(platform)
    print(f"profile {profile}: executed notebooks -> {out_dir}, checkpoints -> {cfg.run_path}, "
          f"figures -> {cfg.figures_path}, submission -> {cfg.submission_file}")
    for note in cfg.notes():
        print(note)
    if cfg.members > 1 or cfg.member is not None:
        print(member_plan(cfg))
    shown = ShownOnce(sys.stdout, {platform, *cfg.notes()})   # each setup cell says these again

    timings = []
    for nb in notebooks:
        i = NOTEBOOKS.index(nb) + 1
        output = out_dir / nb
        print(f"\n[{i}/{len(NOTEBOOKS)}] {nb}", flush=True)
        start = time.perf_counter()
        try:
            pm.execute_notebook(str(NOTEBOOK_DIR / nb), str(output), parameters=params, kernel_name=KERNEL,
                                cwd=str(NOTEBOOK_DIR), progress_bar=quiet, kernel_manager_class=kernel_manager,
                                stdout_file=None if quiet else shown,   # what cells print, as they print it
                                stderr_file=None if quiet else sys.stderr)
        except KeyboardInterrupt:
            print(f"\nrun.py: interrupted during {nb}. Checkpoints in {cfg.run_path} are whole; run the same "
                  "command again to resume (03_train continues from last.pt).", file=sys.stderr)
            return INTERRUPTED
        except PapermillExecutionError as err:
            source = "\n".join("    " + line for line in err.source.splitlines()[:6])
            print(f"\nrun.py: {nb} FAILED in cell In [{err.exec_count}] (papermill's cell index {err.cell_index}):\n"
                  f"{source}\n  {err.ename}: {err.evalue}\n"
                  f"The executed copy, with the full traceback, is {output}", file=sys.stderr)
            return 1
        except Exception as err:   # the kernel died, could not start, a cell timed out, ...
            print(f"\nrun.py: {nb} FAILED: {type(err).__name__}: {err}\nPartial executed copy (if any): {output}",
                  file=sys.stderr)
            return 1
        finally:
            shown.end()
        shown.said |= setup_said(output)
        timings.append((nb, time.perf_counter() - start))
        print(f"[{i}/{len(NOTEBOOKS)}] {nb} done in {timings[-1][1]:.0f} s", flush=True)
        pause = paused(cfg) if nb == NOTEBOOKS[2] else None
        if pause:
            print(f"\n{pause}", flush=True)
            return 0

    print(f"\nAll {len(notebooks)} notebooks ran (profile {profile}{', committed model' if committed else ''}):")
    for nb, seconds in timings:
        print(f"  {nb:<24} {seconds:7.1f} s")
    print(f"  {'total':<24} {sum(s for _, s in timings):7.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", help="configs/<PROFILE>.yaml; default: paper with a CUDA GPU, else smoke")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="override one parameter (VALUE parsed as YAML); repeatable")
    parser.add_argument("--list", action="store_true", help="list the profiles and exit")
    parser.add_argument("--out", type=Path, help="folder for the executed notebooks; default runs/<profile>/")
    parser.add_argument("--committed", action="store_true",
                        help="run 04 and 05 on the trained model committed in models/<PROFILE>/ (no training)")
    parser.add_argument("--quiet", action="store_true",
                        help="show papermill's cell bar instead of what the notebooks print (epoch lines, estimates)")
    args = parser.parse_args(argv)

    if args.list:
        for name in available_profiles():
            print(f"{name:<12} {describe(name)}")
        return 0
    profile = args.profile
    if profile is None:
        profile, why = default_profile()
        print(f"run.py: no --profile given; using '{profile}': {why}.")
    if profile not in available_profiles():
        print(f"run.py: no profile '{profile}'; available: {', '.join(available_profiles())}", file=sys.stderr)
        return 2
    try:
        return run(profile, args.parameter, out_dir=args.out, quiet=args.quiet, committed=args.committed)
    except UsageError as err:
        print(err, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nrun.py: interrupted before any notebook ran; nothing was changed.", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
