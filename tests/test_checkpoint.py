"""Checkpoint files are read without running code, and the first release's format still loads."""
import subprocess
import sys

import pytest
import torch
from helpers import RunsCommand
from torch.optim.swa_utils import AveragedModel

from utils.checkpoint import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint, load_trained_model
from utils.config import Config
from utils.model import build_model
from utils.recipe import EMA
from utils.runtime.platforms import REPO_ROOT

TINY = Config(channels=[8, 16], blocks=[1, 1])


def plain_torch_load_in_a_child(path):
    """torch.load(weights_only=False), the unsafe way, in a process of its own."""
    code = "import sys, torch; torch.load(sys.argv[1], weights_only=False)"
    return subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)


def test_a_checkpoint_that_would_run_a_command_is_refused_and_the_command_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "best.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model": {}, "payload": RunsCommand(marker)}, path)
    # The payload really is hostile: a plain torch.load runs the command.
    done = plain_torch_load_in_a_child(path)
    assert done.returncode == 0, done.stderr
    assert marker.exists()
    marker.unlink()

    with pytest.raises(CheckpointError, match="cannot be read as a checkpoint") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    assert not marker.exists()
    with pytest.raises(CheckpointError):
        load_trained_model(path)
    assert not marker.exists()


def first_release_checkpoint(path):
    """A format-1 checkpoint: EMA saved as torch's AveragedModel state dict ({"n_averaged", "module.<key>"})."""
    torch.manual_seed(0)
    model = build_model(TINY)
    averaged = AveragedModel(model, use_buffers=True)
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        averaged.update_parameters(model)
    cfg = TINY.to_dict()
    cfg["tta"] = True            # the first release's boolean flag
    torch.save({"format": "cifar10-customresnet/1", "config": cfg, "epoch": 3, "model": model.state_dict(),
                "ema": averaged.state_dict(), "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3},
                "classes": [str(i) for i in range(10)], "val_acc": 0.5}, path)
    return model, averaged


def test_a_first_release_checkpoint_loads_and_its_ema_is_converted(tmp_path):
    path = tmp_path / "last.pt"
    model, averaged = first_release_checkpoint(path)
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["scaler"] is None
    ema = ckpt["ema"]
    assert set(ema) == {"updates", "module"} and ema["updates"] == 3
    expected = averaged.module.state_dict()
    assert ema["module"].keys() == expected.keys()
    assert all(torch.equal(ema["module"][k], expected[k]) for k in expected)
    assert not torch.equal(ema["module"]["fc.weight"], model.state_dict()["fc.weight"])

    restored = EMA(build_model(TINY), 0.9)
    restored.load_state_dict(ema)
    assert restored.updates == 3
    assert torch.equal(restored.module.fc.weight, averaged.module.fc.weight)
    loaded, meta = load_trained_model(path)
    assert torch.equal(loaded.fc.weight, model.fc.weight) and not loaded.training
    assert Config.from_params(meta["config"]).tta == "flip"
    assert meta["progress"] is None      # how far its run got was not recorded then (utils.ensemble asks last.pt)


def test_the_progress_record_says_finished_at_the_schedules_end_or_when_stopped_early():
    from utils.checkpoint import Progress, progress_record, read_progress
    assert progress_record(3, 10, False, 1, 77) == {"epochs_done": 3, "epochs_planned": 10, "finished": False,
                                                    "stopped_early": False, "member": 1, "training_seed": 77}
    assert progress_record(10, 10, False, 0, 0)["finished"] and progress_record(4, 10, True, 0, 0)["finished"]
    progress = read_progress({"progress": progress_record(4, 10, True, 2, 5)}, "best.pt")
    assert progress == Progress(4, 10, True, True, 2, 5) and progress.describe() == "4/10 epochs, stopped early"
    unfinished = read_progress({"progress": progress_record(3, 10, False, 0, 0)}, "x")
    assert unfinished.describe() == "3/10 epochs, NOT finished"
