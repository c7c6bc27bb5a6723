"""benchmarks/bench_train.py, compare_profiles.py and self_training.py end to end on real CIFAR-10, tiny settings."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.runtime.device import decide

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH = REPO_ROOT / "benchmarks" / "bench_train.py"
COMPARE = REPO_ROOT / "benchmarks" / "compare_profiles.py"
SELF_TRAINING = REPO_ROOT / "benchmarks" / "self_training.py"


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
    # The paper pipeline runs as the paper ran (fp32, contiguous); the project one as utils.runtime.device decides.

    expected = decide(torch.device("cpu"))
    assert (a["precision"], a["channels_last"]) == ("fp32", False)
    assert (b["precision"], b["channels_last"]) == (expected.name, expected.channels_last)


@pytest.mark.slow
def test_compare_profiles_reports_clean_and_corruption_accuracy_per_profile(cifar_dir, tmp_path):
    cmd = [sys.executable, str(COMPARE), "--profiles", "paper", "leaderboard:val_fraction=0.1",
           "--subset-per-class", "20", "--epochs", "1", "--device", "cpu", "--data-dir", str(cifar_dir),
           "--corruption-images", "10", "--test-limit", "200", "--run-root", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    rows = {r["profile"]: r for r in result["rows"]}
    assert set(rows) == {"paper", "leaderboard:val_fraction=0.1"}
    for row in rows.values():
        assert row["epochs"] == 1 and row["train_images"] == 180 and row["val_images"] == 20
        assert row["test_images"] == 200 and 0 <= row["mean_corruption_acc"] <= 1
        assert 0 <= row["test_acc"] <= 1 and 0 <= row["test_acc_no_tta"] <= 1 and 0 <= row["best_val_acc"] <= 1
    assert rows["paper"]["tta"] == "none" and rows["paper"]["test_acc"] == rows["paper"]["test_acc_no_tta"]
    assert rows["leaderboard:val_fraction=0.1"]["tta"] == "flip_shift"
    assert "| mean corruption acc |" in done.stdout


@pytest.mark.slow
def test_self_training_benchmark_shifts_the_test_images_and_measures_members_and_student(cifar_dir, tmp_path):
    import pandas as pd

    from utils.dataset import load_cifar10, load_unlabeled
    cmd = [sys.executable, str(SELF_TRAINING), "--profile", "tiny:epochs=1,test_limit=100,tta=none", "--share", "0.5",
           "--device", "cpu", "--data-dir", str(cifar_dir), "--run-root", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["train_images"] == 180 and result["members"] == 1 and result["share"] == 0.5
    assert set(result["results"]) == {"members", "self-trained"}
    for row in result["results"].values():
        assert set(row) == {"clean", "shifted", "shifted_bn_adapted"} and all(0 <= v <= 1 for v in row.values())
    shifted, ids = load_unlabeled(tmp_path / "shifted_nolabel.pkl")            # the round's "unlabeled" images
    clean = load_cifar10(cifar_dir, download=False).test_images[:100]
    assert ids.tolist() == list(range(100))
    changed = sum(not np.array_equal(s, c) for s, c in zip(shifted, clean))
    assert changed >= 90, f"only {changed} of 100 test images were shifted"
    labels = pd.read_csv(tmp_path / "run" / "self-training" / "pseudo_labels.csv")
    assert len(labels) == 100 and labels[labels["used"]]["label"].value_counts().max() <= 5
