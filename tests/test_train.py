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
from utils.config import REPO_ROOT, Config
from utils.data import DeviceLoader, load_cifar10, prepare_splits
from utils.device import decide
from utils.evaluate import checkpoint_splits, evaluate_loader
from utils.files import remove_stale_temporaries
from utils.model import CustomResNet
from utils.train import NonFiniteLossError, build_run, fit

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
    precision = decide(torch.device("cpu"))
    loader = DeviceLoader(splits.val_images, splits.val_labels, splits.mean, splits.std, cfg.eval_batch_size, "cpu",
                          train=False, channels_last=precision.channels_last)
    return evaluate_loader(model, loader, precision=precision)


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
    ema = train_mod.EMA(model, 0.999)
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
    precision = decide(torch.device("cpu"))
    cfg = tiny_cfg(tmp_path, label_smoothing=0.1, nesterov=True, cutout=8, auto_augment="trivialaugment",
                   ema_decay=0.99, mixup_alpha=0.2)
    run = build_run(cfg, splits, precision)
    assert run.criterion.label_smoothing == 0.1
    assert run.optimizer.param_groups[0]["nesterov"] is True
    assert run.train_loader.train and run.train_loader.cutout_size == 8
    assert run.train_loader.auto_augment == "trivialaugment"
    assert run.val_loader is not None and not run.val_loader.train
    assert run.val_loader.cutout_size == 0 and run.val_loader.auto_augment == "none"
    assert torch.equal(run.val_loader.images.cpu(), torch.from_numpy(splits.val_images).permute(0, 3, 1, 2))
    assert run.ema is not None and run.ema.decay == 0.99 and run.mixer is not None
    assert run.eval_model is run.ema.module
    plain = build_run(tiny_cfg(tmp_path), splits, precision)
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

    real_step = train_mod.train_step
    batches = []

    def step(model, x, target, *args, **kwargs):
        loss, _ = real_step(model, x, target, *args, **kwargs)
        logits = target.clone()
        logits[1::2] = 1 - target[1::2]           # argmax: the first class that is neither y nor y + 1
        batches.append(len(x))
        return loss, logits

    run.mixer = mixer
    monkeypatch.setattr(train_mod, "train_step", step)
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


# --- the CPU guard: full-data training on a CPU says how long it will take, then continues -------------
def test_full_data_training_on_a_cpu_prints_a_time_estimate_from_its_first_steps(tmp_path, cifar, monkeypatch):
    calls = []

    def fake_epoch(run, epoch, progress, on_step, on_cpu_estimate=None):
        calls.append(on_cpu_estimate)
        if on_cpu_estimate is not None:
            on_cpu_estimate(0.5)            # as measured over the first steps
        return {"train_loss": 1.0, "train_acc": 0.5}

    monkeypatch.setattr(train_mod, "train_one_epoch", fake_epoch)
    monkeypatch.setattr(train_mod, "validate", lambda run: None)
    logged = []
    cfg = tiny_cfg(tmp_path, "full", subset_per_class=0, epochs=3, batch_size=128)
    fit(cfg, prepare_splits(cfg, cifar), progress=False, max_epochs_this_call=2, log=logged.append)
    hours = 0.5 * 352 * 2 / 3600           # 45,000 images / 128 = 352 steps per epoch, 2 epochs in this call
    guard = [line for line in logged if line.startswith("Training on the CPU")]
    assert len(guard) == 1 and f"about {hours:.1f} h for the 2 epochs left" in guard[0] and "smoke" in guard[0]
    assert calls[0] is not None and calls[1] is None          # measured once, in the first epoch of the call
    logged.clear()
    cfg = tiny_cfg(tmp_path, "subset", epochs=1)               # a subset: minutes, nothing to warn about
    fit(cfg, prepare_splits(cfg, cifar), progress=False, log=logged.append)
    assert not [line for line in logged if line.startswith("Training on the CPU")]


def test_an_epoch_measures_seconds_per_step_over_its_first_steps_once(tmp_path, splits):
    cfg = tiny_cfg(tmp_path, batch_size=8)
    run = train_mod.build_run(cfg, splits, train_mod.decide(torch.device("cpu")))
    measured = []
    train_mod.train_one_epoch(run, 0, False, None, measured.append)
    assert len(run.train_loader) > max(train_mod.CPU_GUARD_STEPS) and len(measured) == 1 and measured[0] > 0
