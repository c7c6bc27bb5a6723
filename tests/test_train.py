"""Training on a small real subset (CPU): resume exactness, kill and resume, checkpoints, failures."""
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from utils import train as train_mod
from utils.checkpoint import CheckpointError, load_checkpoint, load_state_checked, load_trained_model, save_checkpoint
from utils.config import Config
from utils.dataset import load_cifar10, prepare_splits
from utils.evaluate import checkpoint_splits, evaluate_loader
from utils.loader import DeviceLoader
from utils.model import CustomResNet
from utils.recipe import EMA, build_run
from utils.runtime import estimates
from utils.runtime.device import decide
from utils.runtime.files import remove_stale_temporaries
from utils.runtime.platforms import REPO_ROOT
from utils.train import NonFiniteLossError, fit

SMALL = dict(subset_per_class=20, epochs=3, batch_size=32, test_limit=100, deterministic=True, seed=1)
# The same data and recipe with a much narrower CustomResNet: for the tests of what fit does, not of the model.
TINY = {**SMALL, "channels": [8, 16, 16, 32]}


@pytest.fixture(scope="module")
def cifar(cifar_dir):
    return load_cifar10(cifar_dir)


@pytest.fixture(scope="module")
def splits(cifar):
    return prepare_splits(Config(**SMALL), cifar)


def small_cfg(tmp_path, name="run", **kw):
    return Config(**{**SMALL, "run_dir": str(tmp_path / name), **kw})


def tiny_cfg(tmp_path, name="run", **kw):
    return Config(**{**TINY, "run_dir": str(tmp_path / name), **kw})


def assert_same_state(a, b, what="weights"):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{what} differ in {different[:5]}"


def assert_same_weights(path_a, path_b):
    assert_same_state(load_checkpoint(path_a)["model"], load_checkpoint(path_b)["model"])


def clean_val_loss(model, splits, cfg):
    """Loss and accuracy of `model` on the validation images, unaugmented, with fit's precision on the CPU."""
    plan = decide(torch.device("cpu"))
    loader = DeviceLoader(splits.val_images, splits.val_labels, splits.mean, splits.std, cfg.eval_batch_size, "cpu",
                          train=False, channels_last=plan.channels_last)
    return evaluate_loader(model, loader, plan=plan)


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
    weighted = sum(loss * n for loss, n in zip(losses, sizes)) / sum(sizes)
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
    last, best = cfg.run_path / "last.pt", cfg.run_path / "best.pt"
    before, best_before = last.read_bytes(), best.read_bytes()
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
    assert best.read_bytes() == best_before, "best.pt was written during the epoch whose loss went non-finite"
    assert len(pd.read_csv(cfg.run_path / "history.csv")) == 1
    assert sorted(p.name for p in cfg.run_path.iterdir()) == ["best.pt", "history.csv", "last.pt"]


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
    save_checkpoint({"format": "x", "v": torch.arange(3)}, path)
    before = path.read_bytes()

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"format": "x", "v": torch.arange(5)}, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


# --- a real interruption: SIGKILL in the middle of an epoch ----------------------------------------
CHILD = textwrap.dedent("""
    import sys, time
    from utils.config import Config
    from utils.train import fit
    cfg = Config(**{TINY!r}, run_dir=sys.argv[1], data_dir=sys.argv[2])
    kill_at = tuple(int(v) for v in sys.argv[3].split(",")) if len(sys.argv) > 3 else None
    def report(epoch, step, loss):
        print(f"STEP {{epoch}} {{step}}", flush=True)
        if (epoch, step) == kill_at:
            time.sleep(600)   # hold still in the middle of the epoch until the parent's SIGKILL lands
    fit(cfg, progress=False, on_step=report)
    print("DONE", flush=True)
""").format(TINY=TINY)   # the narrow model: what is tested is fit's resume


def run_python(code: str, args: list[str], err_path, kill_when=lambda words: False, timeout: int = 300):
    """Run `python -c code args`; SIGKILL it at the first stdout line whose words satisfy `kill_when` (the child
    waits there). Returns (exit code, the stdout lines read as word lists, stderr).

    stderr goes to a file (a pipe nobody reads could fill and block the child); stdout is read line by line."""
    lines = []
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                stderr=err, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        try:
            for line in proc.stdout:
                lines.append(line.split())
                if kill_when(lines[-1]):
                    proc.kill()
                    break
            proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stdout.close()
    return proc.returncode, lines, err_path.read_text()


def run_child(run_dir, cifar_dir, kill_at=None, label="run"):
    """Run CHILD; with kill_at=(epoch, step), SIGKILL it while it waits at that step. Returns (code, stderr)."""
    args = [str(run_dir), str(cifar_dir)] + ([",".join(map(str, kill_at))] if kill_at else [])
    target = ["STEP", *map(str, kill_at)] if kill_at else None
    code, _, err = run_python(CHILD, args, run_dir.parent / f"{run_dir.name}-{label}.stderr.txt",
                              lambda words: words[:3] == target)
    return code, err


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_ends_exactly_like_an_uninterrupted_run(tmp_path, cifar_dir):
    code, err = run_child(tmp_path / "killed", cifar_dir, kill_at=(1, 3), label="killed")   # epoch 2, step 4
    assert code == -signal.SIGKILL, err
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["epoch"] == 1   # epoch 1 survived whole
    code, err = run_child(tmp_path / "killed", cifar_dir, label="resumed")
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
    import io, sys, time, torch
    from pathlib import Path
    from utils.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
    path, whole = Path(sys.argv[1]), int(sys.argv[2])
    real_save = torch.save

    def save_and_stall_halfway(obj, f, *args, **kwargs):
        if obj["i"] < whole:
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[:len(buffer.getvalue()) // 2])   # half of this checkpoint is in the file
        f.flush()
        print("IN SAVE", obj["i"], flush=True)
        time.sleep(600)                                             # the parent's SIGKILL lands here

    torch.save = save_and_stall_halfway
    for i in range(whole + 1):
        save_checkpoint({"format": CHECKPOINT_FORMAT, "i": i, "w": torch.full((4_000_000,), float(i))}, path)
        print("SAVED", i, flush=True)
""")


@pytest.mark.slow
def test_sigkill_while_a_checkpoint_is_being_written_never_leaves_a_half_file(tmp_path):
    for whole in (1, 3):          # killed in the 2nd save, then in the 4th
        folder = tmp_path / f"after-{whole}-saves"
        path = folder / "last.pt"
        # SIGKILL while the child is inside torch.save, half a file written
        code, lines, err = run_python(SAVER, [str(path), str(whole)], tmp_path / f"saver-{whole}.stderr.txt",
                                      lambda words: words[:2] == ["IN", "SAVE"], timeout=120)
        assert code == -signal.SIGKILL, err
        assert lines == [["SAVED", str(i)] for i in range(whole)] + [["IN", "SAVE", str(whole)]]
        stale = list(folder.glob(".last.pt.*.tmp"))
        assert len(stale) == 1 and stale[0].stat().st_size > 0    # the kill hit a save: its temp file is there
        ckpt = load_checkpoint(path)   # always a whole checkpoint, never a torn one
        assert torch.equal(ckpt["w"], torch.full((4_000_000,), float(ckpt["i"])))
        assert ckpt["i"] == whole - 1   # the previous checkpoint, whole
        before = path.read_bytes()
        remove_stale_temporaries(folder)   # what fit does first (see the two-calls test)
        assert sorted(p.name for p in folder.iterdir()) == ["last.pt"] and path.read_bytes() == before


def test_ema_decay_ramps_up_so_early_weights_do_not_dominate():
    model = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(model, 0.999)
    for step in range(200):
        with torch.no_grad():
            model.weight.fill_(1.0 if step else 0.0)   # weights jump from 0 to 1 after the first step
        ema.update(model)
    # A fixed 0.999 decay would still hold ~82 % of the first weights (0.999**199); the ramp keeps < 5 %.
    assert ema.module.weight.item() > 0.95


# --- what fit validates, saves and resumes, at tiny scale ---------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, splits):
    """One epoch of the tiny model with the paper's recipe, shared by the tests that only read it."""
    cfg = tiny_cfg(tmp_path_factory.mktemp("tiny"), epochs=1)
    return cfg, fit(cfg, splits, progress=False)


def test_fit_validates_on_the_unaugmented_validation_split(tiny_run, splits):
    cfg, result = tiny_run
    expected = clean_val_loss(result.model, splits, cfg)
    assert result.history.loc[0, "val_loss"] == pytest.approx(expected["loss"], abs=1e-5)
    assert result.history.loc[0, "val_acc"] == pytest.approx(expected["acc"], abs=1e-6)


def test_checkpoint_splits_give_back_exactly_the_held_out_validation_images(tiny_run, splits, cifar_dir):
    _, result = tiny_run
    # Notebook 04's own config (another profile: all the data, seed 0): the checkpoint's subset and seed decide.
    again = checkpoint_splits(load_checkpoint(result.best_path), Config(data_dir=str(cifar_dir)))
    np.testing.assert_array_equal(again.val_images, splits.val_images)
    np.testing.assert_array_equal(again.val_labels, splits.val_labels)
    np.testing.assert_array_equal(again.train_images, splits.train_images)
    train_rows = {image.tobytes() for image in splits.train_images}
    assert len(again.val_images) == 20
    assert not [i for i, image in enumerate(again.val_images) if image.tobytes() in train_rows]


def test_with_ema_the_ema_weights_are_validated_and_saved_as_best_pt(tmp_path, splits):
    cfg = tiny_cfg(tmp_path, epochs=1, ema_decay=0.9)
    result = fit(cfg, splits, progress=False)
    best, last = load_checkpoint(result.best_path), load_checkpoint(result.last_path)
    assert last["ema"]["updates"] == 6                       # one per step
    assert_same_state(best["model"], last["ema"]["module"])
    assert_same_state(result.model.state_dict(), last["ema"]["module"])
    assert any(not torch.equal(best["model"][k], last["model"][k]) for k in best["model"])
    expected = clean_val_loss(result.model, splits, cfg)
    assert result.history.loc[0, "val_loss"] == pytest.approx(expected["loss"], abs=1e-5)
    raw = CustomResNet(**cfg.model_kwargs())
    raw.load_state_dict(last["model"])
    assert clean_val_loss(raw, splits, cfg)["loss"] != pytest.approx(expected["loss"], abs=1e-5)


def test_ema_and_cutout_run_split_over_two_calls_equals_a_straight_run(tmp_path, splits):
    kw = dict(epochs=2, ema_decay=0.9, cutout=8)
    straight = fit(tiny_cfg(tmp_path, "straight", **kw), splits, progress=False)
    first = fit(tiny_cfg(tmp_path, "resumed", **kw), splits, progress=False, max_epochs_this_call=1)
    assert load_checkpoint(first.last_path)["ema"]["updates"] == 6
    resumed = fit(tiny_cfg(tmp_path, "resumed", **kw), splits, progress=False)
    assert resumed.finished and len(resumed.history) == 2
    a, b = load_checkpoint(straight.last_path), load_checkpoint(resumed.last_path)
    assert_same_state(a["model"], b["model"])
    assert a["ema"]["updates"] == b["ema"]["updates"] == 12
    assert_same_state(a["ema"]["module"], b["ema"]["module"], "EMA weights")
    assert_same_weights(straight.best_path, resumed.best_path)
    pd.testing.assert_frame_equal(without_time(straight.history), without_time(resumed.history))


def test_recipe_extras_reach_the_criterion_the_optimizer_and_the_loaders(tmp_path, splits):
    plan = decide(torch.device("cpu"))
    cfg = tiny_cfg(tmp_path, label_smoothing=0.1, nesterov=True, cutout=8, auto_augment="trivialaugment",
                   ema_decay=0.99, mixup_alpha=0.2)
    run = build_run(cfg, splits, plan)
    assert run.criterion.label_smoothing == 0.1
    assert run.optimizer.param_groups[0]["nesterov"] is True
    assert run.train_loader.train and run.train_loader.cutout_size == 8
    assert run.train_loader.auto_augment == "trivialaugment"
    assert run.val_loader is not None and not run.val_loader.train
    assert run.val_loader.cutout_size == 0 and run.val_loader.auto_augment == "none"
    assert torch.equal(run.val_loader.images.cpu(), torch.from_numpy(splits.val_images).permute(0, 3, 1, 2))
    assert run.ema is not None and run.ema.decay == 0.99 and run.mixer is not None
    assert run.eval_model is run.ema.module
    plain = build_run(tiny_cfg(tmp_path), splits, plan)
    assert plain.criterion.label_smoothing == 0.0 and plain.optimizer.param_groups[0]["nesterov"] is False
    assert plain.train_loader.cutout_size == 0 and plain.train_loader.auto_augment == "none"
    assert plain.ema is None and plain.mixer is None and plain.eval_model is plain.model


def test_mixup_trains_and_train_acc_counts_the_dominant_label_of_the_mix(tmp_path, splits, monkeypatch):
    cfg = tiny_cfg(tmp_path, epochs=1, mixup_alpha=0.4)
    result = fit(cfg, splits, progress=False)
    assert len(result.history) == 1
    assert np.isfinite(result.history[["train_loss", "train_acc", "val_loss", "val_acc"]].to_numpy()).all()

    # The accounting: soft targets whose dominant label is (y + 1) % 10 (weight 0.6; y keeps 0.4). Predictions
    # name the dominant label on even rows and neither label on odd rows: exactly half right. Counting against
    # the unmixed y would give 0.
    run = build_run(cfg, splits, decide(torch.device("cpu")))

    def mixer(x, y):
        return x, 0.4 * F.one_hot(y, 10).float() + 0.6 * F.one_hot((y + 1) % 10, 10).float()

    real_step = train_mod.update_weights
    batches = []

    def step(model, x, target, *args, **kwargs):
        loss, _ = real_step(model, x, target, *args, **kwargs)
        logits = target.clone()
        logits[1::2] = 1 - target[1::2]           # argmax: the first class that is neither y nor y + 1
        batches.append(len(x))
        return loss, logits

    run.mixer = mixer
    monkeypatch.setattr(train_mod, "update_weights", step)
    out = train_mod.train_one_epoch(run, 0, False, None)
    assert batches == [32] * 5 + [20]
    assert out["train_acc"] == pytest.approx(0.5, abs=1e-7)
    assert np.isfinite(out["train_loss"])


def test_resume_false_starts_over_in_the_same_run_dir(tmp_path, splits):
    first = fit(tiny_cfg(tmp_path, "run", epochs=2), splits, progress=False, max_epochs_this_call=1)
    first_weights = load_checkpoint(first.last_path)["model"]
    # Same recipe: resume=False trains epoch 1 again instead of going on with epoch 2.
    over = fit(tiny_cfg(tmp_path, "run", epochs=2, resume=False), splits, progress=False, max_epochs_this_call=1)
    assert len(over.history) == 1
    assert_same_state(load_checkpoint(over.last_path)["model"], first_weights)
    # Another recipe (epochs=1) in the same run_dir: no refusal, a run of its own, equal to a fresh one's.
    again = fit(tiny_cfg(tmp_path, "run", epochs=1, resume=False), splits, progress=False)
    fresh = fit(tiny_cfg(tmp_path, "fresh", epochs=1), splits, progress=False)
    assert again.finished and len(again.history) == 1 and load_checkpoint(again.last_path)["epoch"] == 1
    assert len(pd.read_csv(again.run_dir / "history.csv")) == 1
    assert_same_weights(fresh.last_path, again.last_path)
    assert_same_weights(fresh.best_path, again.best_path)
    pd.testing.assert_frame_equal(without_time(fresh.history), without_time(again.history))


# --- the wall time: measured on every device, projected for all members; full data on a CPU says what to do --------
def test_full_data_training_on_a_cpu_prints_a_time_estimate_from_its_first_steps(tmp_path, cifar, monkeypatch):
    calls = []

    def fake_epoch(run, epoch, progress, on_step, on_time_estimate=None):
        calls.append(on_time_estimate)
        if on_time_estimate is not None:
            on_time_estimate(0.5)            # as measured over the first steps
        return {"train_loss": 1.0, "train_acc": 0.5}

    monkeypatch.setattr(train_mod, "train_one_epoch", fake_epoch)
    monkeypatch.setattr(train_mod, "validate", lambda run: None)
    logged = []
    cfg = tiny_cfg(tmp_path, "full", subset_per_class=0, epochs=3, batch_size=128)
    fit(cfg, prepare_splits(cfg, cifar), progress=False, max_epochs_this_call=2, log=logged.append)
    hours = 0.5 * 352 * 2 / 3600           # 45,000 images / 128 = 352 steps per epoch, 2 epochs in this call
    guard = [line for line in logged if line.startswith("Training on the CPU")]
    assert len(guard) == 1 and f"about {hours:.1f} h for the 2 epochs left" in guard[0] and "smoke" in guard[0]
    wall = [line for line in logged if line.startswith("Wall time on cpu")]
    assert len(wall) == 1 and "0.500 s per step" in wall[0] and "this member's 3 epoch(s) left: 8.8 min" in wall[0]
    assert calls[0] is not None and calls[1] is None          # measured once, in the first epoch of the call
    logged.clear()
    cfg = tiny_cfg(tmp_path, "subset", epochs=1)               # a subset: minutes, no advice, but the wall time
    fit(cfg, prepare_splits(cfg, cifar), progress=False, log=logged.append)
    assert not [line for line in logged if line.startswith("Training on the CPU")]
    assert [line for line in logged if line.startswith("Wall time on cpu, measured over steps 4-8")]


def test_an_epoch_measures_seconds_per_step_over_its_first_steps_once(tmp_path, splits):
    cfg = tiny_cfg(tmp_path, batch_size=8)
    run = build_run(cfg, splits, decide(torch.device("cpu")))
    measured = []
    train_mod.train_one_epoch(run, 0, False, None, measured.append)
    assert len(run.train_loader) > max(train_mod.TIMING_STEPS) and len(measured) == 1 and measured[0] > 0


def test_the_wall_time_is_projected_for_all_members_and_on_kaggle_split_over_sessions(monkeypatch):
    cfg = Config(epochs=400, members=2, val_fraction=0.0, patience=0)
    # 0.2 s per step x 352 steps = 70.4 s per epoch; 400 epochs = 7.8 h per member
    call = dict(device="cuda", epochs=cfg.epochs, epochs_done=0, end_epoch=400, members=cfg.members,
                members_in_call=2, run_path=cfg.run_path)
    local = estimates.wall_time_estimate(0.2, 352, **call, members_at_once=2, platform="local")
    assert len(local) == 1 and "all 2 members x 400 epochs, 2 at a time: 7.8 h" in local[0]
    one_gpu = estimates.wall_time_estimate(0.2, 352, **call, members_at_once=1, platform="kaggle")
    assert "all 2 members x 400 epochs, 1 at a time: 15.6 h" in one_gpu[0]
    # one after another: 15.6 h in this call, over the 11 usable hours: 11 h / (70.4 s x 2 members) = 281 epochs
    assert "does NOT fit the 12-hour session (about 15.6 h): set max_epochs_this_call = 281" in one_gpu[1]
    assert f"its run folder is copied back into {cfg.run_path} and training resumes from last.pt" in one_gpu[1]
    two_gpus = estimates.wall_time_estimate(0.2, 352, **call, members_at_once=2, platform="kaggle")
    assert two_gpus[1] == "Kaggle: this call fits the 12-hour session (about 7.8 h of it)."   # side by side
    split = estimates.wall_time_estimate(0.2, 352, **{**call, "end_epoch": 200}, epoch_limit=200, members_at_once=2,
                                         platform="kaggle")
    assert "this call (200 epoch(s) per member, max_epochs_this_call 200): 3.9 h" in split[0]
    assert split[1] == "Kaggle: this call fits the 12-hour session (about 3.9 h of it)."
    # Without `platform`, the platform is utils.runtime.platforms.detect()'s, which $CIFAR10_PLATFORM overrides
    monkeypatch.setenv("CIFAR10_PLATFORM", "kaggle")
    assert estimates.wall_time_estimate(0.2, 352, **call, members_at_once=1) == one_gpu
    monkeypatch.setenv("CIFAR10_PLATFORM", "local")
    assert estimates.wall_time_estimate(0.2, 352, **call, members_at_once=1) == one_gpu[:1]


# --- members = 1 is the run from before members existed, bit for bit ------------------------------------------
# Recorded with utils/train.py as it was before members, the monitor and the progress record (this CPU, torch
# 2.14.1, avx512_bf16, one thread): sha256[:16] of the final last.pt / best.pt weights of TINY for 2 epochs, seed 1.
BEFORE_MEMBERS = {"cpu": "AMD EPYC", "torch": "2.14.1", 0.1: ("8eea1e9d0801c69c", "3ce8496a113ab222"),
                  0.0: ("e01f9a1d0308b2b6", "e01f9a1d0308b2b6")}


def weights_digest(state) -> str:
    import hashlib
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("val_fraction", [0.1, 0.0])
def test_members_1_trains_exactly_the_weights_of_the_run_before_members(tmp_path, cifar, one_thread, val_fraction):
    from utils.runtime.device import cpu_has_native_bf16, device_name
    cfg = tiny_cfg(tmp_path, epochs=2, val_fraction=val_fraction)
    assert cfg.members == 1 and cfg.training_seed() == cfg.seed and cfg.member_path() == cfg.run_path
    result = fit(cfg, prepare_splits(cfg, cifar), progress=False, log=lambda line: None)
    assert (result.member, result.training_seed, result.run_dir) == (0, cfg.seed, cfg.run_path)
    got = (weights_digest(load_checkpoint(result.last_path)["model"]),
           weights_digest(load_checkpoint(result.best_path)["model"]))
    # Member 0 of a 3-member run is that same run, in the same folder
    again = fit(tiny_cfg(tmp_path, "member-0-of-3", epochs=2, val_fraction=val_fraction, members=3, member=0),
                prepare_splits(cfg, cifar), progress=False, log=lambda line: None)
    assert_same_weights(result.last_path, again.last_path)
    cpu = device_name("cpu")
    if not (cpu.startswith(BEFORE_MEMBERS["cpu"]) and cpu_has_native_bf16()
            and torch.__version__.startswith(BEFORE_MEMBERS["torch"])):
        pytest.skip(f"the recorded bits are from {BEFORE_MEMBERS['cpu']} (avx512_bf16) / torch "
                    f"{BEFORE_MEMBERS['torch']}, this is {cpu} / torch {torch.__version__} (other kernels, rounding)")
    assert got == BEFORE_MEMBERS[val_fraction]


# --- best.pt records how far the run got -------------------------------------------------------------------------
def test_best_pt_records_epochs_done_and_planned_every_epoch_even_when_its_weights_stay(tmp_path, splits,
                                                                                        monkeypatch):
    from utils.checkpoint import read_progress
    accs = iter([0.5, 0.4, 0.3])           # epoch 1 is the best: best.pt's weights stay, its record moves on
    monkeypatch.setattr(train_mod, "evaluate_loader", lambda *a, **k: {"loss": 1.0, "acc": next(accs)})
    cfg = tiny_cfg(tmp_path, epochs=3, patience=0)
    first = fit(cfg, splits, progress=False, max_epochs_this_call=2, log=lambda line: None)
    best = load_checkpoint(first.best_path)
    assert best["epoch"] == 1 and best["progress"] == {"epochs_done": 2, "epochs_planned": 3, "finished": False,
                                                       "stopped_early": False, "member": 0, "training_seed": 1}
    assert not read_progress(best, first.best_path).finished
    fit(cfg, splits, progress=False, log=lambda line: None)
    best = load_checkpoint(first.best_path)
    assert best["epoch"] == 1 and best["progress"]["epochs_done"] == 3 and best["progress"]["finished"]
    assert load_checkpoint(first.last_path)["progress"] == best["progress"]


# --- the monitor: the test batch without a validation split, choosing nothing ------------------------------------
def test_without_a_validation_split_the_monitor_records_the_test_batch_and_changes_nothing(tmp_path, cifar):
    from utils.plots import training_curves
    kw = dict(epochs=3, val_fraction=0.0, patience=0, ema_decay=0.9)
    cfg = tiny_cfg(tmp_path, "every-2", monitor_every=2, **kw)
    splits0 = prepare_splits(cfg, cifar)
    logged = []
    # Monitored at epochs 2 and 3 (the last), over two calls: the set of epochs does not depend on the split
    fit(cfg, splits0, progress=False, max_epochs_this_call=1, log=logged.append)
    rarely = fit(tiny_cfg(tmp_path, "every-5", monitor_every=5, **kw), splits0, progress=False, max_epochs_this_call=1,
                 log=lambda line: None)
    often = fit(tiny_cfg(tmp_path, "every-1", monitor_every=1, **kw), splits0, progress=False, max_epochs_this_call=1,
                log=lambda line: None)
    # After one epoch the run that monitored and the one that did not hold the same weights and the same RNG state
    a, b = load_checkpoint(often.last_path), load_checkpoint(rarely.last_path)
    assert_same_state(a["model"], b["model"])
    assert all(torch.equal(x, y) for x, y in [(a["rng"]["torch"], b["rng"]["torch"]),
                                              (a["rng"]["numpy"][1], b["rng"]["numpy"][1])])
    assert a["rng"]["python"] == b["rng"]["python"]
    assert not np.isnan(often.history.loc[0, "monitor_acc"]) and np.isnan(rarely.history.loc[0, "monitor_acc"])
    result = fit(cfg, splits0, progress=False, log=logged.append)
    often = fit(tiny_cfg(tmp_path, "every-1", monitor_every=1, **kw), splits0, progress=False, log=lambda line: None)
    history = pd.read_csv(cfg.run_path / "history.csv")
    assert list(history.columns) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "monitor_loss",
                                     "monitor_acc", "lr", "seconds"]
    assert history["monitor_acc"].notna().tolist() == [False, True, True]
    assert_same_weights(result.last_path, often.last_path)         # monitoring every epoch changed no weight
    best, last = load_checkpoint(result.best_path), load_checkpoint(result.last_path)
    assert best["epoch"] == 3 and best["progress"]["finished"]     # best.pt: the final (EMA) weights, not a choice
    assert_same_state(best["model"], last["ema"]["module"])
    # What it recorded at the last epoch is exactly the final model on the labeled test batch
    plan = decide(torch.device("cpu"))
    loader = DeviceLoader(splits0.test_images, splits0.test_labels, splits0.mean, splits0.std, cfg.eval_batch_size,
                          "cpu", train=False, channels_last=plan.channels_last)
    expected = evaluate_loader(result.model, loader, plan=plan)
    assert history["monitor_acc"].iloc[-1] == pytest.approx(expected["acc"], abs=1e-6)
    assert history["monitor_loss"].iloc[-1] == pytest.approx(expected["loss"], abs=1e-5)
    assert any("monitor (test) loss" in line and line.startswith("epoch   2") for line in logged)
    fig = training_curves(history)
    assert any("monitor" in str(line.get_label()) for ax in fig.axes for line in ax.get_lines())
    assert "monitor" in fig.axes[1].get_title()


def test_a_member_folder_resumes_only_its_own_member(tmp_path, splits):
    cfg = tiny_cfg(tmp_path, epochs=2, members=2, member=1)
    fit(cfg, splits, progress=False, max_epochs_this_call=1, log=lambda line: None)
    last = cfg.member_path(1) / "last.pt"
    assert last.is_file() and not (cfg.run_path / "last.pt").exists()
    ckpt = load_checkpoint(last)
    ckpt["progress"]["member"] = 0         # member 0's run, copied into member 1's folder
    save_checkpoint(ckpt, last)
    with pytest.raises(CheckpointError, match="member: checkpoint 0 vs now 1"):
        fit(cfg, splits, progress=False, log=lambda line: None)


def test_momentum_is_cycled_by_onecycle_by_default_and_kept_with_cycle_momentum_false(tmp_path, splits):
    plan = decide(torch.device("cpu"))
    for cycle, expected_start in ((True, 0.95), (False, 0.9)):
        run = build_run(tiny_cfg(tmp_path, momentum=0.9, cycle_momentum=cycle), splits, plan)
        seen = [run.optimizer.param_groups[0]["momentum"]]
        for _ in range(len(run.train_loader) * 2):           # into the schedule: past the warm-up's first steps
            run.optimizer.step()
            run.scheduler.step()
            seen.append(run.optimizer.param_groups[0]["momentum"])
        assert seen[0] == pytest.approx(expected_start)
        if cycle:
            assert min(seen) < 0.9 < max(seen), "OneCycleLR cycles the momentum between 0.85 and 0.95"
        else:
            assert set(seen) == {0.9}, "with cycle_momentum false SGD keeps `momentum` throughout"


# --------------------------------------------------------------------------------------------
# MixUp and CutMix, as the step hands the batch to the model
# --------------------------------------------------------------------------------------------
def mixed_step(tmp_path, splits, monkeypatch, **mix):
    """The run's first batch through train_batch with `mix` on (alpha 1: the mix weight uniform on (0, 1)):
    the batch as the loader gave it and (images, targets) as update_weights received them."""
    run = build_run(tiny_cfg(tmp_path, **mix), splits, decide(torch.device("cpu")))
    seen = []
    real_step = train_mod.update_weights

    def step(model, x, target, *args, **kwargs):
        seen.append((x.detach().clone(), target.detach().clone()))
        return real_step(model, x, target, *args, **kwargs)

    monkeypatch.setattr(train_mod, "update_weights", step)
    run.train_loader.set_epoch(0)
    x, y = next(iter(run.train_loader))
    unmixed = x.clone(), y.clone()
    torch.manual_seed(0)                      # the mix weight and the box are drawn from torch's generator
    train_mod.train_batch(run, x, y)
    assert len(seen) == 1
    mixed, target = seen[0]
    assert mixed.shape == x.shape and target.shape == (len(y), 10) and target.is_floating_point()
    return unmixed, mixed, target


def assert_soft(target: torch.Tensor) -> None:
    """Most rows' targets are a mix of two labels, not one-hot (a row whose partner shares its label stays one-hot)."""
    soft = int((target.max(dim=1).values < 0.99).sum())
    assert soft >= len(target) // 2, f"only {soft} of {len(target)} targets are soft: the batch was not mixed"


def test_mixup_hands_the_model_convex_blends_of_two_images_with_their_labels_blended_alike(tmp_path, splits,
                                                                                           monkeypatch):
    (x, y), mixed, target = mixed_step(tmp_path, splits, monkeypatch, mixup_alpha=1.0)
    assert_soft(target)
    flat, out = x.flatten(1), mixed.flatten(1)
    for i in range(len(x)):
        # the partner j and weight lam that best write out[i] as lam * x[i] + (1 - lam) * x[j] (least squares)
        d = flat[i] - flat
        lams = ((out[i] - flat) * d).sum(1) / (d * d).sum(1).clamp_min(1e-12)
        residual = (out[i] - flat - lams[:, None] * d).norm(dim=1)
        residual[i] = float("inf")
        j = int(residual.argmin())
        lam = float(lams[j])
        assert residual[j] <= 1e-4 * out[i].norm(), f"row {i} is not a blend of two of the batch's images"
        assert 0.02 < lam < 0.98, f"row {i} is image {i} or image {j} alone (weight {lam:.3f}), not a blend"
        expected = lam * F.one_hot(y[i], 10).float() + (1 - lam) * F.one_hot(y[j], 10).float()
        torch.testing.assert_close(target[i], expected, atol=1e-4, rtol=0)


def test_cutmix_hands_the_model_a_rectangle_of_another_image_with_labels_weighted_by_its_area(tmp_path, splits,
                                                                                             monkeypatch):
    # crop_padding 0: no zero border that two images share, so every pixel of the rectangle differs from the image's own
    (x, y), mixed, target = mixed_step(tmp_path, splits, monkeypatch, cutmix_alpha=1.0, crop_padding=0)
    assert_soft(target)
    height, width = x.shape[-2:]
    for i in range(len(x)):
        changed = (mixed[i] != x[i]).any(dim=0)                    # the pixels CutMix replaced, over the channels
        rows, cols = changed.any(dim=1).nonzero().flatten(), changed.any(dim=0).nonzero().flatten()
        assert len(rows) and len(cols), f"row {i} is its own image unchanged"
        top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        box = mixed[i, :, top:bottom, left:right]
        partners = [j for j in range(len(x)) if j != i and torch.equal(x[j, :, top:bottom, left:right], box)]
        assert partners, f"row {i}: the rectangle {top}:{bottom} x {left}:{right} is from none of the other images"
        area = (bottom - top) * (right - left) / (height * width)  # outside it the row is its own image (changed)
        assert 0 < area < 1
        j = partners[0]
        expected = (1 - area) * F.one_hot(y[i], 10).float() + area * F.one_hot(y[j], 10).float()
        torch.testing.assert_close(target[i], expected, atol=1e-4, rtol=0)
