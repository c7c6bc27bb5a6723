"""The training loop: one model, the paper's recipe (SGD + OneCycleLR + early stopping), resumable to the bit.

`fit` builds the run (device plan, data, model, optimizer, schedule), restores its last.pt (utils.resume), then
`train_epochs`: per epoch train (`train_one_epoch`: `train_batch` per batch around `update_weights`), validate,
record, save. Notebook 03 quotes that loop and that step; tests/test_notebooks.py keeps the quotes true.

Design choices:
- What trains (model, loaders, optimizer, schedule, EMA, MixUp) is built by utils.recipe as one `Run`.
  `update_weights` is shared with benchmarks/bench_train.py, so what is timed is what trains.
- The step loop never waits for the GPU: loss sums, accuracy and the first non-finite step (`NonFiniteWatch`) stay
  on the device, and the host syncs every `SYNC_EVERY` steps (and on the last) to check the loss and refresh the
  bar. A non-finite loss stops at once, naming epoch and step; nothing of that epoch is saved. Loss and accuracy are
  sample-weighted over the epoch; with MixUp/CutMix `train_acc` counts the dominant label of the mixed pair.
- Every epoch writes `last.pt` and, on a new best val accuracy, `best.pt` (without a validation split: the latest
  weights, and the labeled test batch is a monitor every `monitor_every` epochs that chooses nothing), each whole or
  not at all. Each epoch reseeds from (training seed, epoch), so a run resumed from last.pt ends with the weights
  of an uninterrupted one.
- `fit` trains ONE member (`cfg.member`, None: 0) in its own folder with its own training seed; utils.members
  launches several. The wall time is measured over `TIMING_STEPS` of a call's first epoch and projected by
  utils.runtime.estimates.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from .checkpoint import CHECKPOINT_FORMAT, load_checkpoint, progress_record, save_checkpoint
from .config import Config
from .dataset import Splits, prepare_splits
from .evaluate import evaluate_loader
from .loader import epoch_seed
from .recipe import Run, build_run
from .resume import State, restore
from .runtime.device import ExecutionPlan, decide, resolve_device, synchronize
from .runtime.estimates import cpu_time_estimate, wall_time_estimate
from .runtime.files import remove_stale_temporaries, write_text
from .runtime.progress import progress_bars
from .runtime.rng import rng_state, seed_everything

SYNC_EVERY = 25                # steps between host syncs (loss check, progress bar)
TIMING_STEPS = (2, 7)          # the wall time is measured over these steps of a call's first epoch


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class TrainResult:
    history: pd.DataFrame
    run_dir: Path
    best_val_acc: float | None        # None without a validation split
    stopped_early: bool
    finished: bool
    model: nn.Module = field(repr=False)
    member: int = 0
    training_seed: int = 0

    @property
    def best_path(self) -> Path:
        return self.run_dir / "best.pt"

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pt"


# --------------------------------------------------------------------------------------------
# Pieces of a step
# --------------------------------------------------------------------------------------------
class NonFiniteWatch:
    """The first step whose loss was not finite, tracked on the device: observing costs no host sync."""

    def __init__(self, device: torch.device):
        self.first = torch.full((), -1, device=device, dtype=torch.long)

    def observe(self, step: int, loss: torch.Tensor) -> None:
        self.first = torch.where((self.first < 0) & ~torch.isfinite(loss), step, self.first)

    def first_bad_step(self) -> int | None:
        """One host sync: the first non-finite step so far, or None."""
        step = int(self.first)
        return None if step < 0 else step


def update_weights(model: nn.Module, x: torch.Tensor, target: torch.Tensor, optimizer: torch.optim.Optimizer,
               criterion: nn.Module, plan: ExecutionPlan,
               scaler: torch.amp.GradScaler | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on one batch: forward under the plan's autocast, loss in fp32, backward, step.
    Returns the detached loss and logits (still on the device: nothing here waits for it)."""
    with plan.autocast():
        logits = model(x)
        loss = criterion(logits.float(), target)
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return loss.detach(), logits.detach()


# --------------------------------------------------------------------------------------------
# The phases of an epoch
# --------------------------------------------------------------------------------------------
def _bar(iterable, progress: bool, **kwargs):
    from .runtime.progress import bar  # widget bars where they render, text bars on Kaggle
    return bar(iterable, progress, **kwargs)


def train_batch(run: Run, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of a run on one batch: MixUp/CutMix where on, `update_weights`, the schedule, the EMA.
    Returns the loss, the logits and the (possibly soft) targets, all still on the device."""
    if run.mixer is not None:       # the mixed batch in the plan's layout, whatever torchvision's version returns
        x, target = run.mixer(x, y)
        x = x.contiguous(memory_format=run.plan.memory_format())
    else:
        target = y
    # A compiled model is traced for the full batch; the epoch's last, partial batch runs eagerly (same weights)
    # instead of making torch.compile trace a second graph.
    model = run.step_model if len(y) == run.cfg.batch_size else run.model
    loss, logits = update_weights(model, x, target, run.optimizer, run.criterion, run.plan, run.scaler)
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update(run.model)
    return loss, logits, target


def train_one_epoch(run: Run, epoch: int, progress: bool, on_step: Callable[[int, int, float], None] | None,
                    on_time_estimate: Callable[..., None] | None = None) -> dict[str, float]:
    """One pass over the training batches; returns the epoch's sample-weighted train loss and accuracy.
    `on_time_estimate(seconds_per_step)` is called once, measured over TIMING_STEPS (the device synchronised at
    both ends, so a GPU's queue is counted), when the epoch has that many steps; in a shorter epoch, at its end,
    measured over the whole epoch (`on_time_estimate(seconds_per_step, "its first epoch")`)."""
    started = time.perf_counter()
    cfg, device = run.cfg, run.device
    seed_everything(epoch_seed(run.training_seed, epoch), cfg.deterministic)
    run.train_loader.set_epoch(epoch)
    run.model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen, last = 0, len(run.train_loader) - 1
    watch = NonFiniteWatch(device)
    steps = _bar(run.train_loader, progress, desc=f"epoch {epoch + 1}", leave=False)
    clock = time.perf_counter()
    for step, (x, y) in enumerate(steps):
        loss, logits, target = train_batch(run, x, y)
        dominant = target.argmax(1) if target.ndim == 2 else target
        loss_sum += loss * len(y)
        correct += (logits.argmax(1) == dominant).sum()
        seen += len(y)
        watch.observe(step, loss)
        if on_time_estimate is not None and step in TIMING_STEPS:
            synchronize(device)
            if step == TIMING_STEPS[0]:
                clock = time.perf_counter()
            else:
                on_time_estimate((time.perf_counter() - clock) / (TIMING_STEPS[1] - TIMING_STEPS[0]))
        if step % SYNC_EVERY == 0 or step == last or on_step is not None:
            bad = watch.first_bad_step()
            if bad is not None:
                raise NonFiniteLossError(
                    f"loss became non-finite at epoch {epoch + 1}, step {bad + 1}; training stopped. The last good "
                    f"checkpoint ({run.run_dir / 'last.pt'}) is untouched. Lower lr or check the data.")
            value = loss.item()
            if on_step is not None:
                on_step(epoch, step, value)
            steps.set_postfix(loss=f"{value:.3f}", lr=f"{run.scheduler.get_last_lr()[0]:.4f}")
    result = {"train_loss": (loss_sum / seen).item(), "train_acc": (correct.float() / seen).item()}
    if on_time_estimate is not None and last < TIMING_STEPS[1]:     # too short to time its steps: the whole epoch
        on_time_estimate((time.perf_counter() - started) / len(run.train_loader), "its first epoch")
    return result


def validate(run: Run) -> dict[str, float] | None:
    """Clean validation loss and accuracy of the weights best.pt would hold; None without a validation split."""
    if run.val_loader is None:
        return None
    return evaluate_loader(run.eval_model, run.val_loader, plan=run.plan)


def monitored(cfg: Config, epoch: int) -> bool:
    """Whether epoch `epoch` (0-based) is one the monitor evaluates: every `monitor_every`-th and the schedule's
    last (a fixed set, however the run is split over calls)."""
    return not cfg.has_validation and ((epoch + 1) % cfg.monitor_every == 0 or epoch + 1 == cfg.epochs)


def monitor(run: Run, epoch: int) -> dict[str, float] | None:
    """Without a validation split: the weights best.pt holds on the labeled test batch, clean, at the epochs of
    `monitored`; None otherwise. A monitor only: nothing reads it to choose weights, and it draws no random
    numbers (evaluation mode, fixed order), so training and its resumption are unchanged."""
    if run.monitor_loader is None or not monitored(run.cfg, epoch):
        return None
    return evaluate_loader(run.eval_model, run.monitor_loader, plan=run.plan)


def record(state: State, cfg: Config, row: dict[str, Any], val: dict[str, float] | None) -> bool:
    """Append the epoch to the history and update best / early stopping; True when best.pt should be written."""
    state.history.append(row)
    if val is None:
        return True                   # no validation split: best.pt is the latest weights
    if state.best_val_acc is None or val["acc"] > state.best_val_acc:
        state.best_val_acc, state.bad_epochs = val["acc"], 0
    else:
        state.bad_epochs += 1
    state.stopped_early = cfg.early_stopping and state.bad_epochs >= cfg.patience
    return state.bad_epochs == 0


def save(run: Run, state: State, improved: bool) -> None:
    """best.pt (its weights when improved, its progress record every epoch), last.pt and history.csv, each
    written whole or not at all, best.pt first (a kill in between redoes the epoch on resume)."""
    progress = progress_record(state.epoch, run.cfg.epochs, state.stopped_early, run.member, run.training_seed)
    meta = {"format": CHECKPOINT_FORMAT, "config": run.cfg.to_dict(), "epoch": state.epoch,
            "normalization": {"mean": run.splits.mean, "std": run.splits.std}, "classes": run.splits.classes,
            "progress": progress}
    best_path = run.run_dir / "best.pt"
    if improved:
        save_checkpoint({**meta, "model": run.eval_model.state_dict(), "val_acc": state.best_val_acc}, best_path)
    elif best_path.is_file():        # the weights stay; how far the run got is what changed
        best = load_checkpoint(best_path)
        best["progress"] = progress
        save_checkpoint(best, best_path)
    save_checkpoint({**meta, "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                     "scheduler": run.scheduler.state_dict(),
                     "ema": run.ema.state_dict() if run.ema is not None else None,
                     "scaler": run.scaler.state_dict() if run.scaler is not None else None,
                     "history": state.history, "best_val_acc": state.best_val_acc, "bad_epochs": state.bad_epochs,
                     "stopped_early": state.stopped_early, "rng": rng_state()}, run.run_dir / "last.pt")
    write_text(run.run_dir / "history.csv", pd.DataFrame(state.history).to_csv(index=False), "training history",
               "run_dir")


def epoch_line(row: dict[str, Any]) -> str:
    val = ("no validation split" if pd.isna(row["val_acc"])
           else f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}")
    if not pd.isna(row.get("monitor_acc", float("nan"))):
        val += f", monitor (test) loss {row['monitor_loss']:.4f} acc {row['monitor_acc']:.4f}"
    return (f"epoch {row['epoch']:3d}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  {val}  "
            f"lr {row['lr']:.5f}  {row['seconds']:.1f}s")


# --------------------------------------------------------------------------------------------
# The epoch loop
# --------------------------------------------------------------------------------------------
def epoch_row(run: Run, epoch: int, train: dict[str, float], val: dict[str, float] | None,
              started: float) -> dict[str, Any]:
    """The epoch's row of the history: train and val loss and accuracy (NaN without a validation split), the
    monitor's (without a split, at its epochs; else NaN), the learning rate and the seconds since `started`."""
    row = {"epoch": epoch + 1, **train, "val_loss": val["loss"] if val else float("nan"),
           "val_acc": val["acc"] if val else float("nan")}
    if run.monitor_loader is not None:
        seen = monitor(run, epoch)
        row.update(monitor_loss=seen["loss"] if seen else float("nan"),
                   monitor_acc=seen["acc"] if seen else float("nan"))
    row.update(lr=run.scheduler.get_last_lr()[0], seconds=time.perf_counter() - started)
    return row


def train_epochs(run: Run, state: State, end_epoch: int, bars: bool = False, log: Callable[[str], None] = print,
                 on_step: Callable[[int, int, float], None] | None = None,
                 on_time_estimate: Callable[..., None] | None = None) -> None:
    """Epochs `state.epoch` up to `end_epoch` of the run, or until early stopping: each trains on the augmented
    batches, validates on the clean split, records (best, early stopping), saves (best.pt, last.pt, history.csv)
    and prints one line. The call's first epoch measures the wall time (`on_time_estimate`)."""
    first = state.epoch
    epochs = _bar(range(state.epoch, end_epoch), bars, desc="epochs", unit="epoch", initial=state.epoch,
                  total=run.cfg.epochs)
    for epoch in epochs:
        if state.stopped_early:
            break
        started = time.perf_counter()
        train = train_one_epoch(run, epoch, bars, on_step, on_time_estimate if epoch == first else None)
        val = validate(run)                                # None without a validation split
        row = epoch_row(run, epoch, train, val, started)   # + the test-batch monitor without one, lr, seconds
        improved = record(state, run.cfg, row, val)        # a new best? time to stop early?
        save(run, state, improved)                         # best.pt (its weights when improved), last.pt, history
        epochs.set_postfix(train_acc=f"{train['train_acc']:.3f}", val_acc=f"{row['val_acc']:.3f}")
        log(epoch_line(row))
        if state.stopped_early:
            log(f"Early stop after epoch {epoch + 1}: no val improvement for {run.cfg.patience} epochs.")
    epochs.close()


# --------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------
def fit(cfg: Config, splits: Splits | None = None, progress: bool = True,
        max_epochs_this_call: int | None = None, log: Callable[[str], None] = print,
        on_step: Callable[[int, int, float], None] | None = None, members_at_once: int = 1,
        members_in_call: int = 1) -> TrainResult:
    """Train member `cfg.member` (None: 0) of `cfg` in its folder (`cfg.member_path()`), resuming from its last.pt
    when cfg.resume and it exists, and return the history.

    Per epoch: train on the augmented batches, validate on the clean split (without one: the test-batch monitor,
    at its epochs), record (best, early stopping), save (best.pt, last.pt, history.csv), print one line.
    `max_epochs_this_call` (default: the Config field; 0 or None: no limit) trains at most that many epochs now
    (e.g. to fit a Kaggle time limit); calling again resumes. After the first steps the wall time is printed,
    projected for all `cfg.members` members (`members_at_once` side by side, `members_in_call` trained by this
    call: what utils.members passes). `on_step(epoch, step, loss)` is a hook for tests and custom logging.
    Progress bars show in a live notebook or terminal, not in a batch run (`run.py` sets CIFAR10_PROGRESS=lines),
    where the epoch lines tell the story."""
    # Build: device and plan, data, model, optimizer, schedule; then restore last.pt if asked
    plan = decide(resolve_device(cfg.device), cfg.amp, cfg.channels_last, cfg.compile)
    member = cfg.member or 0
    seed_everything(cfg.training_seed(member), cfg.deterministic)   # the member's initialisation
    splits = splits or prepare_splits(cfg)                           # the data: `seed`, the same for every member
    remove_stale_temporaries(cfg.member_path(member))   # left by a process killed mid-save; the real files are whole
    run = build_run(cfg, splits, plan)
    state = restore(run, log)

    limit = max_epochs_this_call if max_epochs_this_call is not None else cfg.epoch_limit
    end_epoch = cfg.epochs if not limit else min(cfg.epochs, state.epoch + limit)
    first_epoch = state.epoch
    if state.epoch < end_epoch and not state.stopped_early:
        n_params = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
        who = f"member {member}, training seed {run.training_seed} " if cfg.members > 1 or member else ""
        log(f"Training {who}({plan.reason}): {len(splits.train_labels):,} train / "
            f"{len(splits.val_labels):,} val images, {n_params:,} parameters, epochs {state.epoch + 1}-{cfg.epochs}, "
            f"{len(run.train_loader)} steps/epoch.")
        for note in cfg.notes(members=False):
            log(note)

    def estimate(seconds_per_step: float, measured: str = f"steps {TIMING_STEPS[0] + 2}-{TIMING_STEPS[1] + 1}") -> None:
        for line in wall_time_estimate(seconds_per_step, len(run.train_loader), device=str(plan.device),
                                       epochs=cfg.epochs, epochs_done=first_epoch, end_epoch=end_epoch,
                                       run_path=cfg.run_path, members=cfg.members, members_at_once=members_at_once,
                                       members_in_call=members_in_call, epoch_limit=cfg.epoch_limit,
                                       measured=measured):
            log(line)
        if plan.device.type == "cpu" and cfg.subset_per_class == 0:   # full data on a CPU: say what to do
            log(cpu_time_estimate(seconds_per_step, len(run.train_loader), end_epoch - first_epoch))

    train_epochs(run, state, end_epoch, progress_bars(progress), log, on_step, estimate)
    return TrainResult(pd.DataFrame(state.history), run.run_dir, state.best_val_acc, state.stopped_early,
                       state.stopped_early or state.epoch >= cfg.epochs, run.eval_model, member, run.training_seed)
