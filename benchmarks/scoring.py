"""A trained model's headline numbers, as the benchmarks report them (benchmarks/reproduce.py,
benchmarks/compare_profiles.py), and two models compared image by image (benchmarks/tta.py, self_training.py); the
notebooks compute theirs in notebook 04 through utils.evaluate."""
from __future__ import annotations

import numpy as np

from utils.checkpoint import load_trained_model
from utils.config import Config
from utils.corruptions import summarize
from utils.dataset import Splits
from utils.evaluate import evaluate_loader, robustness
from utils.loader import DeviceLoader
from utils.runtime.device import ExecutionPlan


def evaluate_checkpoint(path, cfg: Config, splits: Splits, plan: ExecutionPlan) -> dict[str, float | None]:
    """A trained model's headline numbers: clean validation accuracy (None without a split), test accuracy with
    the profile's TTA and without, and the mean accuracy under corruptions (utils.corruptions)."""
    model, ckpt = load_trained_model(path, plan.device)
    norm = ckpt["normalization"]

    def acc(images: np.ndarray, labels: np.ndarray, tta: str = "none") -> float:
        loader = DeviceLoader(images, labels, norm["mean"], norm["std"], cfg.eval_batch_size, plan.device,
                              channels_last=plan.channels_last)
        return evaluate_loader(model, loader, tta, plan)["acc"]

    plain = acc(splits.test_images, splits.test_labels)
    table = robustness(model, ckpt, splits.test_images, splits.test_labels, cfg, plan, progress=False)
    return {"best_epoch": int(ckpt["epoch"]),
            "val_acc": acc(splits.val_images, splits.val_labels) if len(splits.val_labels) else None,
            "test_acc": acc(splits.test_images, splits.test_labels, cfg.tta) if cfg.tta != "none" else plain,
            "test_acc_no_tta": plain, "mean_corruption_acc": summarize(table)["corruption_accuracy"]}


def paired(correct: np.ndarray, baseline: np.ndarray) -> dict[str, float]:
    """Accuracy over the images of `correct` (True = right) and its difference to `baseline` on the same images: the
    images gained and lost, the mean per-image difference (+1, 0, -1) and its standard error, and whether the
    difference is beyond two of them."""
    diff = np.asarray(correct, dtype=float) - np.asarray(baseline, dtype=float)
    se = diff.std(ddof=1) / np.sqrt(len(diff))
    return {"acc": float(np.mean(correct)), "gained": int((diff > 0).sum()), "lost": int((diff < 0).sum()),
            "diff": float(diff.mean()), "se": float(se), "beyond_2se": bool(abs(diff.mean()) > 2 * se)}
