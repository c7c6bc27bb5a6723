"""CIFAR-10 in the Kaggle competition's layout: find it, load it safely, check it and split it.

Design choices:
- Pickles come from outside, so every pickle goes through `SafeUnpickler`, which builds only
  numpy arrays, dtypes and scalars (plus the builtin containers the pickle opcodes make itself)
  and refuses any other global: loading a hostile file raises `UnsafePickleError`, runs nothing.
  The online download fetches the official tarball (md5-checked by torchvision's download
  utilities) and reads it through the same unpickler: no plain `pickle.load` anywhere.
- Every check on a file names the file, what was expected and how to fix it (`DataError`).
  Where to look is `utils.runtime.locate`'s decision ($CIFAR10_DIR, ./data, any dataset
  folder under Kaggle's input); the error lists every place it looked.
- `val_fraction 0` gives an empty validation split: the final model is trained on every image.
"""
from __future__ import annotations

import importlib
import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import NUM_CLASSES, Config
from .runtime import locate, platforms
from .runtime.locate import (  # where the data lives: one home, utils.runtime.locate
    BATCHES_SUBDIR,
    DATA_ENV,
    NOLABEL_FILE,
)

TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
IMAGE_SHAPE = (32, 32, 3)
# The official CIFAR-10 python release, as torchvision's CIFAR10 dataset names it.
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
COMPETITION_URL = "https://www.kaggle.com/competitions/deep-learning-spring-2025-project-1/data"

HOW_TO_GET_DATA = (
    "Get the data in one of three ways:\n"
    "  1. Kaggle: add the competition data to the notebook (Add Input > Competitions); it appears under\n"
    "     /kaggle/input/<its folder>/ and is found whatever the folder is called.\n"
    "  2. Online (Colab, laptop): utils.dataset.load_cifar10() downloads the official CIFAR-10 python release\n"
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
    candidates = locate.data_dirs(data_dir)
    for folder in candidates:
        if (folder / BATCHES_SUBDIR).is_dir():
            return folder
    problem = ""
    if download:
        target = candidates[0] if data_dir else platforms.REPO_ROOT / "data"
        try:
            return download_cifar10(target)
        except Exception as exc:   # no network, a proxy page, a bad checksum: say so, with the other ways
            problem = f"The download into {target} failed ({type(exc).__name__}: {exc}).\n"
    looked = "\n".join([f"  - {p / BATCHES_SUBDIR}" for p in candidates] + locate.searched("data", data_dir))
    raise DataNotFoundError(f"CIFAR-10 not found. Looked for the batches in:\n{looked}\n{problem}{HOW_TO_GET_DATA}")


def find_nolabel(nolabel_path: str | Path | None = None, data_dir: str | Path | None = None,
                 required: bool = True) -> Path | None:
    """`cifar_test_nolabel.pkl`: `nolabel_path` if given, else in the data folder (data_dir if given, else
    $CIFAR10_DIR: an explicit setting beats the environment), then REPO_ROOT/data, Drive, Kaggle's input
    (utils.runtime.locate.nolabel_candidates). The error lists every place it looked and how to get the file;
    `required=False` returns None instead (notebook 01 runs without it)."""
    candidates = locate.nolabel_candidates(nolabel_path, data_dir, NOLABEL_FILE)
    for path in candidates:
        if path.is_file():
            return path
    if not required:
        return None
    looked = "\n".join([f"  - {p}" for p in candidates] + locate.searched("nolabel", nolabel_path))
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
