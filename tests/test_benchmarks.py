"""benchmarks/bench_train.py end to end on real CIFAR-10, with tiny settings (a few seconds of steps)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH = REPO_ROOT / "benchmarks" / "bench_train.py"


@pytest.mark.slow
def test_bench_train_reports_both_pipelines_as_json(cifar_dir):
    cmd = [sys.executable, str(BENCH), "--device", "cpu", "--data-dir", str(cifar_dir),
           "--train-images", "256", "--batch-size", "16", "--warmup", "1", "--steps", "2",
           "--eval-warmup", "1", "--eval-steps", "1", "--workers", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1])           # the last line is exactly one JSON object
    assert "train images/s" in done.stdout   # the readable table comes before it

    a, b = result["pipelines"]["paper"], result["pipelines"]["project"]
    for pipeline in (a, b):
        assert pipeline["train_images_per_s"] > 0
        assert pipeline["infer_images_per_s"] > 0
        assert pipeline["peak_mem_mb"] > 0
        assert math.isfinite(pipeline["final_loss"])
    assert math.isclose(result["ratio_train"], b["train_images_per_s"] / a["train_images_per_s"], rel_tol=1e-9)
    assert math.isclose(result["ratio_inference"], b["infer_images_per_s"] / a["infer_images_per_s"],
                        rel_tol=1e-9)
    assert result["same_init"] and a["init_checksum"] == b["init_checksum"]
    assert (result["batch_size"], result["steps"], result["warmup"], result["workers"]) == (16, 2, 1, 0)
    assert result["device"] == "cpu" and result["device_name"] and result["torch"] and result["threads"] >= 1
    assert result["train_images_available"] == 256
