"""Training with the paper's recipe (SGD + OneCycleLR + early stopping), resumable to the bit.

Design choices:
- Recipe defaults are the paper's: SGD(0.1, momentum 0.9, wd 5e-4), OneCycleLR(max_lr 0.1,
  pct_start 0.1) stepped per batch, batch 128, up to 100 epochs, early stop after 10 epochs
  without a better val accuracy. Extras (label smoothing, EMA, cutout, nesterov, TTA) are Config
  fields, all off in `paper`.
- Loss and accuracy are accumulated sample-weighted over the whole epoch (the original notebook
  overwrote its loss accumulator every batch).
- Every epoch writes `last.pt` (everything needed to continue) and, on a new best val accuracy,
  `best.pt` (weights for inference), each to a temporary file then `os.replace`: a crash mid-write
  never leaves a half checkpoint. Each epoch reseeds torch/numpy/python from (seed, epoch) and the
  loader shuffles from the same pair, so an interrupted run resumed from `last.pt` ends with exactly
  the weights of an uninterrupted one (on CPU, deterministic).
- A non-finite loss stops at once with the epoch and step; nothing of that epoch is saved.
- On CUDA: bf16 autocast (no loss scaling needed) and channels_last; optional torch.compile.
"""
from __future__ import annotations

import json
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from .config import Config, pick_device, seed_everything
from .data import DeviceLoader, Splits, prepare_splits
from .evaluate import autocast_for, evaluate_loader
from .model import CustomResNet

CHECKPOINT_FORMAT = "cifar10-customresnet/1"
# Fields that may change between a run and its resumption; every other field defines the run.
RUNTIME_FIELDS = {"data_dir", "run_dir", "figures_dir", "submission_path", "test_limit", "device",
                  "compile", "eval_batch_size", "resume", "tta", "profile"}


class NonFiniteLossError(RuntimeError):
    pass


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or belongs to another model or recipe; the message says how."""


def ema_multi_avg_fn(decay: float, warmup: float = 10.0):
    """Per-step weight EMA whose decay ramps up as min(decay, (1 + n) / (warmup + n)) at update n
    (TensorFlow's num_updates rule), so a short run is not dominated by its first-step weights.
    Integer buffers (BatchNorm's num_batches_tracked) follow the model."""
    @torch.no_grad()
    def update(ema_params, params, num_averaged):
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (warmup + n))
        if torch.is_floating_point(ema_params[0]):
            torch._foreach_lerp_(ema_params, params, 1.0 - d)
        else:
            for e, p in zip(ema_params, params):
                e.copy_(p)
    return update


def new_file_mode() -> int:
    """The mode open() gives a new file (0o666 less the umask); mkstemp's temp files are 0600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


# --------------------------------------------------------------------------------------------
# Checkpoint files
# --------------------------------------------------------------------------------------------
def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, new_file_mode())
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, new_file_mode())
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint.")
    return ckpt


def load_state_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """load_state_dict, but a mismatch is reported as the keys and shapes that differ."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        lines = ([f"missing in checkpoint: {missing[:8]}{' ...' if len(missing) > 8 else ''}"] if missing else []) + \
                ([f"not in model: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}"] if unexpected else []) + \
                [f"shape differs: {s}" for s in shapes[:8]]
        raise CheckpointError(f"{source} does not fit this model (another architecture or profile?):\n  "
                              + "\n  ".join(lines))
    model.load_state_dict(state)


def recipe_differences(saved: dict[str, Any], cfg: Config) -> list[str]:
    now = cfg.to_dict()
    return [f"{k}: checkpoint {saved.get(k)!r} vs now {now[k]!r}" for k in now
            if k not in RUNTIME_FIELDS and k in saved and saved[k] != now[k]]


def build_model(cfg: Config) -> CustomResNet:
    return CustomResNet(**cfg.model_kwargs())


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


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    history: pd.DataFrame
    run_dir: Path
    best_val_acc: float
    stopped_early: bool
    finished: bool
    model: nn.Module = field(repr=False)

    @property
    def best_path(self) -> Path:
        return self.run_dir / "best.pt"

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pt"


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))


def _progress(iterable, **kwargs):
    from tqdm.auto import tqdm
    return tqdm(iterable, **kwargs)


def fit(cfg: Config, splits: Splits | None = None, progress: bool = True,
        max_epochs_this_call: int | None = None, log: Callable[[str], None] = print,
        on_step: Callable[[int, int, float], None] | None = None) -> TrainResult:
    """Train `cfg` (resuming from run_dir/last.pt when cfg.resume and it exists) and return the history.

    `max_epochs_this_call` trains at most that many epochs now (e.g. to fit a Kaggle time limit);
    calling again resumes. `on_step(epoch, step, loss)` is a hook for tests and custom logging."""
    device = pick_device(cfg.device)
    seed_everything(cfg.seed, cfg.deterministic)
    splits = splits or prepare_splits(cfg)
    run_dir = cfg.run_path
    last_path, best_path, history_path = run_dir / "last.pt", run_dir / "best.pt", run_dir / "history.csv"
    on_cuda = device.type == "cuda"
    for stale in run_dir.glob(".*.tmp"):   # left by a process killed mid-save; the real files are whole
        stale.unlink()

    model = build_model(cfg).to(device)
    if on_cuda and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    train_loader = DeviceLoader(splits.train_images, splits.train_labels, splits.mean, splits.std,
                                cfg.batch_size, device, train=True, cutout_size=cfg.cutout, seed=cfg.seed,
                                channels_last=on_cuda and cfg.channels_last)
    val_loader = DeviceLoader(splits.val_images, splits.val_labels, splits.mean, splits.std,
                              cfg.eval_batch_size, device, train=False, channels_last=on_cuda and cfg.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, epochs=cfg.epochs,
                                                    steps_per_epoch=len(train_loader), pct_start=cfg.pct_start)
    ema = (AveragedModel(model, multi_avg_fn=ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
           if cfg.ema_decay else None)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    step_model = torch.compile(model) if cfg.compile else model

    history: list[dict[str, Any]] = []
    start_epoch, best_acc, bad_epochs, stopped_early = 0, -1.0, 0, False
    if cfg.resume and last_path.exists():
        ckpt = load_checkpoint(last_path)
        diffs = recipe_differences(ckpt["config"], cfg)
        if diffs:
            raise CheckpointError(f"{last_path} belongs to a different run:\n  " + "\n  ".join(diffs) +
                                  "\nUse another run_dir for this configuration, or resume=False to start over.")
        load_state_checked(model, ckpt["model"], str(last_path))
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.load_state_dict(ckpt["ema"])
        _set_rng_state(ckpt["rng"])
        history, start_epoch = list(ckpt["history"]), ckpt["epoch"]
        best_acc, bad_epochs, stopped_early = ckpt["best_val_acc"], ckpt["bad_epochs"], ckpt["stopped_early"]
        log(f"Resumed {last_path} after epoch {start_epoch} (best val acc {best_acc:.4f}).")

    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if start_epoch < cfg.epochs and not stopped_early:
        log(f"Training on {device}: {len(splits.train_labels):,} train / {len(splits.val_labels):,} val images, "
            f"{n_params:,} parameters, epochs {start_epoch + 1}-{cfg.epochs}, {len(train_loader)} steps/epoch.")
    end_epoch = cfg.epochs if max_epochs_this_call is None else min(cfg.epochs, start_epoch + max_epochs_this_call)
    epochs_bar = _progress(range(start_epoch, end_epoch), desc="epochs", unit="epoch",
                           initial=start_epoch, total=cfg.epochs, disable=not progress or stopped_early)
    for epoch in epochs_bar:
        if stopped_early:
            break
        seed_everything(cfg.seed * 1_000_003 + epoch, cfg.deterministic)
        train_loader.set_epoch(epoch)
        model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        first_bad_step = torch.full((), -1, device=device)   # first non-finite step, tracked without a sync
        steps = _progress(train_loader, desc=f"epoch {epoch + 1}", leave=False, disable=not progress)
        for step, (x, y) in enumerate(steps):
            with autocast_for(device, cfg.amp):
                logits = step_model(x)
                loss = criterion(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            first_bad_step = torch.where((first_bad_step < 0) & ~torch.isfinite(loss.detach()),
                                         step, first_bad_step)
            # One host sync every 25 steps (and on the last): checks the loss and refreshes the bar.
            if step % 25 == 0 or step == len(train_loader) - 1 or on_step is not None:
                bad_step = int(first_bad_step)
                if bad_step >= 0:
                    raise NonFiniteLossError(
                        f"loss became non-finite at epoch {epoch + 1}, step {bad_step + 1}; training stopped. "
                        f"The last good checkpoint ({last_path}) is untouched. Lower lr or check the data.")
                value = loss.item()
                if on_step is not None:
                    on_step(epoch, step, value)
                steps.set_postfix(loss=f"{value:.3f}", lr=f"{scheduler.get_last_lr()[0]:.4f}")
        train_loss, train_acc = (loss_sum / seen).item(), (correct.float() / seen).item()
        eval_model = ema.module if ema is not None else model
        if ema is not None and on_cuda and cfg.channels_last:
            eval_model = eval_model.to(memory_format=torch.channels_last)
        val = evaluate_loader(eval_model, val_loader, amp=cfg.amp)
        row = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val["loss"],
               "val_acc": val["acc"], "lr": scheduler.get_last_lr()[0], "seconds": time.perf_counter() - t0}
        history.append(row)
        improved = val["acc"] > best_acc
        if improved:
            best_acc, bad_epochs = val["acc"], 0
        else:
            bad_epochs += 1
        stopped_early = bool(cfg.patience) and bad_epochs >= cfg.patience
        meta = {"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "epoch": epoch + 1,
                "normalization": {"mean": splits.mean, "std": splits.std}, "classes": splits.classes}
        if improved:
            atomic_save({**meta, "model": eval_model.state_dict(), "val_acc": val["acc"]}, best_path)
        atomic_save({**meta, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                     "history": history, "best_val_acc": best_acc, "bad_epochs": bad_epochs,
                     "stopped_early": stopped_early, "rng": _rng_state()}, last_path)
        atomic_write_text(pd.DataFrame(history).to_csv(index=False), history_path)
        epochs_bar.set_postfix(train_loss=f"{train_loss:.3f}", train_acc=f"{train_acc:.3f}",
                               val_acc=f"{val['acc']:.3f}", lr=f"{row['lr']:.4f}")
        if not progress:
            log(f"epoch {epoch + 1:3d}  train loss {train_loss:.4f} acc {train_acc:.4f}  "
                f"val loss {val['loss']:.4f} acc {val['acc']:.4f}  {row['seconds']:.1f}s")
        if stopped_early:
            log(f"Early stop after epoch {epoch + 1}: no val improvement for {cfg.patience} epochs.")
    epochs_bar.close()
    done = len(history)
    if ema is not None:
        model = ema.module
    return TrainResult(pd.DataFrame(history), run_dir, best_acc, stopped_early,
                       stopped_early or done >= cfg.epochs, model)


def read_history(run_dir: str | Path) -> pd.DataFrame:
    path = Path(run_dir) / "history.csv"
    if not path.is_file():
        raise CheckpointError(f"{path}: no training history here; run notebook 03 (or utils.train.fit) first.")
    return pd.read_csv(path)


def save_json(obj: Any, path: Path) -> None:
    atomic_write_text(json.dumps(obj, indent=2, default=float), path)
