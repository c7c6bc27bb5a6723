"""How long training will take, said before it does: the measured wall time projected, with advice where it matters.

Training measures the seconds per step over a few steps of a call's first epoch (utils.train.TIMING_STEPS) and
hands the number here, with plain values (epochs, members, steps per epoch, the run folder): this module imports
nothing from the student-facing modules, only its sibling `platforms`.

Decisions, and why:
- `wall_time_estimate` projects the measured speed onto this member's epochs left, this call (when
  `max_epochs_this_call` cuts it) and every member of the recipe (`members_at_once` side by side, each at this
  speed). Training steps only: validation and saving add a little, and the line says so.
- On Kaggle it also says whether this call fits the session, or which `max_epochs_this_call` splits it, and how the
  next session continues (docs/platforms.md, "A later session"). A notebook session ends after
  `KAGGLE_SESSION_HOURS`; `KAGGLE_SPARE_HOURS` of it are kept for setup, notebooks 04 and 05 and saving the version.
- `cpu_time_estimate`: full data on a CPU takes hours, so training says so and names the way out (a GPU runtime,
  or the `smoke` profile), then continues.
- The platform is `platforms.detect()` unless given (`platform="kaggle"`, or `$CIFAR10_PLATFORM`, in tests).
"""
from __future__ import annotations

import math
from pathlib import Path

from . import platforms

# Kaggle's Notebooks documentation, "Technical Specifications" (https://www.kaggle.com/docs/notebooks): "12 hours
# execution time for CPU and GPU notebook sessions"; docs/platforms.md names the 12-hour limit to students.
KAGGLE_SESSION_HOURS = 12.0    # a Kaggle notebook session (interactive or Save Version) ends after 12 h
KAGGLE_SPARE_HOURS = 1.0       # of which kept for setup, notebooks 04 / 05 and saving the version


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.1f} min" if seconds >= 90 \
        else f"{seconds:.0f} s"


def cpu_time_estimate(seconds_per_step: float, steps_per_epoch: int, epochs_left: int) -> str:
    """Full data on a CPU: the hours it will take, and how to make them minutes."""
    hours = seconds_per_step * steps_per_epoch * epochs_left / 3600
    return (f"Training on the CPU: {seconds_per_step:.2f} s per step here, so about {hours:.1f} h for the "
            f"{epochs_left} epochs left (measured over its first steps). For minutes, not hours: switch to a GPU "
            "runtime (Colab: Runtime > Change runtime type > T4 GPU; Kaggle: Settings > Accelerator > GPU T4 x2), "
            "or try the pipeline with profile 'smoke'. Continuing.")


def wall_time_estimate(seconds_per_step: float, steps_per_epoch: int, *, device: str, epochs: int, epochs_done: int,
                       end_epoch: int, run_path: str | Path, members: int = 1, members_at_once: int = 1,
                       members_in_call: int = 1, epoch_limit: int | None = None, measured: str = "its first steps",
                       platform: str | None = None) -> list[str]:
    """The measured wall time projected: this member's epochs left (of `epochs`, `epochs_done` done), this call (up
    to `end_epoch`; `epoch_limit` is `max_epochs_this_call`), the whole schedule of all `members` (`members_at_once`
    training side by side, each at this speed; `members_in_call` of them in this call); on Kaggle (`platform`,
    default `platforms.detect()`), whether this call fits the 12-hour session or which `max_epochs_this_call` splits
    it, continued from `run_path`. Training steps only: validation and saving add a little."""
    per_epoch = seconds_per_step * steps_per_epoch
    left, now = epochs - epochs_done, end_epoch - epochs_done
    rounds_all = math.ceil(members / max(1, members_at_once))
    rounds_call = math.ceil(max(1, members_in_call) / max(1, members_at_once))
    lines = [f"Wall time on {device}, measured over {measured}: {seconds_per_step:.3f} s per step, "
             f"{_duration(per_epoch)} per epoch of {steps_per_epoch} steps; this member's {left} epoch(s) left: "
             f"{_duration(per_epoch * left)}" +
             (f"; all {members} members x {epochs} epochs, {min(members_at_once, members)} at a time: "
              f"{_duration(per_epoch * epochs * rounds_all)}" if members > 1 else "") +
             (f"; this call ({now} epoch(s) per member, max_epochs_this_call {epoch_limit or now}): "
              f"{_duration(per_epoch * now * rounds_call)}" if now < left else "") +
             " (training steps; validation and saving add a little)."]
    if (platform or platforms.detect()) == "kaggle":
        session = per_epoch * now * rounds_call
        usable = (KAGGLE_SESSION_HOURS - KAGGLE_SPARE_HOURS) * 3600
        if session <= usable:
            lines.append(f"Kaggle: this call fits the {KAGGLE_SESSION_HOURS:.0f}-hour session (about "
                         f"{session / 3600:.1f} h of it).")
        else:
            per_session = max(1, int(usable // (per_epoch * rounds_call)))
            lines.append(
                f"Kaggle: this call does NOT fit the {KAGGLE_SESSION_HOURS:.0f}-hour session (about "
                f"{session / 3600:.1f} h): set max_epochs_this_call = {per_session} (about "
                f"{per_epoch * per_session * rounds_call / 3600:.1f} h per session; run.py: -p max_epochs_this_call "
                f"{per_session}), Save Version, and in the next session attach this notebook's output (Add Input > "
                f"Your Work) and run it again: its run folder is copied back into {run_path} and training "
                "resumes from last.pt; or train the members in separate notebooks with `member`.")
    return lines
