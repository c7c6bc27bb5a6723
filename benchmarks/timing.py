"""Timing a step the way the benchmarks do: warm-up steps untimed, then one timed block synchronised only at its
two ends, so a GPU keeps its normal queue."""
from __future__ import annotations

import time
from typing import Any

import torch

from utils.runtime.device import synchronize


def timed(step, warmup: int, steps: int, device: torch.device) -> tuple[float, Any]:
    """Run `step()` `warmup` times untimed, then `steps` times as one timed block, synchronising the device only
    at its two ends (no per-step syncs: the GPU keeps its normal queue). Returns (seconds, the last result)."""
    result = None
    for _ in range(warmup):
        result = step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        result = step()
    synchronize(device)
    return time.perf_counter() - start, result
