"""A run resumes on another machine: from 2 GPUs on 1, from a GPU on a CPU, with amp / channels_last / compile
changed. (On the same device the resumed run stays bit-identical: tests/test_train.py.)"""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.config import Config
from utils.dataset import load_cifar10, prepare_splits
from utils.runtime import rng as device_mod
from utils.train import fit

TINY = dict(subset_per_class=20, epochs=2, batch_size=32, test_limit=100, deterministic=True, seed=1,
            channels=[8, 16, 16, 32])


@pytest.fixture(scope="module")
def splits(cifar_dir):
    return prepare_splits(Config(**TINY), load_cifar10(cifar_dir))


def one_epoch(tmp_path, splits, **kw) -> Config:
    cfg = Config(**{**TINY, "run_dir": str(tmp_path / "run"), **kw})
    fit(cfg, splits, progress=False, max_epochs_this_call=1)
    return cfg


def test_cuda_rng_states_are_restored_for_the_gpus_this_machine_has(monkeypatch):
    """A checkpoint from Kaggle's 2 x T4 holds two CUDA RNG states; on a 1-GPU machine the first is restored
    (the first release called set_rng_state_all and died with an IndexError)."""
    state = device_mod.rng_state()
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8), torch.ones(16, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, index: restored.append((index, s.sum().item())))
    device_mod.set_rng_state(state)
    assert restored == [(0, 0)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)    # a CPU machine: the CUDA states are ignored
    restored.clear()
    device_mod.set_rng_state(state)
    assert restored == []


def test_a_gpu_checkpoint_resumes_on_a_cpu(tmp_path, splits):
    """last.pt as a T4 writes it (device cuda, fp16 loss-scaler state, two CUDA RNG states) continues on a CPU."""
    cfg = one_epoch(tmp_path, splits)
    last = cfg.run_path / "last.pt"
    ckpt = load_checkpoint(last)
    scaler = torch.amp.GradScaler("cpu")
    ckpt["config"] = {**ckpt["config"], "device": "cuda", "amp": True, "channels_last": True, "compile": True}
    ckpt["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)] * 2
    ckpt["scaler"] = scaler.state_dict()
    save_checkpoint(ckpt, last)
    logged = []
    result = fit(cfg.replace(device="cpu"), splits, progress=False, log=logged.append)
    assert any(line.startswith(f"Resumed {last} after epoch 1") for line in logged), logged
    assert result.finished and len(result.history) == 2 and load_checkpoint(last)["epoch"] == 2


def test_precision_and_layout_may_change_between_a_run_and_its_resumption(tmp_path, splits):
    cfg = one_epoch(tmp_path, splits, amp=True, channels_last=True)
    result = fit(cfg.replace(amp=False, channels_last=False, compile=True), splits, progress=False)
    assert result.finished and len(result.history) == 2
    assert pd.read_csv(cfg.run_path / "history.csv")["epoch"].tolist() == [1, 2]
