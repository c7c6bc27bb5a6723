"""Training on a small real subset (CPU): resume exactness, kill and resume, checkpoints, failures."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest
import torch

from utils import train as train_mod
from utils.config import REPO_ROOT, Config
from utils.data import load_cifar10, prepare_splits
from utils.model import CustomResNet
from utils.train import (CheckpointError, NonFiniteLossError, atomic_save, fit, load_checkpoint,
                         load_state_checked, load_trained_model)

SMALL = dict(subset_per_class=20, epochs=3, batch_size=32, test_limit=100, deterministic=True, seed=1)


@pytest.fixture(scope="module")
def cifar(cifar_dir):
    return load_cifar10(cifar_dir)


@pytest.fixture(scope="module")
def splits(cifar):
    return prepare_splits(Config(**SMALL), cifar)


def small_cfg(tmp_path, name="run", **kw):
    return Config(**{**SMALL, "run_dir": str(tmp_path / name), **kw})


def assert_same_weights(path_a, path_b):
    a, b = load_checkpoint(path_a)["model"], load_checkpoint(path_b)["model"]
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ in {different[:5]}"


def without_time(history):
    return pd.DataFrame(history).drop(columns="seconds")


def test_training_in_two_calls_equals_training_straight(tmp_path, splits):
    straight = fit(small_cfg(tmp_path, "straight", epochs=2), splits, progress=False)
    first = fit(small_cfg(tmp_path, "resumed", epochs=2), splits, progress=False, max_epochs_this_call=1)
    assert len(first.history) == 1 and not first.finished
    stale = first.run_dir / ".last.pt.killed.tmp"   # what a kill during a save leaves behind
    stale.write_bytes(b"half")
    resumed = fit(small_cfg(tmp_path, "resumed", epochs=2), splits, progress=False)
    assert resumed.finished and len(resumed.history) == 2 and not stale.exists()
    assert_same_weights(straight.last_path, resumed.last_path)
    assert_same_weights(straight.best_path, resumed.best_path)
    pd.testing.assert_frame_equal(without_time(straight.history), without_time(resumed.history))


def test_epoch_loss_is_the_sample_weighted_mean_of_its_steps(tmp_path, splits):
    losses = []
    result = fit(small_cfg(tmp_path, epochs=1), splits, progress=False,
                 on_step=lambda epoch, step, loss: losses.append(loss))
    sizes = [32] * (len(splits.train_labels) // 32) + [len(splits.train_labels) % 32]
    assert len(losses) == len(sizes) == 6
    weighted = sum(l * n for l, n in zip(losses, sizes)) / sum(sizes)
    assert result.history.loc[0, "train_loss"] == pytest.approx(weighted, rel=1e-5)
    assert result.history.loc[0, "train_loss"] != pytest.approx(sum(losses) / len(losses), rel=1e-5)


def test_checkpoints_and_history_are_written_and_load_weights_only(tmp_path, splits):
    result = fit(small_cfg(tmp_path, epochs=2), splits, progress=False)
    for path in (result.best_path, result.last_path):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        assert ckpt["normalization"]["mean"] == pytest.approx(splits.mean)
    last = load_checkpoint(result.last_path)
    assert last["epoch"] == 2 and {"optimizer", "scheduler", "rng", "history"} <= set(last)
    history = pd.read_csv(result.run_dir / "history.csv")
    assert list(history.columns) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
    assert history["epoch"].tolist() == [1, 2] and history["lr"].iloc[-1] < 0.01   # OneCycle annealed
    model, meta = load_trained_model(result.best_path)
    assert meta["val_acc"] == history["val_acc"].max() and not model.training
    assert not list(result.run_dir.glob("*.tmp"))


def test_early_stopping_after_patience_epochs_without_improvement(tmp_path, splits, monkeypatch):
    monkeypatch.setattr(train_mod, "evaluate_loader", lambda *a, **k: {"loss": 1.0, "acc": 0.5})
    cfg = small_cfg(tmp_path, epochs=10, patience=2)
    result = fit(cfg, splits, progress=False)
    assert result.stopped_early and result.finished and len(result.history) == 3
    again = fit(cfg, splits, progress=False)   # a finished run is not trained further
    assert len(again.history) == 3 and again.stopped_early


def test_non_finite_loss_stops_naming_epoch_and_step_and_keeps_last_good_checkpoint(tmp_path, splits, monkeypatch):
    cfg = small_cfg(tmp_path)
    fit(cfg, splits, progress=False, max_epochs_this_call=1)
    last = cfg.run_path / "last.pt"
    before = last.read_bytes()
    calls = {"n": 0}
    real_forward = torch.nn.CrossEntropyLoss.forward

    def poisoned(self, logits, target):
        calls["n"] += 1
        loss = real_forward(self, logits, target)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match="epoch 2, step 3"):
        fit(cfg, splits, progress=False)
    assert last.read_bytes() == before
    assert len(pd.read_csv(cfg.run_path / "history.csv")) == 1


def test_resuming_with_another_recipe_or_architecture_is_refused_clearly(tmp_path, splits):
    cfg = small_cfg(tmp_path, epochs=1)
    result = fit(cfg, splits, progress=False)
    with pytest.raises(CheckpointError, match=r"epochs: checkpoint 1 vs now 2") as err:
        fit(small_cfg(tmp_path, epochs=2, lr=0.05), splits, progress=False)
    assert "lr: checkpoint 0.1 vs now 0.05" in str(err.value) and "run_dir" in str(err.value)
    with pytest.raises(CheckpointError, match="channels"):
        load_trained_model(result.best_path, cfg=Config(channels=[32, 64, 128, 256]))
    with pytest.raises(CheckpointError, match=r"shape differs: stem.0.0.weight: checkpoint \(48, 3, 3, 3\)"):
        load_state_checked(CustomResNet(channels=(32, 64, 128, 256)), load_checkpoint(result.best_path)["model"])
    with pytest.raises(CheckpointError, match="missing in checkpoint"):
        load_state_checked(CustomResNet(blocks=(2, 2, 2, 3)), load_checkpoint(result.best_path)["model"])


def test_corrupt_or_missing_checkpoint_gives_a_clear_error(tmp_path, splits):
    cfg = small_cfg(tmp_path)
    cfg.run_path.mkdir(parents=True)
    (cfg.run_path / "last.pt").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="cannot be read as a checkpoint") as err:
        fit(cfg, splits, progress=False)
    assert "last.pt" in str(err.value)
    with pytest.raises(CheckpointError, match="no checkpoint here"):
        load_trained_model(tmp_path / "nowhere" / "best.pt")


def test_a_failed_save_leaves_the_previous_checkpoint_untouched(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"format": "x", "v": torch.arange(3)}, path)
    before = path.read_bytes()

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"format": "x", "v": torch.arange(5)}, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


# --- a real interruption: SIGKILL in the middle of an epoch ----------------------------------------
CHILD = textwrap.dedent("""
    import sys
    from utils.config import Config
    from utils.train import fit
    cfg = Config(**{SMALL!r}, run_dir=sys.argv[1], data_dir=sys.argv[2])
    def report(epoch, step, loss):
        print(f"STEP {{epoch}} {{step}}", flush=True)
    fit(cfg, progress=False, on_step=report)
    print("DONE", flush=True)
""").format(SMALL=SMALL)


def run_child(run_dir, cifar_dir, kill_at=None):
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(run_dir), str(cifar_dir)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    for line in proc.stdout:
        if kill_at and line.split()[:3] == ["STEP", *map(str, kill_at)]:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=300)
    return proc.returncode, proc.stderr.read()


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_ends_exactly_like_an_uninterrupted_run(tmp_path, cifar_dir):
    code, err = run_child(tmp_path / "killed", cifar_dir, kill_at=(1, 3))   # epoch 2, step 4
    assert code == -signal.SIGKILL, err
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["epoch"] == 1   # epoch 1 survived whole
    code, err = run_child(tmp_path / "killed", cifar_dir)
    assert code == 0, err
    code, err = run_child(tmp_path / "straight", cifar_dir)
    assert code == 0, err
    assert_same_weights(tmp_path / "straight" / "last.pt", tmp_path / "killed" / "last.pt")
    a = load_checkpoint(tmp_path / "straight" / "last.pt")["history"]
    b = load_checkpoint(tmp_path / "killed" / "last.pt")["history"]
    pd.testing.assert_frame_equal(without_time(a), without_time(b))
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "straight" / "history.csv").drop(columns="seconds"),
                                  pd.read_csv(tmp_path / "killed" / "history.csv").drop(columns="seconds"))


SAVER = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    from utils.train import atomic_save
    path, i = Path(sys.argv[1]), 0
    while True:
        atomic_save({"format": "cifar10-customresnet/1", "i": i, "w": torch.full((4_000_000,), float(i))}, path)
        i += 1
        print(i, flush=True)
""")


@pytest.mark.slow
def test_sigkill_while_a_checkpoint_is_being_written_never_leaves_a_half_file(tmp_path):
    path = tmp_path / "last.pt"
    for delay in (0.0, 0.05, 0.13):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        for _ in range(3):
            proc.stdout.readline()   # a few complete saves first
        time.sleep(delay)
        proc.kill()
        proc.wait()
        ckpt = load_checkpoint(path)   # always a whole checkpoint, never a torn one
        assert torch.equal(ckpt["w"], torch.full((4_000_000,), float(ckpt["i"])))


def test_ema_decay_ramps_up_so_early_weights_do_not_dominate():
    from torch.optim.swa_utils import AveragedModel
    model = torch.nn.Linear(1, 1, bias=False)
    ema = AveragedModel(model, multi_avg_fn=train_mod.ema_multi_avg_fn(0.999), use_buffers=True)
    for step in range(200):
        with torch.no_grad():
            model.weight.fill_(1.0 if step else 0.0)   # weights jump from 0 to 1 after the first step
        ema.update_parameters(model)
    # A fixed 0.999 decay would still hold ~82 % of the first weights (0.999**199); the ramp keeps < 5 %.
    assert ema.module.weight.item() > 0.95
