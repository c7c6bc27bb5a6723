"""Predictions, accuracy, per-class reports and the corruption report for any split.

Design choices:
- Evaluation goes through the same `DeviceLoader` as training (train=False: fixed order, no
  augmentation), so validation and test see exactly the preprocessing inference will.
- Test-time augmentation (`tta`) averages the softmax over views of each image: `flip` adds its
  mirror; `flip_shift` also adds the image and its mirror translated by TTA_SHIFT pixels in both
  diagonal directions (6 views), the kind of shift the training crops (zero padding 4) taught the model.
  Probabilities are averaged, not logits: a view that is sure of itself does not outvote the others.
  Off in `paper` (the paper evaluates plain).
- The execution plan (precision, layout) is the caller's (`utils.runtime.device.ExecutionPlan`); without one,
  evaluation runs in fp32, exact.
- Metrics come from scikit-learn (classification_report, confusion_matrix) rather than hand-written
  loops, so the numbers match what graders compute.
- This module never imports the trainer: inference needs only the model and its checkpoint.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .config import Config
from .corruptions import robustness_table
from .dataset import Splits, prepare_splits
from .loader import DeviceLoader
from .runtime.device import ExecutionPlan, decide
from .runtime.progress import progress_bars

TTA_SHIFT = 2                 # pixels; within the training crops' +-4


def tta_mode(tta: str | bool) -> str:
    """`tta` as a mode name; True/False (the first release's flag) mean flip/none."""
    return {True: "flip", False: "none"}[tta] if isinstance(tta, bool) else tta


def translate(x: torch.Tensor, dy: int, dx: int, fill: torch.Tensor) -> torch.Tensor:
    """Shift normalized images by (dy, dx) pixels, filling the border with `fill` (black, once normalized)."""
    p = max(abs(dy), abs(dx))
    padded = F.pad(x - fill, (p, p, p, p)) + fill
    h, w = x.shape[-2:]
    return padded[..., p - dy:p - dy + h, p - dx:p - dx + w]


def tta_views(x: torch.Tensor, mode: str, fill: torch.Tensor) -> list[torch.Tensor]:
    views = [x]
    if mode in ("flip", "flip_shift"):
        views.append(x.flip(3))
    if mode == "flip_shift":
        views += [translate(v, d, d, fill) for v in (x, x.flip(3)) for d in (-TTA_SHIFT, TTA_SHIFT)]
    return views


@torch.no_grad()
def predict_log_probs(model: nn.Module, loader: DeviceLoader, tta: str | bool = "none",
                   plan: ExecutionPlan | None = None) -> torch.Tensor:
    """Class log-probabilities (N, C) for every image of `loader`, in order, as a float32 tensor on its device."""
    plan = plan or decide(loader.device, amp=False, channels_last=False)
    if plan.channels_last:        # the model in the layout of its input batches (a member loaded contiguous, say)
        model.to(memory_format=torch.channels_last)
    mode = tta_mode(tta)
    black = -loader.mean / loader.std
    was_training = model.training
    model.eval()
    out = []
    for x, _ in loader:
        with plan.autocast():
            views = [F.log_softmax(model(v).float(), dim=1) for v in tta_views(x, mode, black)]
        out.append(torch.logsumexp(torch.stack(views), 0) - math.log(len(views)))
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 10, device=loader.device)


def evaluate_loader(model: nn.Module, loader: DeviceLoader, tta: str | bool = "none",
                    plan: ExecutionPlan | None = None) -> dict[str, float]:
    """Sample-weighted mean cross-entropy and accuracy over a labeled loader."""
    logp = predict_log_probs(model, loader, tta=tta, plan=plan)
    labels = loader.labels
    return {"loss": F.nll_loss(logp, labels).item(),
            "acc": (logp.argmax(1) == labels).float().mean().item()}


def predict_proba(model: nn.Module, images: np.ndarray, mean, std, device: torch.device,
                  batch_size: int = 500, tta: str | bool = "none", plan: ExecutionPlan | None = None) -> np.ndarray:
    """Softmax probabilities (N, 10) for uint8 NHWC images."""
    channels_last = plan is not None and plan.channels_last
    loader = DeviceLoader(images, None, mean, std, batch_size, device, train=False, channels_last=channels_last)
    return predict_log_probs(model, loader, tta=tta, plan=plan).exp().cpu().numpy()


def predict_with_checkpoint(model: nn.Module, checkpoint: dict, images: np.ndarray, device: torch.device,
                            batch_size: int = 500, tta: str | bool = "none",
                            plan: ExecutionPlan | None = None) -> np.ndarray:
    """Softmax probabilities (N, 10) normalized with the mean/std stored in the model's checkpoint."""
    norm = checkpoint["normalization"]
    return predict_proba(model, images, norm["mean"], norm["std"], device, batch_size, tta, plan)


def checkpoint_splits(checkpoint: dict, cfg: Config) -> Splits:
    """The splits a checkpoint was trained with: its own subset, val fraction and seed, so its validation
    images are exactly the held-out ones; where the data is and the test limit come from `cfg`."""
    trained = Config.from_params(checkpoint["config"])
    return prepare_splits(trained.replace(data_dir=cfg.data_dir, test_limit=cfg.test_limit))


def corruption_images(images: np.ndarray, cfg: Config, device: torch.device) -> torch.Tensor:
    """The first `cfg.corruption_images` images (0: all) as a uint8 (n, 3, H, W) tensor on `device`, what
    utils.corruptions.robustness_table corrupts."""
    n = cfg.corruption_images or len(images)
    return torch.from_numpy(np.ascontiguousarray(images[:n])).to(device).permute(0, 3, 1, 2).contiguous()


def uint8_log_probs(model: nn.Module, checkpoint: dict, batch: torch.Tensor, cfg: Config,
                    plan: ExecutionPlan | None = None) -> torch.Tensor:
    """Class log-probabilities for a uint8 (n, 3, H, W) batch on the device, with the checkpoint's normalisation
    and the profile's TTA (a corruption set of robustness_table)."""
    norm = checkpoint["normalization"]
    loader = DeviceLoader(batch, None, norm["mean"], norm["std"], cfg.eval_batch_size, batch.device,
                          channels_last=plan is not None and plan.channels_last)
    return predict_log_probs(model, loader, cfg.tta, plan)


def robustness(model: nn.Module, checkpoint: dict, images: np.ndarray, labels: np.ndarray, cfg: Config,
               plan: ExecutionPlan | None = None, progress: bool = True) -> pd.DataFrame:
    """Accuracy on the first `cfg.corruption_images` test images under every corruption and severity of
    utils.corruptions (a synthetic proxy for distribution shift), with a `clean` row first."""
    device = plan.device if plan is not None else torch.device("cpu")
    uint8 = corruption_images(images, cfg, device)
    return robustness_table(lambda batch: uint8_log_probs(model, checkpoint, batch, cfg, plan).argmax(1), uint8,
                            labels[:len(uint8)], seed=cfg.seed, limit=0, progress=progress_bars(progress))


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from sklearn.metrics import accuracy_score
    return float(accuracy_score(y_true, y_pred))


def classification_table(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Per-class precision / recall / F1 / support plus accuracy, macro and weighted averages."""
    from sklearn.metrics import classification_report
    report = classification_report(y_true, y_pred, labels=list(range(len(classes))), target_names=classes,
                                   output_dict=True, zero_division=0)
    table = pd.DataFrame(report).T
    # The report's accuracy is a bare number, spread over the row's cells: its support would read as 0 or 1.
    table.loc["accuracy", "support"] = table.loc["macro avg", "support"]
    table["support"] = table["support"].astype(int)
    return table


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = 10,
              normalize: str | None = None) -> np.ndarray:
    """Confusion matrix (rows: true class); normalize='true' gives per-row fractions."""
    from sklearn.metrics import confusion_matrix
    return confusion_matrix(y_true, y_pred, labels=list(range(num_classes)), normalize=normalize)


def most_confident_mistakes(probs: np.ndarray, y_true: np.ndarray, k: int = 16) -> np.ndarray:
    """Indices of the k wrong predictions with the highest predicted probability."""
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != y_true)
    return wrong[np.argsort(-probs[wrong, pred[wrong]])][:k]
