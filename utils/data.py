"""CIFAR-10 in the Kaggle competition's layout: find it, load it safely, split it, and feed it fast.

Design choices:
- Pickles come from outside, so every pickle goes through `SafeUnpickler`, which builds only
  numpy arrays, dtypes and scalars (plus the builtin containers the pickle opcodes make itself)
  and refuses any other global: loading a hostile file raises `UnsafePickleError`, runs nothing.
  The online download fetches the official tarball (md5-checked by torchvision's download
  utilities) and reads it through the same unpickler: no plain `pickle.load` anywhere.
- Every check on a file names the file, what was expected and how to fix it (`DataError`).
  Where to look is a platform decision (`utils.environment`: $CIFAR10_DIR, ./data, any dataset
  folder under Kaggle's input); the error lists every place it looked.
- The whole uint8 dataset (150 MB for 50k images) lives on the training device and augmentation
  (zero-padded random crop + horizontal flip, optional TrivialAugment and cutout) runs on whole
  batches there: no PIL, no worker processes, no host-to-device copy per step.
- Randomness comes from a CPU generator seeded by (seed, epoch), so an epoch is reproducible on any
  device and a resumed run sees the same batches. A whole epoch's draws (order, crop offsets, flips,
  cutout centres, augmentation ops) are made up front, in the same order the per-batch loader of the
  first release drew them (so batches are bit-identical to it), and moved to the device in ONE copy:
  a per-batch `.to(device)` from pageable memory would synchronise the GPU stream several times a step.
- Validation and test batches are never augmented (the original notebook augmented its val split).
  `val_fraction 0` gives an empty validation split: the final model is trained on every image.
"""
from __future__ import annotations

import importlib
import io
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import environment
from .augment import draw_trivial_augment, trivial_augment
from .config import NUM_CLASSES, Config

DATA_ENV = "CIFAR10_DIR"
BATCHES_SUBDIR = Path("cifar-10-python") / "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
NOLABEL_FILE = "cifar_test_nolabel.pkl"
IMAGE_SHAPE = (32, 32, 3)
CROP_PAD = 4                       # RandomCrop(32, padding=4), the paper's
# The official CIFAR-10 python release, as torchvision's CIFAR10 dataset names it.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
COMPETITION_URL = "https://www.kaggle.com/competitions/deep-learning-spring-2025-project-1/data"

HOW_TO_GET_DATA = (
    "Get the data in one of three ways:\n"
    "  1. Kaggle: add the competition data to the notebook (Add Input > Competitions); it appears under\n"
    "     /kaggle/input/<its folder>/ and is found whatever the folder is called.\n"
    "  2. Online (Colab, laptop): utils.data.load_cifar10() downloads the official CIFAR-10 python release\n"
    "     into data/cifar-10-python/ (add cifar_test_nolabel.pkl from Kaggle for a submission).\n"
    "  3. Offline: lay the files out yourself, e.g. `python ../shared/data/make_cifar10.py data/`, or point\n"
    f"     ${DATA_ENV} at a folder holding {BATCHES_SUBDIR}/ and {NOLABEL_FILE}."
)
HOW_TO_GET_NOLABEL = (
    f"{NOLABEL_FILE} is the competition's unlabeled test set (only notebook 05 needs it). Get it from\n"
    f"  {COMPETITION_URL} (Download, or on Kaggle: Add Input > Competitions),\n"
    "  or with kagglehub: kagglehub.competition_download('deep-learning-spring-2025-project-1'),\n"
    f"then put it beside the batches (data/{NOLABEL_FILE}), set $CIFAR10_DIR, or pass nolabel_path."
)
REFRESH_HINT = "Fix: replace the file with a fresh copy (re-download it or lay the data out again)."


class DataError(ValueError):
    """A data file is missing, unreadable or not what CIFAR-10 should be; the message says which and why."""


class DataNotFoundError(DataError, FileNotFoundError):
    pass


class UnsafePickleError(DataError):
    """A pickle asked to build something other than plain data; nothing in it was run."""


# --------------------------------------------------------------------------------------------
# Safe pickle loading
# --------------------------------------------------------------------------------------------
def _numpy_global(submodule: str, name: str):
    # numpy 2 moved numpy.core to numpy._core; pickles name either.
    for module in (f"numpy._core.{submodule}", f"numpy.core.{submodule}"):
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise AttributeError(f"numpy has no {submodule}.{name}")


_SAFE_GLOBALS = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: __import__("codecs").encode,   # Python-3 pickles of numpy bytes
}
for _core in ("numpy.core", "numpy._core"):
    _SAFE_GLOBALS[(f"{_core}.multiarray", "_reconstruct")] = lambda: _numpy_global("multiarray", "_reconstruct")
    _SAFE_GLOBALS[(f"{_core}.multiarray", "scalar")] = lambda: _numpy_global("multiarray", "scalar")
    _SAFE_GLOBALS[(f"{_core}.numeric", "_frombuffer")] = lambda: _numpy_global("numeric", "_frombuffer")


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that builds numpy arrays and builtin containers only; any other global is refused."""

    def __init__(self, file, *, source: str = "<pickle>"):
        super().__init__(file, encoding="bytes")   # the official CIFAR pickles are Python 2 ones
        self.source = source

    def find_class(self, module: str, name: str):
        factory = _SAFE_GLOBALS.get((module, name))
        if factory is None:
            raise UnsafePickleError(
                f"{self.source}: refused to load: the pickle asks for '{module}.{name}', which plain CIFAR data "
                "never needs (it could run code). Nothing from the file was executed. "
                "Fix: use the original file from Kaggle or the CIFAR-10 release.")
        return factory()


def safe_load_pickle(path: str | Path):
    """Load a pickle through `SafeUnpickler`; every failure becomes a `DataError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"{path}: file not found.\n{HOW_TO_GET_DATA}")
    raw = path.read_bytes()
    if not raw:
        raise DataError(f"{path}: the file is empty (0 bytes). {REFRESH_HINT}")
    try:
        return SafeUnpickler(io.BytesIO(raw), source=str(path)).load()
    except UnsafePickleError:
        raise
    except Exception as exc:   # truncated, corrupt, or not a pickle at all
        raise DataError(f"{path}: cannot be read as a pickle ({type(exc).__name__}: {exc}); the file is "
                        f"truncated or corrupt ({len(raw):,} bytes). {REFRESH_HINT}") from exc


def _get(obj, key: str, path: Path, expected: str):
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict with {expected}, found a {type(obj).__name__}. {REFRESH_HINT}")
    for k in (key.encode(), key):
        if k in obj:
            return obj[k]
    keys = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in obj)
    raise DataError(f"{path}: missing key b'{key}' (expected {expected}; found keys {keys}). {REFRESH_HINT}")


# --------------------------------------------------------------------------------------------
# Finding and loading the files
# --------------------------------------------------------------------------------------------
def download_cifar10(target: Path) -> Path:
    """The official tarball into `target`/cifar-10-python/ (md5-checked), extracted, then deleted.

    The batches are read later through SafeUnpickler like any other copy; torchvision's CIFAR10 class is not
    used because it reads them with plain pickle."""
    from torchvision.datasets.utils import download_url, extract_archive
    folder = target / BATCHES_SUBDIR.parent
    download_url(CIFAR10_URL, folder, md5=CIFAR10_MD5)
    extract_archive(folder / Path(CIFAR10_URL).name, folder, remove_finished=True)
    return target


def find_data_dir(data_dir: str | Path | None = None, download: bool = False) -> Path:
    """The first folder holding `cifar-10-python/cifar-10-batches-py/`; downloads it there if asked and online."""
    candidates = environment.data_dirs(data_dir)
    for folder in candidates:
        if (folder / BATCHES_SUBDIR).is_dir():
            return folder
    problem = ""
    if download:
        target = candidates[0] if data_dir else environment.REPO_ROOT / "data"
        try:
            return download_cifar10(target)
        except Exception as exc:   # no network, a proxy page, a bad checksum: say so, with the other ways
            problem = f"The download into {target} failed ({type(exc).__name__}: {exc}).\n"
    looked = "\n".join(f"  - {p / BATCHES_SUBDIR}" for p in candidates)
    raise DataNotFoundError(f"CIFAR-10 not found. Looked for the batches in:\n{looked}\n{problem}{HOW_TO_GET_DATA}")


def find_nolabel(nolabel_path: str | Path | None = None, data_dir: str | Path | None = None,
                 required: bool = True) -> Path | None:
    """`cifar_test_nolabel.pkl`: `nolabel_path` if given, else beside the data ($CIFAR10_DIR, data_dir, ./data,
    Kaggle's input). The error lists every place it looked and how to get the file; `required=False` returns
    None instead (notebook 01 runs without it)."""
    candidates = environment.nolabel_candidates(nolabel_path, data_dir, NOLABEL_FILE)
    for path in candidates:
        if path.is_file():
            return path
    if not required:
        return None
    looked = "\n".join(f"  - {p}" for p in candidates)
    raise DataNotFoundError(f"{NOLABEL_FILE} not found. Looked in:\n{looked}\n{HOW_TO_GET_NOLABEL}")


def load_class_names(path: str | Path) -> list[str]:
    path = Path(path)
    names = _get(safe_load_pickle(path), "label_names", path, "b'label_names': 10 class names")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    if len(names) != NUM_CLASSES:
        raise DataError(f"{path}: expected {NUM_CLASSES} class names, found {len(names)}. {REFRESH_HINT}")
    return names


def _rows_to_nhwc(data: np.ndarray, path: Path) -> np.ndarray:
    """(N, 3072) channel-first rows -> (N, 32, 32, 3); NHWC passes through; anything else is an error."""
    if not isinstance(data, np.ndarray):
        raise DataError(f"{path}: b'data' should be a numpy array, found {type(data).__name__}. {REFRESH_HINT}")
    if data.dtype != np.uint8:
        raise DataError(f"{path}: b'data' should be uint8 pixels, found dtype {data.dtype}. {REFRESH_HINT}")
    if data.ndim == 2 and data.shape[1] == 3072:
        return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    if data.ndim == 4 and data.shape[1:] == IMAGE_SHAPE:
        return np.ascontiguousarray(data)
    raise DataError(f"{path}: b'data' has shape {data.shape}; expected (N, 32, 32, 3) NHWC images or "
                    f"(N, 3072) channel-first rows. {REFRESH_HINT}")


def load_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch file -> (uint8 images (N, 32, 32, 3), int64 labels (N,))."""
    path = Path(path)
    obj = safe_load_pickle(path)
    expected = "b'data' (N, 3072) uint8 and b'labels' (N,) ints 0-9"
    images = _rows_to_nhwc(_get(obj, "data", path, expected), path)
    try:
        labels = np.asarray(_get(obj, "labels", path, expected), dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: b'labels' are not integers ({exc}). {REFRESH_HINT}") from exc
    if len(labels) != len(images):
        raise DataError(f"{path}: {len(images)} images but {len(labels)} labels. {REFRESH_HINT}")
    bad = labels[(labels < 0) | (labels >= NUM_CLASSES)]
    if bad.size:
        raise DataError(f"{path}: labels must be 0-{NUM_CLASSES - 1}; found {sorted(set(bad.tolist()))[:5]}. "
                        f"{REFRESH_HINT}")
    return images, labels


def load_unlabeled(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The competition's unlabeled test pickle -> (uint8 images (N, 32, 32, 3), ids (N,)).

    Accepts the 2025 layout (NHWC uint8) and the 2024 one (flat (N, 3072) channel-first rows)."""
    path = Path(path)
    obj = safe_load_pickle(path)
    expected = "b'data' (N, 32, 32, 3) uint8 and b'ids' (N,)"
    images = _rows_to_nhwc(_get(obj, "data", path, expected), path)
    ids = np.asarray(_get(obj, "ids", path, expected)).reshape(-1)
    if len(ids) != len(images):
        raise DataError(f"{path}: {len(images)} images but {len(ids)} ids; each image needs exactly one id. "
                        f"{REFRESH_HINT}")
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{path}: duplicate ids, e.g. {unique[counts > 1][:5].tolist()}; every id must be "
                        f"unique. {REFRESH_HINT}")
    return images, ids


@dataclass
class CIFAR10:
    train_images: np.ndarray   # uint8 (N, 32, 32, 3)
    train_labels: np.ndarray   # int64 (N,)
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]
    root: Path

    @property
    def nolabel_path(self) -> Path:
        return self.root / NOLABEL_FILE


def load_cifar10(data_dir: str | Path | None = None, download: bool = True) -> CIFAR10:
    """All five train batches, the test batch and the class names; downloads them when absent and online."""
    root = find_data_dir(data_dir, download=download)
    batches = root / BATCHES_SUBDIR
    classes = load_class_names(batches / META_FILE)
    parts = [load_batch(batches / name) for name in TRAIN_FILES]
    test_images, test_labels = load_batch(batches / TEST_FILE)
    return CIFAR10(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                   test_images, test_labels, classes, root)


# --------------------------------------------------------------------------------------------
# Splits and statistics
# --------------------------------------------------------------------------------------------
def per_class_subset(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of up to `per_class` images of each class, chosen with a fixed seed, in sorted order."""
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picked))


def train_val_split(labels: np.ndarray, val_fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/val indices (the paper's 90/10), reproducible from `seed`; val_fraction 0: no val split."""
    idx = np.arange(len(labels))
    if val_fraction == 0:
        return idx, idx[:0]
    from sklearn.model_selection import train_test_split
    train_idx, val_idx = train_test_split(idx, test_size=val_fraction, random_state=seed, stratify=labels)
    return np.sort(train_idx), np.sort(val_idx)


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 NHWC images, on the 0-1 scale."""
    x = images.reshape(-1, 3).astype(np.float64) / 255.0
    return x.mean(0).tolist(), x.std(0).tolist()


@dataclass
class Splits:
    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray         # empty (0, 32, 32, 3) with val_fraction 0
    val_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]
    mean: list[float]
    std: list[float]
    root: Path


def prepare_splits(cfg: Config, data: CIFAR10 | None = None) -> Splits:
    """Subset (if asked), 90/10 stratified split, train-split statistics, optional test limit."""
    data = data or load_cifar10(cfg.data_path)
    images, labels = data.train_images, data.train_labels
    if cfg.subset_per_class:
        keep = per_class_subset(labels, cfg.subset_per_class, cfg.seed)
        images, labels = images[keep], labels[keep]
    train_idx, val_idx = train_val_split(labels, cfg.val_fraction, cfg.seed)
    mean, std = channel_stats(images[train_idx])
    test_images, test_labels = data.test_images, data.test_labels
    if cfg.test_limit:
        test_images, test_labels = test_images[:cfg.test_limit], test_labels[:cfg.test_limit]
    return Splits(images[train_idx], labels[train_idx], images[val_idx], labels[val_idx],
                  test_images, test_labels, data.classes, mean, std, data.root)


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


def crop(x: torch.Tensor, pad: int, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Zero-pad each side by `pad` and crop back at offsets (dy, dx) per image (RandomCrop(32, padding=4))."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
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
class DeviceLoader:
    """Normalized float batches from a uint8 dataset held on `device`.

    train=True shuffles and augments (crop pad 4 + flip, optional TrivialAugment and cutout); train=False keeps
    the order and never augments. Call `set_epoch(e)` before iterating so each epoch's draws are reproducible."""

    def __init__(self, images: np.ndarray | torch.Tensor, labels: np.ndarray | None, mean, std, batch_size: int,
                 device: str | torch.device = "cpu", train: bool = False, cutout_size: int = 0,
                 seed: int = 0, channels_last: bool = False, auto_augment: str = "none"):
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
        first release's order of draws) and moved to the device in one copy."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        _, _, h, w = self.images.shape
        parts: dict[str, list[torch.Tensor]] = {"order": [torch.randperm(len(self.images), generator=generator)]}
        for lo, hi in self.batch_bounds():
            n = hi - lo
            batch = dict(zip(("dy", "dx"), draw_crop(n, CROP_PAD, generator)))
            batch["flip"] = draw_flip(n, generator)
            if self.cutout_size:
                batch.update(zip(("cy", "cx"), draw_cutout(n, h, w, generator)))
            if self.auto_augment == "trivialaugment":
                batch.update(draw_trivial_augment(n, generator))
            for key, value in batch.items():
                parts.setdefault(key, []).append(value.long())
        flat = {key: torch.cat(values) for key, values in parts.items()}
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
                x = crop(self.images[idx], CROP_PAD, draws["dy"][lo:hi], draws["dx"][lo:hi])
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
                          train=True, cutout_size=cfg.cutout, seed=seed, auto_augment=cfg.auto_augment)
    order = loader.draw_epoch()["order"].numpy()
    x, _ = next(iter(loader))
    mean, std = loader.mean, loader.std
    augmented = (x * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return splits.train_images[:n][order], augmented
