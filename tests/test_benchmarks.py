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
    cmd = [sys.executable, str(COMPARE), "--profiles", "paper", "quick:label_smoothing=0.2",
           "--subset-per-class", "20", "--epochs", "1", "--device", "cpu", "--data-dir", str(cifar_dir),
           "--corruption-images", "10", "--test-limit", "200", "--run-root", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    rows = {r["profile"]: r for r in result["rows"]}
    assert set(rows) == {"paper", "quick:label_smoothing=0.2"}
    for row in rows.values():
        assert row["epochs"] == 1 and row["train_images"] == 180 and row["val_images"] == 20
        assert row["test_images"] == 200 and 0 <= row["mean_corruption_acc"] <= 1
        assert 0 <= row["test_acc"] <= 1 and 0 <= row["test_acc_no_tta"] <= 1 and 0 <= row["best_val_acc"] <= 1
    assert rows["paper"]["tta"] == "none" and rows["paper"]["test_acc"] == rows["paper"]["test_acc_no_tta"]
    assert rows["quick:label_smoothing=0.2"]["tta"] == "flip"
    assert "| mean corruption acc |" in done.stdout


@pytest.mark.slow
def test_self_training_benchmark_shifts_the_test_images_and_pairs_each_share_with_the_teacher(cifar_dir, tmp_path):
    import pandas as pd

    from utils.dataset import load_cifar10, load_unlabeled
    common = ["--profile", "tiny:epochs=1,test_limit=100,tta=none", "--device", "cpu", "--data-dir", str(cifar_dir)]
    done = subprocess.run([sys.executable, str(SELF_TRAINING), *common, "--shares", "0.5",
                           "--run-root", str(tmp_path / "trained")], capture_output=True, text=True, timeout=900,
                          cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["train_images"] == 180 and result["members"] == 1 and result["shares"] == [0.5]
    assert set(result["results"]) == {"teacher", "student, share 0.5"}
    for row in result["results"].values():
        assert set(row) == {"clean", "shifted", "shifted_bn_adapted"} and all(0 <= r["acc"] <= 1 for r in row.values())
    teacher, student = result["results"]["teacher"], result["results"]["student, share 0.5"]
    assert teacher["shifted"]["diff"] == 0 and teacher["shifted"]["gained"] == 0
    assert student["shifted"]["diff"] == pytest.approx(student["shifted"]["acc"] - teacher["shifted"]["acc"])
    shifted, ids = load_unlabeled(tmp_path / "trained" / "shifted_nolabel.pkl")   # the round's "unlabeled" images
    clean = load_cifar10(cifar_dir, download=False).test_images[:100]
    assert ids.tolist() == list(range(100))
    changed = sum(not np.array_equal(s, c) for s, c in zip(shifted, clean))
    assert changed >= 90, f"only {changed} of 100 test images were shifted"
    labels = pd.read_csv(tmp_path / "trained" / "share-0.5" / "self-training" / "pseudo_labels.csv")
    assert len(labels) == 100 and labels[labels["used"]]["label"].value_counts().max() <= 5
    right = labels["label"].to_numpy() == load_cifar10(cifar_dir, download=False).test_labels[:100]
    assert result["labels_used"]["0.5"]["label_acc"] == pytest.approx(right[labels["used"].to_numpy()].mean())
    assert sum(row["images"] for row in result["labels_by_confidence"]) == 100

    # The member trained above as a --teacher: measured alike, its folder left as it was, a round of its own.
    teacher_pt = tmp_path / "trained" / "run" / "best.pt"
    again = subprocess.run([sys.executable, str(SELF_TRAINING), *common, "--teacher", str(teacher_pt), "--shares",
                            "0.3", "--run-root", str(tmp_path / "taught")], capture_output=True, text=True,
                           timeout=900, cwd=REPO_ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    taught = json.loads(again.stdout.strip().splitlines()[-1])
    assert taught["results"]["teacher"] == result["results"]["teacher"]
    assert sorted(p.name for p in teacher_pt.parent.iterdir()) == ["best.pt", "history.csv", "last.pt"]
    assert (tmp_path / "taught" / "share-0.3" / "self-training" / "best.pt").is_file()
    # --also: another trained model (the first round's student) measured alike and paired with the teacher, no round.
    student_pt = tmp_path / "trained" / "share-0.5" / "self-training" / "best.pt"
    also = subprocess.run([sys.executable, str(SELF_TRAINING), *common, "--teacher", str(teacher_pt), "--no-round",
                           "--also", str(student_pt), "--run-root", str(tmp_path / "also")], capture_output=True,
                          text=True, timeout=300, cwd=REPO_ROOT)
    assert also.returncode == 0, also.stderr[-3000:]
    rows = json.loads(also.stdout.strip().splitlines()[-1])["results"]
    assert list(rows) == ["teacher", f"{student_pt} (1/1 epochs, finished)"]
    assert rows[f"{student_pt} (1/1 epochs, finished)"] == student and not (tmp_path / "also" / "share-0.5").exists()
    other = subprocess.run([sys.executable, str(SELF_TRAINING), *common[:1], "tiny:epochs=2", *common[2:],
                            "--teacher", str(teacher_pt), "--run-root", str(tmp_path / "other")],
                           capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert other.returncode == 2 and "another recipe" in other.stderr and "epochs" in other.stderr


# --------------------------------------------------------------------------------------------
# benchmarks/proxy.py: the recipe proxy (issue 34)
# --------------------------------------------------------------------------------------------
PROXY = REPO_ROOT / "benchmarks" / "proxy.py"


def test_proxy_scores_on_training_images_it_does_not_train_on():
    from benchmarks.proxy import proxy_indices
    labels = np.repeat(np.arange(10), 100)
    train, held_out = proxy_indices(labels, 30, 20, data_seed=0)
    assert np.bincount(labels[train]).tolist() == [30] * 10
    assert np.bincount(labels[held_out]).tolist() == [20] * 10
    assert not set(train) & set(held_out)
    again = proxy_indices(labels, 30, 20, data_seed=0)       # the same images for every recipe and seed
    assert np.array_equal(again[0], train) and np.array_equal(again[1], held_out)


def test_proxy_pairs_each_seed_with_the_baselines_and_gives_the_standard_error():
    from benchmarks.proxy import compare
    rows = [{"recipe": r, "seed": s, "acc": a} for r, s, a in
            [("base", 0, 0.50), ("base", 1, 0.60), ("base", 2, 0.70),
             ("new", 0, 0.52), ("new", 1, 0.63), ("new", 2, 0.71)]]
    base, new = compare(rows, ["base", "new"], [0, 1, 2])
    diffs = [0.02, 0.03, 0.01]                              # seed by seed, not mean minus mean of unpaired runs
    assert math.isclose(new["diff"], 0.02) and math.isclose(new["se"], np.std(diffs, ddof=1) / 3 ** 0.5)
    assert new["beyond_2se"] and not base["beyond_2se"] and math.isclose(base["mean_acc"], 0.6)
    rows[4]["acc"] = 0.57                                   # seed 1 now loses: the gain is within the noise
    assert not compare(rows, ["base", "new"], [0, 1, 2])[1]["beyond_2se"]


@pytest.mark.slow
def test_proxy_ranks_recipes_and_a_second_call_reuses_finished_runs(cifar_dir, tmp_path):
    cmd = [sys.executable, str(PROXY), "--recipes", "tiny:epochs=1", "tiny:epochs=1,label_smoothing=0.1",
           "--seeds", "0", "1", "--per-class", "20", "--holdout-per-class", "10", "--epochs", "1",
           "--device", "cpu", "--data-dir", str(cifar_dir), "--run-root", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert [t["recipe"] for t in result["table"]] == ["tiny:epochs=1", "tiny:epochs=1,label_smoothing=0.1"]
    assert len(result["runs"]) == 4 and all(t["seeds"] == 2 for t in result["table"])
    assert done.stdout.count("Training ") == 4 and "| paired diff to baseline |" in done.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert again.returncode == 0 and "Training " not in again.stdout       # finished runs are read, not retrained
    assert json.loads(again.stdout.strip().splitlines()[-1])["table"] == result["table"]
    bad = subprocess.run([*cmd[:3], "tiny:schedul=linear"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert bad.returncode != 0 and "schedul" in bad.stderr and "Training " not in bad.stdout


def test_a_recipe_spec_reads_lists_whole_and_refuses_unknown_fields():
    from benchmarks.spec import parse_spec
    assert parse_spec("quick:tta=flip_translate,tta_weights=[2,2,1,1,1,1],lr=0.2") == (
        "quick", {"tta": "flip_translate", "tta_weights": [2, 2, 1, 1, 1, 1], "lr": 0.2})
    assert parse_spec("paper") == ("paper", {})
    with pytest.raises(ValueError, match="schedul=linear"):
        parse_spec("quick:schedul=linear")


def test_tta_benchmark_pairs_every_mode_with_the_baseline_on_the_checkpoints_own_held_out_images(cifar_dir, tmp_path):
    from utils.checkpoint import load_trained_model
    from utils.config import Config
    from utils.evaluate import checkpoint_splits, evaluate_loader
    from utils.loader import DeviceLoader
    from utils.train import fit

    cfg = Config(channels=[16, 32], blocks=[1, 1], subset_per_class=100, val_fraction=0.2, epochs=4, batch_size=32,
                 data_dir=str(cifar_dir), run_dir=str(tmp_path / "run"), device="cpu")
    fit(cfg, progress=False, log=lambda line: None)       # a model whose views disagree on some images
    path = tmp_path / "run" / "best.pt"
    done = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "tta.py"), str(path), "--modes", "none",
                           "flip_translate:2,2,1,1,1,1", "--device", "cpu", "--data-dir", str(cifar_dir)],
                          capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["images"] == 200                              # 20 of the 100 per class held out, never trained on
    base, weighted = result["modes"]["none"], result["modes"]["flip_translate:2,2,1,1,1,1"]
    assert base["gained"] == base["lost"] == 0 and base["diff"] == 0
    assert weighted["gained"] + weighted["lost"] > 0            # the views disagree: the pairing is exercised
    assert weighted["diff"] == pytest.approx((weighted["gained"] - weighted["lost"]) / 200)
    assert weighted["diff"] == pytest.approx(weighted["acc"] - base["acc"])

    loaded, ckpt = load_trained_model(path)                     # the same numbers through notebook 04's route
    splits = checkpoint_splits(ckpt, cfg)
    plan = decide("cpu")
    loader = DeviceLoader(splits.val_images, splits.val_labels, ckpt["normalization"]["mean"],
                          ckpt["normalization"]["std"], 500, plan.device, channels_last=plan.channels_last)
    assert base["acc"] == pytest.approx(evaluate_loader(loaded, loader, "none", plan)["acc"])
    assert weighted["acc"] == pytest.approx(
        evaluate_loader(loaded, loader, "flip_translate", plan, [2, 2, 1, 1, 1, 1])["acc"])


@pytest.mark.slow
def test_members_proxy_averages_the_proxys_own_runs_and_pairs_each_ensemble_with_its_first_member(cifar_dir, tmp_path):
    recipe = "tiny:channels=[16,32],blocks=[1,1]"               # narrow: members that learn, and disagree, in seconds
    common = ["--seeds", "0", "1", "--per-class", "100", "--holdout-per-class", "20", "--epochs", "3",
              "--device", "cpu", "--data-dir", str(cifar_dir), "--run-root", str(tmp_path)]
    proxy = subprocess.run([sys.executable, str(PROXY), "--recipes", recipe, *common], capture_output=True,
                           text=True, timeout=600, cwd=REPO_ROOT)
    assert proxy.returncode == 0, proxy.stderr[-3000:]
    singles = [run["acc"] for run in json.loads(proxy.stdout.strip().splitlines()[-1])["runs"]]
    done = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "members_proxy.py"), "--recipe",
                           recipe, *common], capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Training " not in done.stdout                        # the proxy's runs are the members, not retrained
    one, two = json.loads(done.stdout.strip().splitlines()[-1])["rows"]
    assert one["clean"]["accs"] == pytest.approx(singles)        # each member scored as the proxy scored it
    assert singles[0] != singles[1]                              # two different members: averaging is exercised
    assert one["clean"]["vs_one"]["mean"] == 0 and one["members"] == 1 and two["members"] == 2
    assert two["clean"]["accs"][0] == two["clean"]["accs"][1]    # seeds (0, 1) and (1, 0): the same ensemble
    assert two["clean"]["vs_one"]["mean"] == pytest.approx(two["clean"]["mean_acc"] - one["clean"]["mean_acc"])
    assert set(two) == {"members", "train_seconds", "clean", "shifted"} and 0 <= two["shifted"]["mean_acc"] <= 1
