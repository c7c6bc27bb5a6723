"""Training with the paper's recipe (SGD + OneCycleLR + early stopping), resumable to the bit.

Design choices:
- Recipe defaults are the paper's: SGD(0.1, momentum 0.9, wd 5e-4), OneCycleLR(max_lr 0.1,
  pct_start 0.1) stepped per batch, batch 128, up to 100 epochs, early stop after 10 epochs
  without a better val accuracy. OneCycleLR keeps PyTorch's default `cycle_momentum` (the paper names
  no other), so the momentum SGD uses cycles 0.95 -> 0.85 -> 0.95 and `momentum` (0.9) is not used;
  `cycle_momentum: false` makes SGD keep `momentum` instead (utils.config.Config says so once). Extras
  (label smoothing, EMA, cutout, TrivialAugment, MixUp/CutMix, nesterov, TTA) are Config fields, all off
  in `paper`.
- `fit` reads as its phases: build the run, restore it, then per epoch train, validate, record, save.
  `update_weights` (one batch) is shared with `benchmarks/bench_train.py`, so what is timed is what trains.
- Loss and accuracy are accumulated sample-weighted over the whole epoch (the original notebook
  overwrote its loss accumulator every batch). With MixUp/CutMix the loss is on the soft targets and
  `train_acc` counts a prediction right when it names the dominant label of the mixed pair.
- The step loop never waits for the GPU: loss sums, accuracy and the first non-finite step stay on
  the device (`NonFiniteWatch`), the EMA update keeps its step count on the host (torch's AveragedModel
  tests a device tensor every step), and the loader moves a whole epoch's random draws in one copy. The
  host syncs once every `SYNC_EVERY` steps (and on the last) to check the loss and refresh the bar.
- Every epoch writes `last.pt` (everything needed to continue) and, on a new best val accuracy,
  `best.pt` (weights for inference; with val_fraction 0, every epoch's final weights), each through
  `utils.runtime.files.atomic_write`. Each epoch reseeds torch/numpy/python from (seed, epoch) and the loader
  draws from the same pair, so an interrupted run resumed from `last.pt` ends with exactly the weights
  of an uninterrupted one (on the same device with deterministic kernels; tested on CPU).
- Precision, channels_last and compilation are decided per device by `utils.runtime.device.decide`; they may
  change between a run and its resumption (another machine), like the other run-time fields
  (utils.config.RUNTIME_FIELDS).
- A non-finite loss stops at once with the epoch and step; nothing of that epoch is saved.
- `fit` trains ONE model: member `cfg.member` (None: member 0) of the recipe, in its own folder
  (`Config.member_path`), with its own training seed (`Config.training_seed`: initialisation, batch order,
  augmentation, dropout, MixUp) on the data of `seed` (subset, split, normalisation: the same for every
  member). Member 0 is exactly the one-model run. Launching several members is `utils.members`.
- Both checkpoints record how far the run got (`progress`: epochs done and planned, finished, stopped early,
  member, training seed); best.pt's record is rewritten every epoch, its weights only on a new best, so
  inference can refuse an unfinished model (utils.ensemble).
- Without a validation split (val_fraction 0) the labeled test batch is evaluated every `monitor_every`
  epochs and at the schedule's last (`monitor_loss` / `monitor_acc` in the history): a monitor only. It
  chooses nothing (best.pt is the final weights), draws no random numbers and needs no sync inside the
  step loop, so a resumed run stays bit-exact.
- The wall time is measured, on every device, over steps TIMING_STEPS of the first epoch of a call (the
  device synchronised at both ends) and projected for this member, this call and all members; on Kaggle it
  says whether that fits the 12-hour session or which `max_epochs_this_call` splits it.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from .checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    load_checkpoint,
    load_state_checked,
    progress_record,
    save_checkpoint,
)
from .config import NUM_CLASSES, Config, recipe_differences
from .dataset import Splits, prepare_splits
from .evaluate import evaluate_loader
from .loader import DeviceLoader, epoch_seed
from .model import build_model
from .runtime import platforms
from .runtime.device import (
    ExecutionPlan,
    decide,
    progress_bars,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
    synchronize,
)
from .runtime.files import remove_stale_temporaries, write_text

SYNC_EVERY = 25                # steps between host syncs (loss check, progress bar)
TIMING_STEPS = (2, 7)          # the wall time is measured over these steps of a call's first epoch
# Kaggle's Notebooks documentation, "Technical Specifications" (https://www.kaggle.com/docs/notebooks): "12 hours
# execution time for CPU and GPU notebook sessions".
KAGGLE_SESSION_HOURS = 12.0    # a Kaggle notebook session (interactive or Save Version) ends after 12 h
KAGGLE_SPARE_HOURS = 1.0       # of which kept for setup, notebooks 04 / 05 and saving the version


class NonFiniteLossError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------
# Pieces of a step
# --------------------------------------------------------------------------------------------
class EMA:
    """Exponential moving average of a model's weights and buffers, updated every step without host syncs.

    The decay ramps up as min(decay, (1 + n) / (warmup + n)) at update n (TensorFlow's num_updates rule),
    so a short run is not dominated by its first-step weights; the first update copies the weights.
    Integer buffers (BatchNorm's num_batches_tracked) follow the model."""

    def __init__(self, model: nn.Module, decay: float, warmup: float = 10.0):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.warmup, self.updates = decay, warmup, 0

    @staticmethod
    def _tensors(model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        tensors = [*model.parameters(), *model.buffers()]
        return ([t.detach() for t in tensors if t.is_floating_point()],
                [t for t in tensors if not t.is_floating_point()])

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        (ema_float, ema_int), (new_float, new_int) = self._tensors(self.module), self._tensors(model)
        if self.updates == 0:
            torch._foreach_copy_(ema_float, new_float)
        else:
            n = self.updates
            torch._foreach_lerp_(ema_float, new_float, 1.0 - min(self.decay, (1.0 + n) / (self.warmup + n)))
        for e, p in zip(ema_int, new_int):
            e.copy_(p)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        self.module.load_state_dict(state["module"])


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


def make_mixer(cfg: Config) -> Callable | None:
    """torchvision's MixUp and/or CutMix (one chosen per batch when both are on), or None."""
    if not (cfg.mixup_alpha or cfg.cutmix_alpha):
        return None
    from torchvision.transforms import v2
    ops = []
    if cfg.mixup_alpha:
        ops.append(v2.MixUp(alpha=cfg.mixup_alpha, num_classes=NUM_CLASSES))
    if cfg.cutmix_alpha:
        ops.append(v2.CutMix(alpha=cfg.cutmix_alpha, num_classes=NUM_CLASSES))
    return ops[0] if len(ops) == 1 else v2.RandomChoice(ops)


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
# A run and its state
# --------------------------------------------------------------------------------------------
@dataclass
class Run:
    """Everything `fit` builds for one configuration."""
    cfg: Config
    splits: Splits
    plan: ExecutionPlan
    model: nn.Module
    step_model: nn.Module            # the compiled model where compilation is on, else `model`
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    ema: EMA | None
    criterion: nn.Module
    mixer: Callable | None
    train_loader: DeviceLoader
    val_loader: DeviceLoader | None
    monitor_loader: DeviceLoader | None      # the labeled test batch, without a validation split only
    member: int = 0
    training_seed: int = 0

    @property
    def device(self) -> torch.device:
        return self.plan.device

    @property
    def run_dir(self) -> Path:
        return self.cfg.member_path(self.member)

    @property
    def eval_model(self) -> nn.Module:
        """What is validated and saved as best.pt: the EMA weights where the recipe keeps them."""
        return self.ema.module if self.ema is not None else self.model


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


def build_run(cfg: Config, splits: Splits, plan: ExecutionPlan) -> Run:
    """Member `cfg.member` (None: 0) of the recipe: its model (initialised from the global RNG as the caller seeded
    it), loaders (the training loader draws from the member's training seed), optimizer and schedule."""
    device = plan.device
    member = cfg.member or 0
    seed = cfg.training_seed(member)
    model = build_model(cfg).to(device, memory_format=plan.memory_format())
    loader_kw = {"device": device, "channels_last": plan.channels_last}
    train_loader = DeviceLoader(splits.train_images, splits.train_labels, splits.mean, splits.std, cfg.batch_size,
                                train=True, cutout_size=cfg.cutout, seed=seed, auto_augment=cfg.auto_augment,
                                **loader_kw)
    val_loader = (DeviceLoader(splits.val_images, splits.val_labels, splits.mean, splits.std, cfg.eval_batch_size,
                               train=False, **loader_kw) if cfg.has_validation else None)
    monitor_loader = (None if cfg.has_validation else
                      DeviceLoader(splits.test_images, splits.test_labels, splits.mean, splits.std,
                                   cfg.eval_batch_size, train=False, **loader_kw))
    optimizer = make_optimizer(model, cfg, plan)
    scheduler = make_schedule(optimizer, cfg, len(train_loader))
    return Run(cfg, splits, plan, model, torch.compile(model) if plan.compile else model, optimizer,
               scheduler, plan.make_scaler(), EMA(model, cfg.ema_decay) if cfg.ema_decay else None,
               nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing), make_mixer(cfg), train_loader, val_loader,
               monitor_loader, member, seed)


def make_schedule(optimizer: torch.optim.Optimizer, cfg: Config,
                  steps_per_epoch: int) -> torch.optim.lr_scheduler.OneCycleLR:
    """The recipe's OneCycleLR, stepped after every batch: warm-up to `lr` over `pct_start`, then cosine to ~0."""
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, epochs=cfg.epochs,
                                               steps_per_epoch=steps_per_epoch, pct_start=cfg.pct_start,
                                               cycle_momentum=cfg.cycle_momentum)


def make_optimizer(model: nn.Module, cfg: Config, plan: ExecutionPlan) -> torch.optim.SGD:
    """The recipe's SGD with the plan's kernel (fused on a GPU's GradScaler path), its momentum buffers made at once."""
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                                weight_decay=cfg.weight_decay, **plan.optimizer_kwargs())
    _momentum_buffers_exist(optimizer)
    return optimizer


def _momentum_buffers_exist(optimizer: torch.optim.Optimizer) -> None:
    """A zero momentum buffer, in its parameter's layout, for every parameter that has none. Fused SGD makes missing
    buffers with `empty_like` on its first step, and when the GradScaler skips that step (found_inf) the kernel
    returns before writing them: uninitialised memory. With dampening 0 a zero buffer gives the first step SGD
    takes without one (buf = momentum * 0 + grad), bit for bit."""
    for group in optimizer.param_groups:
        if not group["momentum"]:
            continue
        for p in group["params"]:
            if optimizer.state[p].get("momentum_buffer") is None:
                optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p)


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
    _momentum_buffers_exist(optimizer)


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
    """The state saved in run_dir/last.pt (weights, optimizer, schedule, EMA, scaler, RNG) or a fresh one."""
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


# --------------------------------------------------------------------------------------------
# The phases of an epoch
# --------------------------------------------------------------------------------------------
def _bar(iterable, progress: bool, **kwargs):
    from .runtime.progress import bar  # widget bars where they render, text bars on Kaggle
    return bar(iterable, progress, **kwargs)


def cpu_time_estimate(run: Run, seconds_per_step: float, epochs_left: int) -> str:
    hours = seconds_per_step * len(run.train_loader) * epochs_left / 3600
    return (f"Training on the CPU: {seconds_per_step:.2f} s per step here, so about {hours:.1f} h for the "
            f"{epochs_left} epochs left (measured over its first steps). For minutes, not hours: switch to a GPU "
            "runtime (Colab: Runtime > Change runtime type > T4 GPU; Kaggle: Settings > Accelerator > GPU T4 x2), "
            "or try the pipeline with profile 'smoke'. Continuing.")


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.1f} min" if seconds >= 90 \
        else f"{seconds:.0f} s"


def platform_name() -> str:
    """Where this runs (utils.runtime.platforms.detect); a function of its own so tests can say 'kaggle'."""
    return platforms.detect()


def wall_time_estimate(cfg: Config, device: torch.device, steps_per_epoch: int, seconds_per_step: float,
                       epochs_done: int, end_epoch: int, members_at_once: int = 1, members_in_call: int = 1,
                       measured: str = "its first steps", platform: str | None = None) -> list[str]:
    """The measured wall time projected: this member's epochs left, this call, the whole schedule of all members
    (`members_at_once` training side by side, each at this speed); on Kaggle, whether this call fits the 12-hour
    session or which `max_epochs_this_call` splits it. Training steps only: validation and saving add a little."""
    per_epoch = seconds_per_step * steps_per_epoch
    left, now = cfg.epochs - epochs_done, end_epoch - epochs_done
    rounds_all = math.ceil(cfg.members / max(1, members_at_once))
    rounds_call = math.ceil(max(1, members_in_call) / max(1, members_at_once))
    lines = [f"Wall time on {device}, measured over {measured}: {seconds_per_step:.3f} s per step, "
             f"{_duration(per_epoch)} per epoch of {steps_per_epoch} steps; this member's {left} epoch(s) left: "
             f"{_duration(per_epoch * left)}" +
             (f"; all {cfg.members} members x {cfg.epochs} epochs, {min(members_at_once, cfg.members)} at a time: "
              f"{_duration(per_epoch * cfg.epochs * rounds_all)}" if cfg.members > 1 else "") +
             (f"; this call ({now} epoch(s) per member, max_epochs_this_call {cfg.epoch_limit or now}): "
              f"{_duration(per_epoch * now * rounds_call)}" if now < left else "") +
             " (training steps; validation and saving add a little)."]
    if (platform or platform_name()) == "kaggle":
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
                f"Your Work) and run it again: its run folder is copied back into {cfg.run_path} and training "
                "resumes from last.pt; or train the members in separate notebooks with `member`.")
    return lines


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
                    on_time_estimate: Callable[[float], None] | None = None) -> dict[str, float]:
    """One pass over the training batches; returns the epoch's sample-weighted train loss and accuracy.
    `on_time_estimate(seconds_per_step)` is called once, measured over TIMING_STEPS (the device synchronised at
    both ends, so a GPU's queue is counted), when the epoch has that many steps."""
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
    return {"train_loss": (loss_sum / seen).item(), "train_acc": (correct.float() / seen).item()}


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


def planned_learning_rates(cfg: Config, steps_per_epoch: int) -> list[float]:
    """The learning rate of every optimizer step `fit` will take: OneCycleLR stepped on a throwaway optimizer."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr, momentum=cfg.momentum)
    scheduler = make_schedule(optimizer, cfg, steps_per_epoch)
    lrs = []
    for _ in range(cfg.epochs * steps_per_epoch):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return lrs


def epoch_line(row: dict[str, Any]) -> str:
    val = ("no validation split" if pd.isna(row["val_acc"])
           else f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}")
    if not pd.isna(row.get("monitor_acc", float("nan"))):
        val += f", monitor (test) loss {row['monitor_loss']:.4f} acc {row['monitor_acc']:.4f}"
    return (f"epoch {row['epoch']:3d}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  {val}  "
            f"lr {row['lr']:.5f}  {row['seconds']:.1f}s")


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
    bars = progress_bars(progress)

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
        for line in wall_time_estimate(cfg, plan.device, len(run.train_loader), seconds_per_step, first_epoch,
                                       end_epoch, members_at_once, members_in_call, measured):
            log(line)
        if plan.device.type == "cpu" and cfg.subset_per_class == 0:   # full data on a CPU: say what to do
            log(cpu_time_estimate(run, seconds_per_step, end_epoch - first_epoch))
        timer["done"] = True

    timer = {"done": False}
    epochs = _bar(range(state.epoch, end_epoch), bars, desc="epochs", unit="epoch", initial=state.epoch,
                  total=cfg.epochs)
    for epoch in epochs:
        if state.stopped_early:
            break
        started = time.perf_counter()
        # Train one epoch, then validate the weights best.pt would hold (or, without a split, monitor them)
        train = train_one_epoch(run, epoch, bars, on_step, None if timer["done"] else estimate)
        if not timer["done"]:         # an epoch shorter than TIMING_STEPS: measured over the whole epoch
            estimate((time.perf_counter() - started) / len(run.train_loader), "its first epoch")
        val = validate(run)
        # Record the epoch (best, early stopping) and save best.pt / last.pt / history.csv
        row = {"epoch": epoch + 1, **train, "val_loss": val["loss"] if val else float("nan"),
               "val_acc": val["acc"] if val else float("nan")}
        if run.monitor_loader is not None:
            seen = monitor(run, epoch)
            row.update(monitor_loss=seen["loss"] if seen else float("nan"),
                       monitor_acc=seen["acc"] if seen else float("nan"))
        row.update(lr=run.scheduler.get_last_lr()[0], seconds=time.perf_counter() - started)
        improved = record(state, cfg, row, val)
        save(run, state, improved)
        epochs.set_postfix(train_acc=f"{train['train_acc']:.3f}", val_acc=f"{row['val_acc']:.3f}")
        log(epoch_line(row))
        if state.stopped_early:
            log(f"Early stop after epoch {epoch + 1}: no val improvement for {cfg.patience} epochs.")
    epochs.close()
    return TrainResult(pd.DataFrame(state.history), run.run_dir, state.best_val_acc, state.stopped_early,
                       state.stopped_early or state.epoch >= cfg.epochs, run.eval_model, member, run.training_seed)
