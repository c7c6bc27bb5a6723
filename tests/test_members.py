"""Ensemble members trained in processes of their own (utils.members): side by side they train exactly what each
trains alone, a killed member leaves the others going and a rerun resumes only it, a folder of another recipe is
refused before anything starts. Two CPU processes stand in for two GPUs (no test machine has one), each with one
thread, as the members trained alone here."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from layouts import make_layout

from utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from utils.config import Config
from utils.dataset import prepare_splits
from utils.members import MemberError, member_runs, status_table, train_members
from utils.recipe import build_run
from utils.runtime.device import decide
from utils.train import fit

# 100 synthetic images (10 per class) -> 90 train / 10 val, 3 steps of 32 per epoch; a narrow CustomResNet
RECIPE = dict(epochs=3, batch_size=32, deterministic=True, seed=1, channels=[8, 16, 16, 32], members=2)


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    return make_layout(tmp_path_factory.mktemp("cifar"), per_batch=20, n_test=40, n_unlabeled=10)


def recipe(folder, layout, **kw) -> Config:
    return Config(**{**RECIPE, "run_dir": str(folder), "data_dir": str(layout), **kw})


def weights(cfg: Config, k: int, name: str = "last.pt"):
    return load_checkpoint(cfg.member_path(k) / name)["model"]


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def alone(tmp_path_factory, layout):
    """Each member trained alone, in this process, with one thread."""
    cfg = recipe(tmp_path_factory.mktemp("alone"), layout)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for k in range(cfg.members):
            fit(cfg.replace(member=k), progress=False, log=lambda line: None)
    finally:
        torch.set_num_threads(threads)
    return cfg


def test_members_share_the_data_and_differ_only_in_their_training_seed(alone):
    splits = [prepare_splits(alone.replace(member=k)) for k in range(2)]
    for field in ("train_images", "val_images", "test_images", "train_labels", "val_labels"):
        assert (getattr(splits[0], field) == getattr(splits[1], field)).all(), field
    runs = [build_run(alone.replace(member=k), splits[0], decide(torch.device("cpu"))) for k in range(2)]
    assert [r.training_seed for r in runs] == [alone.seed, alone.training_seed(1)]
    assert [r.train_loader.seed for r in runs] == [alone.seed, alone.training_seed(1)]
    assert [r.run_dir for r in runs] == [alone.run_path, alone.run_path / "member-1"]
    best = [load_checkpoint(alone.member_path(k) / "best.pt") for k in range(2)]
    assert best[0]["normalization"] == best[1]["normalization"]          # the same training split
    assert best[0]["normalization"]["mean"] == pytest.approx(splits[0].mean)
    assert [b["progress"]["training_seed"] for b in best] == [alone.seed, alone.training_seed(1)]
    assert not same(best[0]["model"], best[1]["model"])                 # two different models


def test_two_members_in_two_processes_train_exactly_what_each_trains_alone(alone, layout, tmp_path):
    cfg = recipe(tmp_path / "run", layout)
    lines = []
    runs = train_members(cfg, devices=["cpu", "cpu"], threads=1, log=lines.append)
    for k in range(2):
        assert same(weights(cfg, k), weights(alone, k)), f"member {k}'s weights differ from its run alone"
        assert same(weights(cfg, k, "best.pt"), weights(alone, k, "best.pt"))
        a = pd.read_csv(cfg.member_path(k) / "history.csv").drop(columns="seconds")
        b = pd.read_csv(alone.member_path(k) / "history.csv").drop(columns="seconds")
        pd.testing.assert_frame_equal(a, b)
    # Side by side: both started before either ended; every line prefixed, and kept in the member's train.log
    started = [i for i, line in enumerate(lines) if re.match(r"\[member \d\] started on cpu \(pid \d+\)", line)]
    ended = [i for i, line in enumerate(lines) if re.match(r"\[member \d\] done in", line)]
    assert len(started) == len(ended) == 2 and max(started) < min(ended), lines
    assert any(line.startswith("[member 1] epoch   3  train loss") for line in lines)
    log = (cfg.member_path(1) / "train.log").read_text()
    assert "epoch   3  train loss" in log and "member 1 on cpu" in log and "[member" not in log
    table = status_table(runs)
    assert table["finished"].all() and table["epochs done"].tolist() == [3, 3]
    assert table["training seed"].tolist() == [cfg.training_seed(0), cfg.training_seed(1)]


@pytest.mark.slow
def child_argv(pid: int, wait_s: float = 10.0) -> list[bytes]:
    """The command line of a child just started: between fork and exec /proc shows the parent's, so wait for the
    exec (a loaded machine can take a while)."""
    deadline = time.monotonic() + wait_s
    while True:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"utils.members" in argv or time.monotonic() > deadline:
            return argv
        time.sleep(0.01)


def test_a_killed_member_fails_the_call_naming_it_the_others_finish_and_a_rerun_resumes_only_it(alone, layout,
                                                                                                tmp_path):
    cfg = recipe(tmp_path / "run", layout)
    lines, pids = [], {}

    def kill_member_1_after_its_first_epoch(line: str) -> None:
        lines.append(line)
        started = re.match(r"\[member (\d)\] started on \S+ \(pid (\d+)\)", line)
        if started:
            pids[int(started[1])] = int(started[2])
            argv = child_argv(int(started[2]))
            assert argv[argv.index(b"--launcher-pid") + 1] == str(os.getpid()).encode()   # it watches this process
        if line.startswith("[member 1] epoch   1 "):
            os.kill(pids[1], signal.SIGKILL)       # what the OOM killer does

    with pytest.raises(MemberError) as err:
        train_members(cfg, devices=["cpu", "cpu"], threads=1, log=kill_member_1_after_its_first_epoch)
    message = str(err.value)
    assert "member 1 died (killed by SIGKILL" in message and str(cfg.member_path(1) / "train.log") in message
    assert "member 0" not in message and "trains only what is unfinished" in message
    runs = {r.member: r for r in member_runs(cfg)}
    assert runs[0].finished and not runs[1].finished and runs[1].progress.epochs_done < 3   # member 0 went on
    lines.clear()
    runs = train_members(cfg, devices=["cpu", "cpu"], threads=1, log=lines.append)
    assert any(line.startswith("[member 0] already trained (3/3 epochs, finished)") for line in lines), lines
    assert not any(line.startswith("[member 0] started") for line in lines)
    assert any(line.startswith(f"[member 1] Resumed {cfg.member_path(1) / 'last.pt'} after epoch") for line in lines)
    assert all(r.finished for r in runs)
    for k in range(2):                             # and the resumed member is exactly the member trained alone
        assert same(weights(cfg, k), weights(alone, k))


def test_a_member_folder_of_another_recipe_is_refused_before_any_process_starts(alone, layout, tmp_path):
    cfg = recipe(tmp_path / "run", layout)
    ckpt = load_checkpoint(alone.member_path(1) / "last.pt")
    ckpt["config"] = {**ckpt["config"], "lr": 0.05}
    save_checkpoint(ckpt, cfg.member_path(1) / "last.pt")
    lines = []
    with pytest.raises(CheckpointError, match=r"member 1: .*member-1/last.pt belongs to a different run:\n  lr: "
                                              r"checkpoint 0.05 vs now 0.1") as err:
        train_members(cfg, devices=["cpu", "cpu"], log=lines.append)
    assert "resume=False" in str(err.value)
    assert not lines and not (cfg.run_path / "last.pt").exists()


def running(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan's zombie may wait for a PID 1 that never reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from Linux's /proc")
def test_a_member_process_ends_itself_once_its_launcher_is_gone(layout, tmp_path):
    """SIGTERM or SIGKILL to the launcher (a kernel restarted, a job cancelled) runs none of its cleanup: the member
    must notice by itself, not only at its next line into a closed pipe (an epoch later; here its output goes to
    /dev/null, so it would never notice) while a rerun may already be training in its folder."""
    cfg = recipe(tmp_path / "run", layout, epochs=1000, members=1)
    member = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-m', 'utils.members', '--config',"
              " sys.argv[1], '--launcher-pid', str(__import__('os').getpid())], stdout=subprocess.DEVNULL,"
              " stderr=subprocess.DEVNULL); print(p.pid, flush=True); time.sleep(600)")
    launcher = subprocess.Popen([sys.executable, "-c", member, json.dumps({**cfg.to_dict(), "device": "cpu"})],
                                cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, text=True)
    pid = int(launcher.stdout.readline())
    try:
        deadline = time.monotonic() + 120
        while not (cfg.run_path / "last.pt").exists() and time.monotonic() < deadline:   # it is training
            time.sleep(0.2)
        assert running(pid) and (cfg.run_path / "last.pt").exists()
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=30)
        deadline = time.monotonic() + 15
        while running(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not running(pid), "the member process outlived its launcher"
    finally:
        launcher.kill()
        if running(pid):
            os.kill(pid, signal.SIGKILL)
    assert not member_runs(cfg)[0].finished                   # stopped mid-run: a rerun resumes from its last.pt


@pytest.mark.slow
def test_bench_members_times_two_members_side_by_side_against_one_alone(layout, tmp_path):
    import importlib.util

    from utils.runtime.platforms import REPO_ROOT
    spec = importlib.util.spec_from_file_location("bench_members", REPO_ROOT / "benchmarks" / "bench_members.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    lines = []
    result = bench.bench_members(recipe(tmp_path / "unused", layout, members=1), device="cpu", epochs=1,
                                 work_dir=tmp_path, log=lines.append)
    assert result["device"] == "cpu" and result["epochs"] == 1 and len(result["side_by_side_epoch_s"]) == 2
    assert result["alone_epoch_s"] > 0 and result["throughput_gain"] > 0
    assert result["throughput_gain"] == pytest.approx(2 * result["alone_epoch_s"] / max(result["side_by_side_epoch_s"]))
    assert any(line.startswith("[member 1] started on cpu") for line in lines)
    assert not list(tmp_path.glob("tmp*"))                     # its temporary run folders are gone


@pytest.mark.notebooks
def test_notebook_03_trains_member_k_alone_then_the_rest_in_processes_of_their_own(layout, tmp_path):
    """`python run.py -p member 1` (member 1 alone, in the kernel), then notebook 03 again without `member`: member 1
    is finished and skipped, member 0 trains in a fresh process, its lines prefixed; curves for both."""
    import nbformat
    import papermill as pm

    from utils.runtime.platforms import REPO_ROOT
    params = {**RECIPE, "profile": "tiny", "data_dir": str(layout), "run_dir": str(tmp_path / "run"), "device": "cpu",
              "figures_dir": str(tmp_path / "figures"), "submission_path": str(tmp_path / "s.csv"), "test_limit": 0}

    def run(**extra) -> str:
        out = tmp_path / "executed.ipynb"
        pm.execute_notebook(str(REPO_ROOT / "notebooks" / "03_train.ipynb"), str(out), parameters={**params, **extra},
                            kernel_name="python3", cwd=str(REPO_ROOT / "notebooks"), progress_bar=False)
        nb = nbformat.read(out, as_version=4)
        return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))

    alone = run(member=1)
    cfg = recipe(tmp_path / "run", layout)
    assert "Training member 1, training seed" in alone and "[member" not in alone
    assert (cfg.member_path(1) / "best.pt").is_file() and not (cfg.run_path / "last.pt").exists()
    rest = run()
    assert "[member 1] already trained (3/3 epochs, finished)" in rest and "[member 1] started" not in rest
    assert "[member 0] started on cpu" in rest and "[member 0] epoch   3  train loss" in rest
    assert "member 0: best validation accuracy" in rest and "member 1: best validation accuracy" in rest
    for name in ("training_curves.png", "training_curves_member-1.png"):
        assert (tmp_path / "figures" / name).is_file()
