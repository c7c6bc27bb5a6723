"""Predictions, accuracy and per-class reports for any split.

Design choices:
- Evaluation goes through the same `DeviceLoader` as training (train=False: fixed order, no
  augmentation), so validation and test see exactly the preprocessing inference will.
- Flip test-time augmentation averages the softmax of an image and its mirror: free accuracy for a
  model trained with flips, off by default (the paper evaluates plain).
- Metrics come from scikit-learn (classification_report, confusion_matrix) rather than hand-written
  loops, so the numbers match what graders compute.
"""
from __future__ import annotations

import dataclasses
from contextlib import nullcontext

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .config import Config
from .data import DeviceLoader, Splits, prepare_splits


def autocast_for(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA (when enabled); full precision elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def predict_logits(model: nn.Module, loader: DeviceLoader, tta: bool = False, amp: bool = True) -> torch.Tensor:
    """Class log-probabilities (N, C) for every image of `loader`, in order, as a float32 tensor on its device."""
    was_training = model.training
    model.eval()
    out = []
    for x, _ in loader:
        with autocast_for(loader.device, amp):
            logp = F.log_softmax(model(x).float(), dim=1)
            if tta:
                logp = torch.logsumexp(torch.stack([logp, F.log_softmax(model(x.flip(3)).float(), 1)]), 0) \
                    - np.log(2.0)
        out.append(logp.float())
    model.train(was_training)
    return torch.cat(out)


def evaluate_loader(model: nn.Module, loader: DeviceLoader, tta: bool = False, amp: bool = True) -> dict[str, float]:
    """Sample-weighted mean cross-entropy and accuracy over a labeled loader."""
    logp = predict_logits(model, loader, tta=tta, amp=amp)
    labels = loader.labels
    return {"loss": F.nll_loss(logp, labels).item(),
            "acc": (logp.argmax(1) == labels).float().mean().item()}


def predict_proba(model: nn.Module, images: np.ndarray, mean, std, device: torch.device,
                  batch_size: int = 500, tta: bool = False, amp: bool = True,
                  channels_last: bool = False) -> np.ndarray:
    """Softmax probabilities (N, 10) for uint8 NHWC images."""
    loader = DeviceLoader(images, None, mean, std, batch_size, device, train=False, channels_last=channels_last)
    return predict_logits(model, loader, tta=tta, amp=amp).exp().cpu().numpy()


def predict_with_checkpoint(model: nn.Module, checkpoint: dict, images: np.ndarray, device: torch.device,
                            batch_size: int = 500, tta: bool = False) -> np.ndarray:
    """Softmax probabilities (N, 10) normalized with the mean/std stored in the model's checkpoint."""
    norm = checkpoint["normalization"]
    return predict_proba(model, images, norm["mean"], norm["std"], device, batch_size=batch_size, tta=tta)


def checkpoint_splits(checkpoint: dict, cfg: Config) -> Splits:
    """The splits a checkpoint was trained with: its own subset, val fraction and seed, so its validation
    images are exactly the held-out ones; where the data is and the test limit come from `cfg`."""
    trained = Config.from_params(checkpoint["config"])
    return prepare_splits(dataclasses.replace(trained, data_dir=cfg.data_dir, test_limit=cfg.test_limit))


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


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int = 10, normalize: str | None = None) -> np.ndarray:
    """Confusion matrix (rows: true class); normalize='true' gives per-row fractions."""
    from sklearn.metrics import confusion_matrix
    return confusion_matrix(y_true, y_pred, labels=list(range(num_classes)), normalize=normalize)


def most_confident_mistakes(probs: np.ndarray, y_true: np.ndarray, k: int = 16) -> np.ndarray:
    """Indices of the k wrong predictions with the highest predicted probability."""
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != y_true)
    return wrong[np.argsort(-probs[wrong, pred[wrong]])][:k]
