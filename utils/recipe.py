"""The recipe, built: for one member of a Config, the model, loaders, optimizer, schedule and extras that train it.

`build_run` returns them as one `Run`, what utils.train's loop steps through and utils.resume restores into; the
same pieces serve the benchmarks (benchmarks/probe.py) and notebook 03's schedule plot (`planned_learning_rates`).

Design choices:
- Recipe defaults are the paper's: SGD(0.1, momentum 0.9, wd 5e-4), OneCycleLR(max_lr 0.1, pct_start 0.1) stepped
  per batch, batch 128, up to 100 epochs, early stop after 10 epochs without a better val accuracy. OneCycleLR keeps
  PyTorch's default `cycle_momentum` (the paper names no other; utils.config.Config says what it does to `momentum`).
- Each member has its own training seed (`Config.training_seed`: initialisation, batch order, augmentation, dropout,
  MixUp) on the data of `seed` (subset, split, normalisation: the same for every member); member 0 is exactly the
  one-model run. The caller seeds the global RNG before `build_run` (the initialisation); the training loader
  draws from the member's seed.
- Knobs beyond the paper, off in `paper` (utils.config.Config): the `linear` schedule (`make_schedule`), no weight
  decay on BatchNorm and biases (`make_optimizer`), zero-initialised residual branches and the stem's patch_pca
  init (utils.model; its images are the first PCA_IMAGES training images, no random draw), the EMA's decay from
  `ema_window` (`ema_decay_of`); the crop's padding and the alternating flip are the loader's (utils.loader).
- Every schedule length trains: torch's OneCycleLR divides by zero when its warm-up is exactly one step (10 steps
  at 10 %, as a self-training round's count can be), so that warm-up is lengthened (`make_schedule`).
- Precision, channels_last and compilation come from the device's plan (utils.runtime.device.decide); they may
  change between a run and its resumption (another machine), like the other run-time fields.
- The extras beyond the paper, off in `paper`: `EMA` of the weights (its step count on the host and foreach
  updates, so it never waits for the GPU, where torch's AveragedModel tests a device tensor every step; what is
  validated and saved as best.pt is the EMA where it is on) and MixUp/CutMix (`make_mixer`).
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import NUM_CLASSES, Config
from .dataset import Splits
from .loader import DeviceLoader
from .model import build_model, init_stem_patch_pca
from .runtime.device import ExecutionPlan

WARMUP_DIV = 25.0      # both schedules start at lr / 25: OneCycleLR's default div_factor, the paper's
PCA_IMAGES = 5000      # the first training images whose 3x3 patches give the stem's patch_pca init (airbench's count)


# --------------------------------------------------------------------------------------------
# The extras
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


# --------------------------------------------------------------------------------------------
# A run: everything one member trains with
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


def build_run(cfg: Config, splits: Splits, plan: ExecutionPlan) -> Run:
    """Member `cfg.member` (None: 0) of the recipe: its model (initialised from the global RNG as the caller seeded
    it), loaders (the training loader draws from the member's training seed), optimizer and schedule."""
    device = plan.device
    member = cfg.member or 0
    seed = cfg.training_seed(member)
    model = build_model(cfg)
    if cfg.stem_init == "patch_pca":       # normalized as the training batches are; a resume overwrites it
        sample = DeviceLoader(splits.train_images[:PCA_IMAGES], None, splits.mean, splits.std, PCA_IMAGES)
        init_stem_patch_pca(model, sample.normalize(sample.images))
    model = model.to(device, memory_format=plan.memory_format())
    loader_kw = {"device": device, "channels_last": plan.channels_last}
    train_loader = DeviceLoader(splits.train_images, splits.train_labels, splits.mean, splits.std, cfg.batch_size,
                                train=True, cutout_size=cfg.cutout, seed=seed, auto_augment=cfg.auto_augment,
                                crop_padding=cfg.crop_padding, padding_mode=cfg.padding_mode,
                                alternating_flip=cfg.alternating_flip, **loader_kw)
    val_loader = (DeviceLoader(splits.val_images, splits.val_labels, splits.mean, splits.std, cfg.eval_batch_size,
                               train=False, **loader_kw) if cfg.has_validation else None)
    monitor_loader = (None if cfg.has_validation else
                      DeviceLoader(splits.test_images, splits.test_labels, splits.mean, splits.std,
                                   cfg.eval_batch_size, train=False, **loader_kw))
    optimizer = make_optimizer(model, cfg, plan)
    scheduler = make_schedule(optimizer, cfg, len(train_loader))
    ensure_momentum_buffers(optimizer)     # after the schedule: OneCycleLR sets the first step's momentum
    ema = EMA(model, ema_decay_of(cfg, cfg.epochs * len(train_loader))) if cfg.ema_decay or cfg.ema_window else None
    return Run(cfg, splits, plan, model, torch.compile(model) if plan.compile else model, optimizer, scheduler,
               plan.make_scaler(), ema, nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing), make_mixer(cfg),
               train_loader, val_loader, monitor_loader, member, seed)


def ema_decay_of(cfg: Config, total_steps: int) -> float:
    """The EMA's decay: `ema_decay`, or with `ema_window` the decay whose horizon 1 / (1 - decay) is that share of
    the run's `total_steps`: 1 - 1 / (ema_window x total_steps); 0 (the EMA follows the weights) under one step."""
    if not cfg.ema_window:
        return cfg.ema_decay
    return max(0.0, 1.0 - 1.0 / (cfg.ema_window * total_steps))


def make_schedule(optimizer: torch.optim.Optimizer, cfg: Config,
                  steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The recipe's schedule over `epochs` x `steps_per_epoch` steps, stepped after every batch, from lr / WARMUP_DIV
    up to `lr` over the first `pct_start` of the steps, then down:
    - onecycle: torch's OneCycleLR, down along a cosine to (lr / 25) / 1e4 at the last step; SGD's momentum cycled
      0.95 -> 0.85 -> 0.95 where `cycle_momentum`.
    - linear: a LambdaLR, both ways in straight lines, down to 0 where the run ends (one step after its last, so the
      last step still moves); the peak is step pct_start x steps (exactly `lr` there when a whole number). SGD
      keeps `momentum`. A pure function of the step: what a resume restores is the step count (last_epoch)."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "linear":
        warmup, start = cfg.pct_start * total, 1.0 / WARMUP_DIV     # steps (> 0, < total), factor at step 0

        def factor(step: int) -> float:
            return start + (1.0 - start) * step / warmup if step < warmup else (total - step) / (total - warmup)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    pct_start = cfg.pct_start
    # OneCycleLR ends its warm-up at step pct_start x total - 1 and divides by that step: exactly 0 (a one-step
    # warm-up, 10 steps at 10 %) divides by zero. Such a warm-up takes two steps instead (lr / 25, then lr), or none
    # in a run of two steps, where two would leave the decay no step (a division by zero again). Below one step torch
    # already skips the warm-up; every other count is left as it is, so the paper's schedule is unchanged.
    if float(pct_start * total) - 1 == 0:
        pct_start = 2.0 / total if total > 2 else 0.0
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, epochs=cfg.epochs,
                                               steps_per_epoch=steps_per_epoch, pct_start=pct_start,
                                               cycle_momentum=cfg.cycle_momentum, div_factor=WARMUP_DIV)


def make_optimizer(model: nn.Module, cfg: Config, plan: ExecutionPlan) -> torch.optim.SGD:
    """The recipe's SGD with the plan's kernel (fused on a GPU's GradScaler path). With `decay_norm_and_bias` off,
    the 1-D parameters (BatchNorm's weights and biases, the classifier's bias) are a second group without weight
    decay. Its momentum buffers are made once the schedule is built (`ensure_momentum_buffers`)."""
    params: Any = model.parameters()
    if not cfg.decay_norm_and_bias:
        params = [{"params": [p for p in model.parameters() if p.ndim > 1]},
                  {"params": [p for p in model.parameters() if p.ndim <= 1], "weight_decay": 0.0}]
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay, **plan.optimizer_kwargs())


def ensure_momentum_buffers(optimizer: torch.optim.Optimizer) -> None:
    """A zero momentum buffer, in its parameter's layout, for every parameter that has none, in every group whose
    momentum is not 0. Fused SGD makes missing buffers with `empty_like` on its first step, and when the GradScaler
    skips that step (found_inf) the kernel returns before writing them: uninitialised memory. With dampening 0 a
    zero buffer gives the first step SGD takes without one (buf = momentum * 0 + grad), bit for bit. Called once
    the schedule is built: OneCycleLR sets the momentum of the first step (0.95 where it cycles, even from a
    `momentum` of 0), and a group's momentum is then never 0 where a step could make it non-zero."""
    for group in optimizer.param_groups:
        if not group["momentum"]:
            continue
        for p in group["params"]:
            if optimizer.state[p].get("momentum_buffer") is None:
                optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p)


def planned_learning_rates(cfg: Config, steps_per_epoch: int) -> list[float]:
    """The learning rate of every optimizer step `fit` will take: the schedule stepped on a throwaway optimizer."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr, momentum=cfg.momentum)
    scheduler = make_schedule(optimizer, cfg, steps_per_epoch)
    lrs = []
    for _ in range(cfg.epochs * steps_per_epoch):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return lrs
