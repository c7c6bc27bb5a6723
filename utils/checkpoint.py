"""Checkpoint files: written whole or not at all, read without running code, checked against the model.

Design choices:
- `best.pt` holds what inference needs (weights, the config, the normalisation statistics, the class
  names); `last.pt` adds what training needs to continue (optimizer, schedule, EMA, loss scaler, history,
  early-stopping state). Both are written through `utils.files.atomic_write`: a kill mid-save leaves the
  previous file whole.
- Read with `torch.load(weights_only=True)`: a checkpoint is data from outside, and only tensors and plain
  containers can come out of it. Every failure names the file and what to do.
- Inference (notebooks 04 and 05, the submission) imports this module, never the trainer.
- Format 2 (this release) stores the EMA as {"updates", "module"} and the loss scaler's state; format 1
  checkpoints (the first release) are still read: their EMA state (torch's AveragedModel layout) is
  converted on load.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import environment
from .config import Config
from .files import atomic_write
from .model import CustomResNet, build_model

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


def find_checkpoint(cfg: Config, name: str = "best.pt") -> Path:
    """`name` in the run's folder; on Kaggle also in an attached notebook output under /kaggle/input (its
    profile's first). The error says how to make or attach one."""
    candidates = environment.checkpoint_candidates(cfg.run_path, name, cfg.profile)
    for path in candidates:
        if path.is_file():
            return path
    looked = "\n".join(f"  - {p}" for p in candidates)
    raise CheckpointError(
        f"{name} not found. Looked in:\n{looked}\nTrain first (notebook 03 with the same profile and run_dir), or "
        "point run_dir at the folder that holds it. Colab: notebook 03 saved it on your Google Drive; keep the same "
        "REPO_URL and run_dir. Kaggle: run 03 in this session, or attach the output of the notebook that trained it "
        "(Add Input > Your Work > that notebook, after Save Version).")
