"""The trained model committed in models/quick/ (issue 34): written by `utils.checkpoint.export_half`, read without
running code, trained with the `quick` profile's recipe as it is now, and scored by `run.py --committed` through
notebooks 04 and 05 without training."""
import re
import subprocess
import sys

import pandas as pd
import pytest
import torch

import run
from utils.checkpoint import export_half, load_checkpoint, load_trained_model, read_progress
from utils.config import Config, load_config, recipe_differences
from utils.model import build_model, count_parameters
from utils.runtime.platforms import REPO_ROOT

COMMITTED = REPO_ROOT / "models" / "quick" / "best.pt"
TINY = Config(channels=[32, 64], blocks=[1, 1])     # weights, not metadata, fill the file


def trained_like_checkpoint(path):
    """A best.pt of a small model whose BatchNorm statistics moved off their initial values, saved by a machine
    with its own paths."""
    torch.manual_seed(0)
    model = build_model(TINY)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(32, 3, 32, 32) * 2 + 0.5)
    saved = TINY.replace(run_dir="/home/someone/run", figures_dir="/home/someone/figures").to_dict()
    torch.save({"format": "cifar10-customresnet/2", "config": saved, "epoch": 3, "model": model.state_dict(),
                "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}, "classes": [str(i) for i in range(10)],
                "val_acc": 0.5, "progress": None}, path)
    return model.eval()


def test_export_half_stores_fp16_weights_and_no_paths_and_keeps_the_predictions(tmp_path):
    source, target = tmp_path / "run" / "best.pt", tmp_path / "models" / "tiny" / "best.pt"
    source.parent.mkdir()
    model = trained_like_checkpoint(source)
    export_half(source, target)

    raw = torch.load(target, map_location="cpu", weights_only=True)
    floats = [v for v in raw["model"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    assert target.stat().st_size < 0.6 * source.stat().st_size
    assert raw["config"]["run_dir"] is None and raw["config"]["figures_dir"] == Config().figures_dir
    assert recipe_differences(raw["config"], TINY) == []

    loaded, _ = load_trained_model(target)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())     # cast back on load
    images = torch.randn(256, 3, 32, 32)
    with torch.no_grad():
        before, after = model(images), loaded(images)
    assert (before - after).abs().max() < 0.05
    assert (before.argmax(1) == after.argmax(1)).float().mean() > 0.97


def test_the_committed_model_is_quick_finished_and_read_without_running_code():
    ckpt = load_checkpoint(COMMITTED)                 # torch.load(weights_only=True)
    assert recipe_differences(ckpt["config"], load_config("quick")) == [], \
        "configs/quick.yaml changed: train the new recipe and replace models/quick/best.pt (docs/reproduction.md)"
    progress = read_progress(ckpt, COMMITTED)
    assert progress.finished and progress.epochs_done == ckpt["config"]["epochs"]
    assert all(v.dtype == torch.float16 for v in ckpt["model"].values() if v.is_floating_point())
    model, _ = load_trained_model(COMMITTED)
    assert count_parameters(model) == 4_997_722


@pytest.mark.parametrize("args, says", [
    (["--profile", "paper"], "no committed model for profile 'paper'"),
    (["--profile", "quick", "-p", "epochs", "20"], "another recipe than profile 'quick'"),
    (["--profile", "quick", "-p", "run_dir", "/tmp/elsewhere"], "leave out -p run_dir"),
])
def test_committed_refuses_what_it_cannot_score_before_any_notebook(args, says, tmp_path, capsys):
    assert run.main([*args, "--committed", "--out", str(tmp_path / "executed")]) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "executed").exists()


def test_a_committed_file_that_cannot_be_read_is_refused_naming_it(tmp_path, monkeypatch, capsys):
    (tmp_path / "quick").mkdir()
    (tmp_path / "quick" / "best.pt").write_bytes(b"version https://git-lfs.github.com/spec/v1\n")   # a pointer
    monkeypatch.setattr(run, "COMMITTED_DIR", tmp_path)
    assert run.main(["--profile", "quick", "--committed", "--out", str(tmp_path / "executed")]) == 2
    err = capsys.readouterr().err
    assert "--committed" in err and str(tmp_path / "quick" / "best.pt") in err and "cannot be read" in err


def test_committed_writes_figures_and_submission_beside_a_students_own_run():
    overrides = run.committed_run("quick", {})
    assert overrides["run_dir"] == str(COMMITTED.parent)
    assert overrides["figures_dir"] == "runs/quick-committed/figures"
    assert overrides["submission_path"] == "runs/quick-committed/submission.csv"
    assert run.committed_run("quick", {"figures_dir": "/tmp/f"})["figures_dir"] == "/tmp/f"


def test_run_committed_scores_the_committed_model_through_04_and_05_without_training(tmp_path, cifar_dir):
    out = tmp_path / "executed"
    proc = subprocess.run([sys.executable, "run.py", "--profile", "quick", "--committed", "--out", str(out),
                           "-p", "data_dir", str(cifar_dir), "-p", "test_limit", "500", "-p", "corruption_images", "20",
                           "-p", "tta", "none",           # a run-time field: the wiring is tested, at half the cost
                           "-p", "figures_dir", str(tmp_path / "figures"),
                           "-p", "submission_path", str(tmp_path / "submission.csv")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.glob("*.ipynb")) == ["04_analysis.ipynb", "05_kaggle_submit.ipynb"]
    assert "[3/5] 03_train.ipynb" not in proc.stdout
    assert f"run folder: {COMMITTED.parent}" in proc.stdout
    accuracy = re.search(r"Test accuracy \(labeled CIFAR-10 test_batch, 500 images.*: ([0-9.]+)", proc.stdout)
    assert accuracy and float(accuracy.group(1)) > 0.8      # a trained model, read right (chance: 0.1)
    submission = pd.read_csv(tmp_path / "submission.csv")
    assert list(submission.columns) == ["ID", "Labels"] and len(submission) == 10_000
    assert (tmp_path / "figures" / "confusion_matrix.png").is_file()
