"""Checkpoint files: written whole or not at all, read without running code, checked against the model.

Design choices:
- `best.pt` holds what inference needs (weights, the config, the normalisation statistics, the class
  names); `last.pt` adds what training needs to continue (optimizer, schedule, EMA, loss scaler, history,
  early-stopping state). Both are written through `utils.runtime.files.atomic_write`: a kill mid-save leaves the
  previous file whole.
- Read with `torch.load(weights_only=True)`: a checkpoint is data from outside, and only tensors and plain
  containers can come out of it. Every failure names the file and what to do.
- Inference (notebooks 04 and 05, the submission) imports this module, never the trainer.
- Format 2 (this release) stores the EMA as {"updates", "module"} and the loss scaler's state; format 1
  checkpoints (the first release) are still read: their EMA state (torch's AveragedModel layout) is
  converted on load.
- How far the run got is recorded where inference reads: both files carry `progress` (epochs done and
  planned, finished, stopped early, the member and its training seed), and training rewrites best.pt's
  record every epoch even when its weights stay (its `epoch` is the epoch of those weights, not how far the
  run got). A checkpoint from before the record existed still loads: `read_progress` then asks the last.pt
  beside it, and says "unknown" when there is none (`Progress.finished is None`).
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import Config, recipe_differences
from .model import CustomResNet, build_model
from .runtime import locate, platforms
from .runtime.files import atomic_write

CHECKPOINT_FORMAT = "cifar10-customresnet/2"
READABLE_FORMATS = ("cifar10-customresnet/1", CHECKPOINT_FORMAT)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or belongs to another model or recipe; the message says how."""


def save_checkpoint(obj: dict[str, Any], path: Path) -> Path:
    return atomic_write(path, lambda f: torch.save(obj, f), what="checkpoint", setting="run_dir")


def _upgrade(ckpt: dict[str, Any]) -> dict[str, Any]:
    """A format-1 checkpoint in format 2's layout (only the EMA state differs)."""
    ema = ckpt.get("ema")
    if ckpt["format"] == READABLE_FORMATS[0] and ema is not None:
        ckpt["ema"] = {"updates": int(ema["n_averaged"]),
                       "module": {k[len("module."):]: v for k, v in ema.items() if k.startswith("module.")}}
    ckpt.setdefault("scaler", None)
    ckpt.setdefault("progress", None)
    ckpt["format"] = CHECKPOINT_FORMAT
    return ckpt


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True` (no code can run); clear errors for missing/corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint here. Train first (notebook 03 / utils.train.fit) or "
                              "point run_dir at the folder that holds best.pt and last.pt.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({type(exc).__name__}: {exc}). "
                              "It is corrupt or not one of ours; delete it to start that run afresh.") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") not in READABLE_FORMATS:
        raise CheckpointError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint.")
    return _upgrade(ckpt)


PATH_FIELDS = ("data_dir", "run_dir", "figures_dir", "submission_path", "nolabel_path")


def export_half(source: str | Path, target: str | Path) -> Path:
    """A best.pt made to be committed (models/<profile>/best.pt, `python run.py --profile P --committed`): its
    floating-point weights in fp16, half the size (load_state_dict casts them back to the model's fp32), and the
    paths of the machine that trained it reset to the defaults. Everything else (recipe, progress, statistics) is
    kept, so it is read like any best.pt."""
    ckpt = load_checkpoint(source)
    defaults = Config().to_dict()
    ckpt["config"] = {**ckpt["config"], **{k: defaults[k] for k in PATH_FIELDS}}
    ckpt["model"] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(ckpt, Path(target))


def load_state_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """load_state_dict, but a mismatch is reported as the keys and shapes that differ."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        lines = []
        if missing:
            lines.append(f"missing in checkpoint: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            lines.append(f"not in model: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        lines += [f"shape differs: {s}" for s in shapes[:8]]
        raise CheckpointError(f"{source} does not fit this model (another architecture or profile?):\n  "
                              + "\n  ".join(lines))
    model.load_state_dict(state)


def load_trained_model(path: str | Path, device: torch.device | str = "cpu",
                       cfg: Config | None = None) -> tuple[CustomResNet, dict[str, Any]]:
    """The model stored in `best.pt` (or `last.pt`), in eval mode, plus the checkpoint's metadata."""
    ckpt = load_checkpoint(path)
    saved = Config.from_params(ckpt["config"])
    if cfg is not None:
        arch = [k for k in ("channels", "blocks") if list(getattr(cfg, k)) != list(getattr(saved, k))]
        if arch:
            raise CheckpointError(f"{path}: checkpoint architecture differs from the requested one: " +
                                  "; ".join(f"{k} {getattr(saved, k)} vs {getattr(cfg, k)}" for k in arch))
    model = build_model(saved)
    load_state_checked(model, ckpt["model"], str(path))
    model.to(device).eval()
    return model, ckpt


def find_run_folder(cfg: Config, log: Callable[[str], object] = print) -> Path:
    """The folder holding member 0's best.pt (member k >= 1 lives in its `member-{k}` subfolder): cfg.run_path when
    it has best.pt; else, on Kaggle, a run folder in an attached notebook output under /kaggle/input (either mount
    layout, utils.runtime.locate.run_folder_candidates: the profile's first). An attached best.pt is used only when it
    was trained with this profile's recipe (utils.config.recipe_differences, the rule resume applies to last.pt): one
    of another recipe, or one that cannot be read, is skipped with a line saying why. The folder used is always
    logged; the error names every place looked and every candidate skipped."""
    own, *attached = locate.run_folder_candidates(cfg.run_path, cfg.profile)
    if (own / locate.BEST).is_file():
        log(f"run folder: {own} (best.pt of this run)")
        return own
    skipped = []
    for folder in attached:
        path = folder / locate.BEST
        try:
            saved = load_checkpoint(path).get("config")
        except CheckpointError as err:
            why = str(err).replace(f"{path}: ", "", 1).replace("\n", " ")
        else:
            differences = recipe_differences(saved, cfg) if isinstance(saved, dict) else ["no saved config"]
            if not differences:
                log(f"run folder: {folder} (best.pt from an attached notebook's output, read-only; trained with "
                    f"the recipe of profile {cfg.profile!r})")
                return folder
            why = f"trained with another recipe than profile {cfg.profile!r} ({'; '.join(differences)})"
        skipped.append(f"skipped {path}: {why}")
        log(skipped[-1])
    looked = [f"  - {own}"]
    if platforms.detect() == "kaggle":
        root = platforms.KAGGLE_INPUT
        looked.append(f"  - every folder under {root} to depth {locate.RUN_SEARCH_DEPTH}: attached notebook outputs "
                      f"are mounted at {root}/notebooks/<user>/<notebook>/ (current layout) or {root}/<notebook>/ "
                      "(older sessions)")
    looked += [f"  - {line}" for line in skipped]
    raise CheckpointError(
        f"{locate.BEST} not found for profile {cfg.profile!r}. Looked in:\n" + "\n".join(looked) + "\nTrain first "
        "(notebook 03 with the same profile and run_dir), or point run_dir at the folder that holds it. Colab: "
        "notebook 03 saved it on your Google Drive; keep the same REPO_URL and run_dir. Kaggle: run 03 in this "
        "session, or attach the output of the notebook that trained it with this profile (Add Input > Your Work > "
        "that notebook, after Save Version).")


def find_checkpoint(cfg: Config, name: str = "best.pt", log: Callable[[str], object] = print) -> Path:
    """`name` in the run folder `find_run_folder` chooses (for a file other than best.pt, cfg.run_path's own copy
    first). The error says how to make or attach one."""
    own = cfg.run_path / name
    if name != locate.BEST and own.is_file():
        log(f"{name}: {own}")
        return own
    path = find_run_folder(cfg, log) / name
    if not path.is_file():
        raise CheckpointError(f"{path}: no {name} beside the best.pt used. Train first (notebook 03 with the same "
                              "profile and run_dir), or point run_dir at the folder that holds both.")
    return path


COPYING = ".copy-in-progress"       # the attached run is copied into .<run folder's name>.copy-in-progress beside it


def continue_attached_run(cfg: Config, log: Callable[[str], object] = print) -> Path | None:
    """Kaggle's next session: a new session starts with an empty /kaggle/working, and the previous session's output
    (Save Version) comes back read-only under /kaggle/input once attached (Add Input > Your Work > that notebook).
    When cfg.run_path holds no last.pt (its own or a member's), copy the first attached run folder with a last.pt of
    this profile's recipe (utils.config.recipe_differences, the rule resume applies; the profile's folders first,
    utils.runtime.locate.run_folder_candidates) into cfg.run_path, member folders included, and say which: training then
    resumes from its last.pt and 04 / 05 read its best.pt. One of another recipe is skipped, saying why.

    The copy is one step (`_copy_run_folder`): every file goes into a hidden folder beside cfg.run_path, which is then
    renamed into place, so cfg.run_path holds either no copied file or all of them. A copy cut short leaves
    cfg.run_path as it was: an error (a full disk) deletes the hidden folder and is raised; a dead kernel leaves it,
    and the next call deletes it and copies again, whole. cfg.run_path may be absent or hold empty folders and stale
    temporaries (deleted); one holding any other file is left alone, saying which files and what to do. Returns the
    folder copied from, None when nothing was (not on Kaggle, a run here already, nothing attached, files in the
    way)."""
    if platforms.detect() != "kaggle" or any(cfg.run_path.rglob(locate.LAST)):
        return None
    for folder in locate.run_folder_candidates(cfg.run_path, cfg.profile, name=locate.LAST, platform="kaggle")[1:]:
        last = folder / locate.LAST
        try:
            ckpt = load_checkpoint(last)
        except CheckpointError as err:
            log(f"not continued from {last}: {err}")
            continue
        saved = ckpt.get("config")
        differences = recipe_differences(saved, cfg) if isinstance(saved, dict) else ["no saved config"]
        if differences:
            log(f"not continued from {last}: trained with another recipe than profile {cfg.profile!r} "
                f"({'; '.join(differences)})")
            continue
        in_the_way = sorted(p.relative_to(cfg.run_path) for p in cfg.run_path.rglob("*")
                            if p.is_file() and not _stale(p)) if cfg.run_path.is_dir() else []
        if in_the_way:
            log(f"not continued from {folder}: {cfg.run_path} holds files but no last.pt "
                f"({', '.join(map(str, in_the_way[:3]))}{', ...' if len(in_the_way) > 3 else ''}), left as they are. "
                f"To continue the attached run, move them out of {cfg.run_path} and run the setup cell again.")
            return None
        _copy_run_folder(folder, cfg.run_path)
        log(f"run folder continued from an attached notebook's output: copied {folder} (read-only) into "
            f"{cfg.run_path}; training resumes from its last.pt ({read_progress(ckpt, last).describe()}).")
        return folder
    return None


def _stale(path: Path) -> bool:
    """What a killed write leaves (atomic_write's `.NAME.*.tmp`, a write probe): nothing anyone reads."""
    return path.name.startswith(".") and (path.name.endswith(".tmp") or path.name.startswith(".write-probe-"))


def _copy_run_folder(source: Path, target: Path) -> None:
    """`source`'s files (hidden ones aside) copied into `target` in one step: into `.<target name>.copy-in-progress`
    beside it (a leftover of an interrupted copy deleted first), then renamed into place. `target` must hold no
    file but stale temporaries; it is replaced. An error deletes the hidden folder; a kill leaves it for next time."""
    staging = target.parent / f".{target.name}{COPYING}"
    what = "checkpoint copied from an attached output"
    try:
        if staging.exists():
            shutil.rmtree(staging)
        for file in sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith(".")):
            atomic_write(staging / file.relative_to(source), lambda f, s=file: f.write(s.read_bytes()),
                         what=what, setting="run_dir")
        if target.exists():
            shutil.rmtree(target)          # empty folders and stale temporaries only (the caller checked)
        os.replace(staging, target)
    except Exception as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, platforms.OutputError):
            reason, fix = platforms.explain_os_error(exc, target.parent, "run_dir")
            raise platforms.OutputError(target, "the run folder copied from an attached output",
                                        f"{reason}; the run folder was not replaced", fix) from exc
        raise


# --------------------------------------------------------------------------------------------
# How far a run got: recorded in best.pt and last.pt, read by inference (utils.ensemble)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Progress:
    """How far the run that wrote a checkpoint got. `finished`: it reached its schedule's end or stopped early;
    None when unknown (a checkpoint from before this was recorded, with no last.pt beside it)."""
    epochs_done: int | None
    epochs_planned: int | None
    finished: bool | None
    stopped_early: bool
    member: int
    training_seed: int | None
    source: str = "recorded"         # recorded | "last.pt beside it" | unknown

    def record(self) -> dict[str, Any]:
        """The plain dict a checkpoint stores (without `source`)."""
        return {k: v for k, v in asdict(self).items() if k != "source"}

    @property
    def state(self) -> str:
        if self.finished is None:
            return "unknown"
        return "stopped early" if self.stopped_early else "finished" if self.finished else "NOT finished"

    def describe(self) -> str:
        if self.finished is None:
            return "epochs unknown (an older checkpoint, no last.pt beside it)"
        return f"{self.epochs_done}/{self.epochs_planned} epochs, {self.state}"


def progress_record(epochs_done: int, epochs_planned: int, stopped_early: bool, member: int,
                    training_seed: int) -> dict[str, Any]:
    """What training stores under `progress` in best.pt and last.pt."""
    return Progress(epochs_done, epochs_planned, bool(stopped_early or epochs_done >= epochs_planned),
                    bool(stopped_early), member, training_seed).record()


def _from_last(last: dict[str, Any], source: str) -> Progress:
    saved = last.get("config") or {}
    done, planned = len(last.get("history") or []), saved.get("epochs")
    stopped = bool(last.get("stopped_early"))
    return Progress(done, planned, None if planned is None else stopped or done >= planned, stopped, 0,
                    saved.get("seed"), source)


def read_progress(ckpt: dict[str, Any], path: str | Path) -> Progress:
    """How far the run of the checkpoint `ckpt` (read from `path`) got: its own record; for an older checkpoint
    the last.pt beside it (its history's length against its config's epochs); else unknown."""
    record = ckpt.get("progress")
    if isinstance(record, dict):
        return Progress(**{k: record.get(k) for k in ("epochs_done", "epochs_planned", "finished")},
                        stopped_early=bool(record.get("stopped_early")), member=int(record.get("member") or 0),
                        training_seed=record.get("training_seed"))
    path = Path(path)
    if "history" in ckpt:                               # an older last.pt knows it itself
        return _from_last(ckpt, "its history")
    last = path.parent / "last.pt"
    if path.name != "last.pt" and last.is_file():
        return _from_last(load_checkpoint(last), "last.pt beside it")
    return Progress(None, (ckpt.get("config") or {}).get("epochs"), None, False, 0,
                    (ckpt.get("config") or {}).get("seed"), "unknown")
