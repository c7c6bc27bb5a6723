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
from .model import build_model
from .runtime.device import ExecutionPlan


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
    ensure_momentum_buffers(optimizer)
    return optimizer


def ensure_momentum_buffers(optimizer: torch.optim.Optimizer) -> None:
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
