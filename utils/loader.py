"""The device loader: the whole uint8 dataset on the training device, augmented there a batch at a time.

Design choices:
- The whole uint8 dataset (CIFAR-10's 50,000 images are 150 MB) lives on the training device and
  augmentation (zero-padded random crop + horizontal flip, optional TrivialAugment and cutout) runs on
  whole batches there: no PIL, no worker processes, no host-to-device copy per step.
- Randomness comes from a CPU generator seeded by (seed, epoch), so an epoch is reproducible on any
  device and a resumed run sees the same batches. A whole epoch's draws (order, crop offsets, flips,
  cutout centres, augmentation ops) are made up front, in the same order the per-batch loader of the
  first release drew them (so batches are bit-identical to it), and moved to the device in ONE copy:
  a per-batch `.to(device)` from pageable memory would synchronise the GPU stream several times a step.
- Validation and test batches are never augmented (the original notebook augmented its val split).
- Knobs beyond the paper (utils.config.Config, off in `paper`): the crop's padding (`crop_padding`, 0: no shift) and
  what it holds (`padding_mode`: zeros, or the image reflected about its border), and `alternating_flip`
  (airbench's: each image mirrored or not at random in epoch 0, then the other way every next epoch). They leave
  the default path's draws untouched: the alternating flips replace the epoch's coins (still drawn, so the crops
  and cutout centres are those of the default path) with a per-image start drawn from a generator of its own.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .augment import draw_trivial_augment, trivial_augment
from .config import Config
from .dataset import Splits

CROP_PAD = Config.crop_padding     # RandomCrop(32, padding=4), the paper's: Config's default

# --------------------------------------------------------------------------------------------
# Batched augmentation: draw on the CPU generator, apply on the device
# --------------------------------------------------------------------------------------------
def draw_crop(n: int, pad: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column offsets (0..2*pad) of a padded random crop, one per image."""
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    return dy, dx


def draw_flip(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator) < 0.5


def draw_cutout(n: int, height: int, width: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres of the erased squares, one per image."""
    cy = torch.randint(0, height, (n,), generator=generator)
    cx = torch.randint(0, width, (n,), generator=generator)
    return cy, cx


def reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Indices from -(size - 1) to 2 (size - 1) mirrored into 0..size - 1 about the first and last row or column,
    which are not repeated (F.pad's 'reflect': -1 -> 1, size -> size - 2)."""
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def crop(x: torch.Tensor, pad: int, dy: torch.Tensor, dx: torch.Tensor, mode: str = "zeros") -> torch.Tensor:
    """Pad each side by `pad` (zeros, or the image reflected: mode 'reflect') and crop back at offsets (dy, dx) per
    image (RandomCrop(32, padding=4))."""
    n, c, h, w = x.shape
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    if mode == "reflect":           # padded row r is source row r - pad, mirrored at the border
        return x[batch, chan, reflect(rows - pad, h), reflect(cols - pad, w)]
    padded = F.pad(x, (pad, pad, pad, pad))
    return padded[batch, chan, rows, cols]


def flip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror (left-right) the images where `mask` is true."""
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def erase(x: torch.Tensor, size: int, cy: torch.Tensor, cx: torch.Tensor) -> torch.Tensor:
    """Zero (= the mean pixel, after normalisation) a size x size square centred at (cy, cx) per image."""
    _, _, h, w = x.shape
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    # Rows/cols cy - size//2 ... cy - size//2 + size - 1: exactly `size` wide, clipped at the border.
    dy, dx = ys - cy[:, None] + size // 2, xs - cx[:, None] + size // 2
    in_y = ((dy >= 0) & (dy < size))[:, None, :, None]
    in_x = ((dx >= 0) & (dx < size))[:, None, None, :]
    return x.masked_fill(in_y & in_x, 0.0)


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Draw and apply a padded random crop per image (one batch at a time: for tests and benchmarks)."""
    dy, dx = draw_crop(len(x), pad, generator)
    return crop(x, pad, dy.to(x.device), dx.to(x.device))


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return flip(x, draw_flip(len(x), generator).to(x.device))


def cutout(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Draw and apply a size x size erased square per image (DeVries & Taylor 2017)."""
    _, _, h, w = x.shape
    cy, cx = draw_cutout(len(x), h, w, generator)
    return erase(x, size, cy.to(x.device), cx.to(x.device))


# --------------------------------------------------------------------------------------------
# The device-resident loader
# --------------------------------------------------------------------------------------------
def epoch_seed(training_seed: int, epoch: int) -> int:
    """The seed of one epoch's random draws (the loader's, and the step's: dropout, MixUp), from the member's training
    seed and the epoch alone, so a run resumed at any epoch draws what an uninterrupted one would."""
    return training_seed * 1_000_003 + epoch


def first_flips(training_seed: int, n: int) -> torch.Tensor:
    """Under `alternating_flip`: whether each of `n` images (by index) is mirrored in epoch 0, from a generator of
    its own seeded by the training seed alone, so that no epoch's draws shift."""
    digest = hashlib.sha256(f"cifar10-alternating-flip/{training_seed}".encode()).digest()
    return draw_flip(n, torch.Generator().manual_seed(int.from_bytes(digest[:8], "big")))


class DeviceLoader:
    """Normalized float batches from a uint8 dataset held on `device`.

    train=True shuffles and augments (crop with `crop_padding` of `padding_mode` + flip, optional TrivialAugment and
    cutout); train=False keeps the order and never augments. Call `set_epoch(e)` before iterating so each epoch's
    draws are reproducible."""

    def __init__(self, images: np.ndarray | torch.Tensor, labels: np.ndarray | None, mean, std, batch_size: int,
                 device: str | torch.device = "cpu", train: bool = False, cutout_size: int = 0,
                 seed: int = 0, channels_last: bool = False, auto_augment: str = "none",
                 crop_padding: int = CROP_PAD, padding_mode: str = Config.padding_mode,
                 alternating_flip: bool = Config.alternating_flip):
        device = torch.device(device)
        if isinstance(images, torch.Tensor):     # already uint8 (N, 3, H, W), e.g. corrupted test images
            self.images = images.to(device).contiguous()
        else:                                    # uint8 (N, H, W, 3) numpy, as the files hold them
            self.images = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).contiguous()
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long).to(device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.batch_size, self.train, self.cutout_size = batch_size, train, cutout_size
        self.auto_augment = auto_augment
        self.crop_padding, self.padding_mode, self.alternating_flip = crop_padding, padding_mode, alternating_flip
        self.seed, self.epoch, self.device = seed, 0, device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n, bs = len(self.images), self.batch_size
        full, rest = divmod(n, bs)
        # A training batch of one image would break BatchNorm: it is dropped.
        return full + (1 if rest > (1 if self.train else 0) else 0)

    def batch_bounds(self) -> list[tuple[int, int]]:
        n, bs = len(self.images), self.batch_size
        return [(i * bs, min((i + 1) * bs, n)) for i in range(len(self))]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float().div_(255) - self.mean) / self.std
        return x.contiguous(memory_format=self.memory_format)

    def draw_epoch(self) -> dict[str, torch.Tensor]:
        """This epoch's order and per-image augmentation draws, made on the CPU generator batch by batch (the
        first release's order of draws) and moved to the device in one copy. With `alternating_flip` the flips are
        each image's epoch-0 flip (`first_flips`), reversed in odd epochs."""
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        _, _, h, w = self.images.shape
        parts: dict[str, list[torch.Tensor]] = {"order": [torch.randperm(len(self.images), generator=generator)]}
        for lo, hi in self.batch_bounds():
            n = hi - lo
            batch = dict(zip(("dy", "dx"), draw_crop(n, self.crop_padding, generator)))
            batch["flip"] = draw_flip(n, generator)      # drawn even where alternating: the later draws stay put
            if self.cutout_size:
                batch.update(zip(("cy", "cx"), draw_cutout(n, h, w, generator)))
            if self.auto_augment == "trivialaugment":
                batch.update(draw_trivial_augment(n, generator))
            for key, value in batch.items():
                parts.setdefault(key, []).append(value.long())
        flat = {key: torch.cat(values) for key, values in parts.items()}
        if self.alternating_flip:
            flips = first_flips(self.seed, len(self.images))[flat["order"][:len(flat["flip"])]] ^ bool(self.epoch % 2)
            flat["flip"] = flips.long()
        packed = torch.cat(list(flat.values()))
        if self.device.type == "cuda":
            packed = packed.pin_memory().to(self.device, non_blocking=True)
        else:
            packed = packed.to(self.device)
        return dict(zip(flat, packed.split([len(v) for v in flat.values()])))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        draws = self.draw_epoch() if self.train else None
        for lo, hi in self.batch_bounds():
            if draws is None:
                idx: slice | torch.Tensor = slice(lo, hi)
                x = self.images[idx]
            else:
                idx = draws["order"][lo:hi]
                x = crop(self.images[idx], self.crop_padding, draws["dy"][lo:hi], draws["dx"][lo:hi], self.padding_mode)
                x = flip(x, draws["flip"][lo:hi] != 0)
                if self.auto_augment == "trivialaugment":
                    x = trivial_augment(x, draws["op"][lo:hi], draws["magnitude"][lo:hi], draws["sign"][lo:hi] != 0)
            x = self.normalize(x)
            if draws is not None and self.cutout_size:
                x = erase(x, self.cutout_size, draws["cy"][lo:hi], draws["cx"][lo:hi])
            yield x, (None if self.labels is None else self.labels[idx])


def augmented_examples(splits: Splits, cfg: Config, n: int = 16, seed: int = 12345) -> tuple[np.ndarray, np.ndarray]:
    """`n` training images and the same images as the training loader would augment them under `cfg`, both uint8
    NHWC for display. Drawn with a generator of their own (`seed`), so the training batches do not change."""
    loader = DeviceLoader(splits.train_images[:n], splits.train_labels[:n], splits.mean, splits.std, n, "cpu",
                          train=True, cutout_size=cfg.cutout, seed=seed, auto_augment=cfg.auto_augment,
                          crop_padding=cfg.crop_padding, padding_mode=cfg.padding_mode,
                          alternating_flip=cfg.alternating_flip)
    order = loader.draw_epoch()["order"].numpy()
    x, _ = next(iter(loader))
    mean, std = loader.mean, loader.std
    augmented = (x * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return splits.train_images[:n][order], augmented
