"""Continue a run from its last.pt: the state it keeps, the checks before it is used, and putting it back.

Design choices:
- `last.pt` (written by utils.train.save every epoch) holds everything needed to continue: weights, optimizer,
  schedule, EMA, loss scaler, RNG state, history and early-stopping state (`State`). `restore` puts it back into a
  freshly built run, so an interrupted run resumed from it ends with exactly the weights of an uninterrupted one (on
  the same device with deterministic kernels; tests/test_train.py).
- A last.pt of another recipe (utils.config.recipe_differences) or of another member is refused, naming every
  difference (`check_resumable`; utils.members asks it before starting a member), never mixed in.
- Run-time fields (precision, channels_last, compilation, the device: utils.config.RUNTIME_FIELDS) may change
  between a run and its resumption (a CPU's last.pt resumed on a T4, and back), so the optimizer's values come from
  the file and its kernel and layout from the new plan (`load_optimizer_state`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError, load_checkpoint, load_state_checked
from .config import Config, recipe_differences
from .recipe import Run, ensure_momentum_buffers
from .runtime.rng import set_rng_state


@dataclass
class State:
    """What an epoch changes and `last.pt` keeps, beyond the weights."""
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_acc: float | None = None
    bad_epochs: int = 0
    stopped_early: bool = False

    @property
    def epoch(self) -> int:
        return len(self.history)


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """A saved optimizer state, continued under the plan this optimizer was built for: its values (momentum) come
    from `saved`, its kernel and layout from the plan. `Optimizer.load_state_dict` alone would put back the saved
    kernel flags, and a run may change plans between sessions (a CPU's last.pt resumed on a T4, and back): a fused
    optimizer given `fused=None` fails under a GradScaler ("Expected grad_scale and found_inf to be None"), and a
    saved `fused=True` walks momentum buffers of another layout as raw memory. So the flags stay the plan's, and
    each momentum buffer is copied into its parameter's layout (channels_last or contiguous)."""
    kernel = [{k: group[k] for k in ("fused", "foreach") if k in group} for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, flags in zip(optimizer.param_groups, kernel):
        group.update(flags)
        for p in group["params"]:
            buffer = optimizer.state[p].get("momentum_buffer")
            if buffer is not None and buffer.stride() != p.stride():
                optimizer.state[p]["momentum_buffer"] = torch.empty_like(p).copy_(buffer)
    ensure_momentum_buffers(optimizer)


def check_resumable(ckpt: dict[str, Any], cfg: Config, member: int, path: Path) -> None:
    """Refuse a last.pt written by another recipe (utils.config.recipe_differences) or by another member."""
    diffs = recipe_differences(ckpt["config"], cfg)
    saved_member = (ckpt.get("progress") or {}).get("member", 0)
    if saved_member != member:
        diffs.append(f"member: checkpoint {saved_member} vs now {member} (a member's folder holds its own run)")
    if diffs:
        raise CheckpointError(f"{path} belongs to a different run:\n  " + "\n  ".join(diffs) +
                              "\nUse another run_dir for this configuration, or resume=False to start over.")


def restore(run: Run, log: Callable[[str], None]) -> State:
    """The state saved in run_dir/last.pt (weights, optimizer, schedule, EMA, scaler, RNG) put back into `run`, or a
    fresh State when there is none or cfg.resume is off."""
    last_path = run.run_dir / "last.pt"
    if not (run.cfg.resume and last_path.exists()):
        return State()
    ckpt = load_checkpoint(last_path)
    check_resumable(ckpt, run.cfg, run.member, last_path)
    load_state_checked(run.model, ckpt["model"], str(last_path))
    load_optimizer_state(run.optimizer, ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    if run.ema is not None and ckpt.get("ema") is not None:
        run.ema.load_state_dict(ckpt["ema"])
    if run.scaler is not None and ckpt.get("scaler") is not None:
        run.scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    state = State(list(ckpt["history"]), ckpt["best_val_acc"], ckpt["bad_epochs"], ckpt["stopped_early"])
    best = "no validation split" if state.best_val_acc is None else f"best val acc {state.best_val_acc:.4f}"
    log(f"Resumed {last_path} after epoch {state.epoch} ({best}).")
    return state
