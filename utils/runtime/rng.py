"""Seeding, and the random number generators' state saved with a run and restored on another machine.

`seed_everything` seeds python, numpy and torch (every device); `rng_state` / `set_rng_state` save and restore
them, also on another machine: CUDA states are restored for the GPUs both machines have, so a run from Kaggle's
2 x T4 resumes on one GPU or on a CPU (tests/test_resume_across_machines.py).
"""
from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (every device); `deterministic` also asks torch for deterministic kernels."""
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


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore `rng_state()`, also on another machine: CUDA states are restored for the GPUs both machines have
    (a run from Kaggle's 2 x T4 resumes on one GPU, or on a CPU, where they are ignored)."""
    torch.set_rng_state(state["torch"])
    cuda = list(state.get("cuda") or [])
    if cuda and torch.cuda.is_available():
        for index, cuda_state in enumerate(cuda[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
