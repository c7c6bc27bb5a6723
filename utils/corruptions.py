"""Deterministic synthetic corruptions (in the spirit of CIFAR-10-C) and a robustness table, as a proxy for shift.

What: 9 corruption types (`CORRUPTIONS`: noises, blurs, contrast, brightness, saturation, JPEG, pixelation) x 5
severities (`SEVERITIES`, parameters in `PARAMETERS`), applied to uint8 image batches on the caller's device, and
`robustness_table`, the accuracy per (corruption, severity) next to clean accuracy on the same images.

Why: the competition scores images from another source than CIFAR-10, so a change that buys clean accuracy by
becoming brittle should show. It is a proxy, not a forecast: natural shift tracks clean accuracy closely and
synthetic corruptions only loosely (Miller et al. 2021; Taori et al. 2020). Every random draw comes from a CPU
`torch.Generator` seeded per (seed, corruption, severity) by `corruption_seed` (SHA-256, stable across processes and
machines), so two models compare on exactly the same images on any device; severities are monotone (a higher one
is a harder set). Where the values follow CIFAR-10-C (Hendrycks & Dietterich 2019, hendrycks/robustness
make_cifar_c.py) and where and why they deviate (motion blur, contrast, brightness, saturation, pixelation):
docs/robustness.md. Evidence: tests/test_corruptions.py (the same images for a seed, on CUDA as on CPU; shape,
dtype and range kept; every severity harder than the one before).
"""
from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

PARAMETERS: dict[str, tuple[Any, ...]] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),                     # std, [0, 1] scale
    "shot_noise": (500, 250, 100, 75, 50),                                # photons per unit intensity
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),                           # sigma, pixels
    "motion_blur": ((6, 1.0), (6, 1.5), (6, 2.0), (8, 2.25), (9, 2.5)),   # (radius, sigma), pixels
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),                              # adjust_contrast factor
    "brightness": (1.1, 1.2, 1.3, 1.4, 1.65),                             # adjust_brightness factor
    "saturate": (1.3, 1.65, 2.2, 2.9, 4.15),                              # adjust_saturation factor
    "jpeg": (80, 65, 58, 50, 40),                                         # JPEG quality
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),                            # side scale before upsampling
}
CORRUPTIONS: tuple[str, ...] = tuple(PARAMETERS)
RANDOM_CORRUPTIONS: tuple[str, ...] = ("gaussian_noise", "shot_noise", "motion_blur")
MOTION_ANGLE = 45.0           # degrees: angles are uniform in [-45, 45), as CIFAR-10-C
MOTION_MIN_WEIGHT = 1e-4      # motion-blur taps lighter than this (after normalizing) are dropped
COLUMNS = ["corruption", "severity", "accuracy", "images"]


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------
def check_corruption(name: str) -> None:
    if not isinstance(name, str) or name not in PARAMETERS:
        raise ValueError(f"unknown corruption {name!r}; allowed: {', '.join(CORRUPTIONS)}")


def check_severity(severity: int) -> None:
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise ValueError(f"unknown severity {severity!r}; allowed: {', '.join(map(str, SEVERITIES))}")


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        dtype = getattr(images, "dtype", None)
        raise ValueError(f"images must be a uint8 torch.Tensor of shape (N, 3, H, W); got {dtype} {shape}")


def _check_generator(generator: torch.Generator) -> None:
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU torch.Generator (draws happen on the CPU); got {generator!r}")


# --------------------------------------------------------------------------------------------
# The corruptions: uint8 (N, 3, H, W) in, float32 in [0, 1] (unclamped) out, on the images' device
# --------------------------------------------------------------------------------------------
def _float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(255.0)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)   # x is always a fresh tensor


def _gaussian_noise(images: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(images.shape, generator=generator, dtype=torch.float32)
    return _float(images).add_(noise.to(images.device), alpha=std)


def _shot_noise(images: torch.Tensor, photons: float, generator: torch.Generator) -> torch.Tensor:
    # The Poisson rate is the image itself, so the draw runs where the generator is and comes back once.
    rate = images.cpu().float().mul_(photons / 255.0)
    counts = torch.poisson(rate, generator=generator)
    return counts.div_(photons).to(images.device)


def _gaussian_blur(images: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    size = 2 * int(4.0 * sigma + 0.5) + 1
    return TF.gaussian_blur(_float(images), [size, size], [sigma, sigma])


def _motion_blur(images: torch.Tensor, param: tuple[int, float], generator: torch.Generator) -> torch.Tensor:
    radius, sigma = param
    n, c, h, w = images.shape
    taps = torch.arange(2 * radius + 1, dtype=torch.float64)
    weights = torch.exp(-taps ** 2 / (2.0 * sigma ** 2))
    weights /= weights.sum()
    keep = weights >= MOTION_MIN_WEIGHT
    taps, weights = taps[keep], weights[keep] / weights[keep].sum()
    angle = torch.rand(n, generator=generator, dtype=torch.float64).mul_(2 * MOTION_ANGLE).sub_(MOTION_ANGLE)
    angle = torch.deg2rad(angle)[:, None]
    # Whole-pixel offsets as ImageMagick rounds them (ceil(v - 0.5)), computed on the CPU: identical on any device.
    dx = torch.ceil(taps * torch.cos(angle) - 0.5).long()                 # (n, taps)
    dy = torch.ceil(taps * torch.sin(angle) - 0.5).long()
    offsets = torch.stack([dy, dx]).to(images.device)
    x = _float(images).flatten(2)                                         # (n, c, h*w)
    rows = torch.arange(h, device=images.device)
    cols = torch.arange(w, device=images.device)
    out = torch.zeros_like(x)
    for t, weight in enumerate(weights.tolist()):
        r = (rows[None, :] + offsets[0, :, t:t + 1]).clamp_(0, h - 1)       # (n, h), edge pixels repeated
        q = (cols[None, :] + offsets[1, :, t:t + 1]).clamp_(0, w - 1)       # (n, w)
        index = (r[:, :, None] * w + q[:, None, :]).flatten(1)              # (n, h*w)
        out.add_(torch.gather(x, 2, index[:, None, :].expand(n, c, h * w)), alpha=weight)
    return out.view(n, c, h, w)


def _contrast(images: torch.Tensor, factor: float, generator: torch.Generator) -> torch.Tensor:
    return TF.adjust_contrast(_float(images), factor)


def _brightness(images: torch.Tensor, factor: float, generator: torch.Generator) -> torch.Tensor:
    return TF.adjust_brightness(_float(images), factor)


def _saturate(images: torch.Tensor, factor: float, generator: torch.Generator) -> torch.Tensor:
    return TF.adjust_saturation(_float(images), factor)


def _jpeg(images: torch.Tensor, quality: int, generator: torch.Generator) -> torch.Tensor:
    # torchvision's CPU encoder loops over the batch itself; decode there and come back in one copy.
    # torchvision 0.29 deprecates its image codecs in favour of TorchCodec and warns on every image.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*image decoding and encoding", category=DeprecationWarning)
        coded = TF.jpeg(images.cpu(), quality)
    return _float(coded.to(images.device))


def _pixelate(images: torch.Tensor, scale: float, generator: torch.Generator) -> torch.Tensor:
    h, w = images.shape[-2:]
    small = TF.resize(_float(images), [max(1, int(h * scale)), max(1, int(w * scale))],
                      interpolation=InterpolationMode.BILINEAR, antialias=True)
    return TF.resize(small, [h, w], interpolation=InterpolationMode.NEAREST_EXACT, antialias=False)


_OPS: dict[str, Callable[[torch.Tensor, Any, torch.Generator], torch.Tensor]] = {
    "gaussian_noise": _gaussian_noise, "shot_noise": _shot_noise, "gaussian_blur": _gaussian_blur,
    "motion_blur": _motion_blur, "contrast": _contrast, "brightness": _brightness, "saturate": _saturate,
    "jpeg": _jpeg, "pixelate": _pixelate,
}
assert tuple(_OPS) == CORRUPTIONS


def corrupt(images: torch.Tensor, name: str, severity: int, generator: torch.Generator) -> torch.Tensor:
    """`images` (uint8, (N, 3, H, W), any device) under corruption `name` at `severity` (1-5): uint8, same shape
    and device. Random draws come from `generator` (a CPU generator), so a seed fixes the output on any device."""
    check_corruption(name)
    check_severity(severity)
    _check_images(images)
    _check_generator(generator)
    if images.shape[0] == 0:
        return images.clone()
    with torch.no_grad():
        return _to_uint8(_OPS[name](images, PARAMETERS[name][int(severity) - 1], generator))


def corruption_seed(seed: int, name: str, severity: int) -> int:
    """A 63-bit seed for one (seed, corruption, severity) set, the same in every process and on every machine."""
    digest = hashlib.sha256(f"{int(seed)}/{name}/{int(severity)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


def corruption_generator(seed: int, name: str, severity: int) -> torch.Generator:
    """A fresh CPU generator seeded with `corruption_seed(seed, name, severity)`."""
    return torch.Generator().manual_seed(corruption_seed(seed, name, severity))


# --------------------------------------------------------------------------------------------
# Robustness table
# --------------------------------------------------------------------------------------------
def _as_ids(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def robustness_table(predict: Callable[[torch.Tensor], Any], images: torch.Tensor, labels: Any, seed: int = 0,
                     limit: int = 0, names: tuple[str, ...] | list[str] = CORRUPTIONS,
                     severities: tuple[int, ...] | list[int] = SEVERITIES, progress: bool = True) -> pd.DataFrame:
    """Accuracy of `predict` on the clean images (first row: corruption 'clean', severity 0) and on each
    (corruption, severity) set made from the same images. `predict` gets a uint8 (n, 3, H, W) tensor on the
    images' device, the whole set at once, and returns n class ids (tensor or array). `limit` > 0 keeps the first
    `limit` images. `predict` runs under torch.no_grad(). Columns: corruption, severity, accuracy, images."""
    from .runtime.progress import bar  # widget bars where they render, text bars on Kaggle

    names, severities = list(names), list(severities)
    for name in names:
        check_corruption(name)
    for severity in severities:
        check_severity(severity)
    _check_images(images)
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0:
        raise ValueError(f"limit must be an int >= 0 (0: all images); got {limit!r}")
    y = _as_ids(labels)
    if y.ndim != 1 or len(y) != len(images):
        raise ValueError(f"labels must be one class id per image: {len(images)} images, labels of shape {y.shape}")
    if limit:
        images, y = images[:limit], y[:limit]
    n = len(images)

    sets = [("clean", 0)] + [(name, severity) for name in names for severity in severities]
    rows = []
    for name, severity in bar(sets, progress, desc="corruptions", unit="set"):
        with torch.no_grad():
            if name == "clean":
                x = images
            else:
                x = corrupt(images, name, severity, corruption_generator(seed, name, severity))
            pred = _as_ids(predict(x))
        if pred.shape != (n,):
            raise ValueError(f"predict must return {n} class ids (shape ({n},)) for {name} severity {severity}; "
                             f"got shape {pred.shape} (logits? take argmax(1))")
        accuracy = float((pred == y).mean()) if n else float("nan")
        rows.append({"corruption": name, "severity": int(severity), "accuracy": accuracy, "images": n})
    return pd.DataFrame(rows, columns=COLUMNS)


def summarize(table: pd.DataFrame) -> dict[str, float]:
    """Clean accuracy, mean accuracy over all corruption rows, and the gap (clean - mean corruption accuracy)."""
    clean = table.loc[table["corruption"] == "clean", "accuracy"]
    if len(clean) != 1:
        raise ValueError(f"the table must have exactly one 'clean' row; it has {len(clean)}")
    corrupted = table.loc[table["corruption"] != "clean", "accuracy"]
    mean = float(corrupted.mean()) if len(corrupted) else float("nan")
    return {"clean_accuracy": float(clean.iloc[0]), "corruption_accuracy": mean,
            "gap": float(clean.iloc[0]) - mean}
