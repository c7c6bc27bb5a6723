"""Every knob of the project in one dataclass, with the paper's recipe as the defaults.

Why one dataclass: the notebooks' `parameters` cells, the YAML profiles in `configs/` (papermill
parameter files) and the library all name the same fields, so a typo in a profile is an error,
not a silently ignored setting. Relative paths resolve against the repository root, so a notebook
executed from `runs/<profile>/` writes to the same `figures/` and `submissions/` as one run in place.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"
KAGGLE_COMPETITION = "deep-learning-spring-2025-project-1"


@dataclass
class Config:
    profile: str = "paper"
    # --- paths (relative ones are taken from the repository root) ---
    data_dir: str | None = None          # None: $CIFAR10_DIR, ./data, then Kaggle's input folder
    run_dir: str | None = None           # checkpoints + history; None: runs/<profile>/checkpoints
    figures_dir: str = "figures"
    submission_path: str = "submissions/submission.csv"
    # --- data ---
    subset_per_class: int = 0            # 0: all 5,000 training images per class
    val_fraction: float = 0.1            # the paper's 90/10 split
    test_limit: int = 0                  # 0: the whole labeled test set
    # --- model (the paper's CustomResNet) ---
    channels: list[int] = field(default_factory=lambda: [48, 96, 128, 364])
    blocks: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    dropout: float = 0.1
    # --- optimisation (the paper's recipe) ---
    epochs: int = 100
    batch_size: int = 128
    lr: float = 0.1                      # OneCycleLR max_lr
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    pct_start: float = 0.1               # 10 % warm-up
    patience: int = 10                   # early stopping on val accuracy; 0 disables
    # --- beyond the paper (all off in `paper`) ---
    label_smoothing: float = 0.0
    ema_decay: float = 0.0               # 0: no weight averaging
    cutout: int = 0                      # side of the square erased per training image; 0: off
    tta: bool = False                    # flip test-time augmentation at evaluation
    # --- runtime ---
    seed: int = 0
    device: str = "auto"                 # auto: cuda, then mps, then cpu
    deterministic: bool = False
    amp: bool = True                     # bf16 autocast, CUDA only
    channels_last: bool = True           # CUDA only
    compile: bool = False                # torch.compile the model
    eval_batch_size: int = 500
    resume: bool = True                  # continue from run_dir/last.pt when it exists

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_params(cls, params: Mapping[str, Any], **overrides: Any) -> "Config":
        """Build from a mapping (a notebook's globals(), a YAML profile), ignoring foreign names."""
        values = {k: v for k, v in {**params, **overrides}.items() if k in cls.field_names()}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # Resolved paths -------------------------------------------------------------------------
    def path(self, value: str | Path) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else REPO_ROOT / p

    @property
    def run_path(self) -> Path:
        return self.path(self.run_dir or f"runs/{self.profile}/checkpoints")

    @property
    def figures_path(self) -> Path:
        return self.path(self.figures_dir)

    @property
    def submission_file(self) -> Path:
        return self.path(self.submission_path)

    def model_kwargs(self) -> dict[str, Any]:
        return {"channels": list(self.channels), "blocks": list(self.blocks), "dropout": self.dropout}


def profile_path(name: str) -> Path:
    return CONFIG_DIR / f"{name}.yaml"


def available_profiles() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def read_profile(name: str) -> dict[str, Any]:
    """The raw parameters of `configs/<name>.yaml`, checked against Config's fields."""
    path = profile_path(name)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such profile; available: {', '.join(available_profiles())}")
    params = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(params) - set(Config.field_names()))
    if unknown:
        raise ValueError(f"{path}: unknown parameter(s) {unknown}; valid names are the fields of "
                         "utils.config.Config")
    return params


def load_config(profile: str = "paper", **overrides: Any) -> Config:
    params = read_profile(profile)
    params.setdefault("profile", profile)
    return Config.from_params(params, **overrides)


# Runtime ------------------------------------------------------------------------------------
def pick_device(name: str = "auto") -> "torch.device":
    """`auto` picks cuda, then mps, then cpu; any other value is used as given."""
    import torch
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch; `deterministic` also asks torch for deterministic kernels."""
    import os
    import random

    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True
