"""benchmarks/reproduce.py end to end at tiny CPU scale (20 images per class, 1 epoch, 200 test images, 10 per
corruption set): every result file and field, one log line per epoch, resuming without retraining, the time budget,
and a kill that keeps the finished run.

Each call runs in a subprocess that cannot import what the GPU machine lacks (papermill, torchinfo, Jupyter: a
`sitecustomize` on PYTHONPATH refuses them, also in the --parallel children and the bench), with one torch thread:
on 2 cores shared with other jobs, two threads per process made the corruption pass 14x slower.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "reproduce.py"
TINY = ["--device", "cpu", "--subset-per-class", "20", "--epochs", "1"]
SMALL_EVAL = "corruption_images=10,test_limit=200"
PAPER = f"paper:{SMALL_EVAL}"
FAST_NO_VAL = f"fast:val_fraction=0,{SMALL_EVAL}"          # the no-validation path: val numbers are None
BLOCKED = ("papermill", "torchinfo", "jupyter", "jupyter_client", "jupyter_core", "nbformat", "nbclient", "nbval",
           "ipykernel", "IPython")
SITECUSTOMIZE = f"""
import importlib.abc, sys
class _NotOnTheGpuMachine(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not installed on the GPU machine)")
sys.meta_path.insert(0, _NotOnTheGpuMachine())
"""
RUN_FIELDS = {"profile": str, "device": str, "device_name": str, "torch": str, "precision": str, "epochs_run": int,
              "train_seconds": float, "eval_seconds": float, "best_val_acc": (float, type(None)),
              "test_acc": float, "test_acc_no_tta": float, "mean_corruption_acc": float,
              "seconds_to_94_val": type(None), "images_per_second": float, "shared_gpu": bool}


@pytest.fixture
def env(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1"}


def reproduce(env, *args, timeout=300) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def epoch_lines(text: str, spec: str) -> list[str]:
    return re.findall(rf"^\[{re.escape(spec)}\] epoch\s+\d+\s+train loss.*$", text, flags=re.M)


def slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", spec)


@pytest.mark.slow
def test_tiny_run_writes_every_result_then_resumes_without_retraining(tmp_path, env, cifar_dir):
    out, runs = tmp_path / "out", tmp_path / "runs"
    common = [*TINY, "--data-dir", cifar_dir, "--out", out, "--run-root", runs]

    started = time.perf_counter()
    first = reproduce(env, "--profiles", PAPER, FAST_NO_VAL, "--parallel", *common)   # tiny bench included
    print(f"first call (parallel, with bench): {time.perf_counter() - started:.1f} s")
    results = json.loads((out / "results.json").read_text())
    rows = {r["profile"]: r for r in results["runs"]}
    assert list(rows) == [PAPER, FAST_NO_VAL]
    for row in rows.values():
        assert row["status"] == "done", row.get("error")
        for name, kind in RUN_FIELDS.items():
            assert isinstance(row[name], kind), (row["profile"], name, row.get(name))
        assert row["device"] == "cpu" and row["epochs_run"] == 1
        assert row["shared_gpu"] is True                     # --parallel: the two runs overlapped
        assert 0 <= row["test_acc"] <= 1 and 0 <= row["mean_corruption_acc"] <= 1
        assert (row["test_images"], row["corruption_images"]) == (200, 10)
        assert row["images_per_second"] == pytest.approx(row["train_images"] / row["train_seconds"])
        history = pd.read_csv(out / f"history-{slug(row['profile'])}.csv")
        assert len(history) == 1 and row["train_seconds"] == pytest.approx(history["seconds"].sum())
    assert isinstance(rows[PAPER]["best_val_acc"], float) and isinstance(rows[PAPER]["val_acc"], float)
    assert rows[FAST_NO_VAL]["best_val_acc"] is None and rows[FAST_NO_VAL]["val_acc"] is None
    assert results["bench"]["benchmark"] == "bench_train" and results["bench"]["device"] == "cpu"
    for probe in results["probe"]["runs"].values():
        assert probe["seconds_per_step"] > 0 and probe["estimate_s"] > 0 and probe["sync_warnings"] is None
    table = (out / "results.md").read_text()
    assert "| profile | device | torch | epochs | wall time |" in table and "(shared GPU)" in table
    assert all(f"`{spec}`" in table for spec in rows)
    log = (out / "reproduce.log").read_text()
    for spec in rows:
        assert len(epoch_lines(log, spec)) == 1 and len(epoch_lines(first.stdout, spec)) == 1

    started = time.perf_counter()
    second = reproduce(env, "--profiles", PAPER, FAST_NO_VAL, "--no-bench", *common)
    print(f"second call (resume, sequential): {time.perf_counter() - started:.1f} s")
    again = {r["profile"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    for spec, row in rows.items():
        assert not epoch_lines(second.stdout, spec), "a finished run was trained again"
        assert again[spec]["status"] == "done"
        assert (again[spec]["epochs_run"], again[spec]["train_seconds"]) == (row["epochs_run"], row["train_seconds"])
        assert again[spec]["test_acc"] == pytest.approx(row["test_acc"])
        assert again[spec]["shared_gpu"] is True             # its epochs were timed beside the other run
    assert second.stdout.count("Resumed ") == 2
    assert len(epoch_lines((out / "reproduce.log").read_text(), PAPER)) == 1   # the log is appended, not replaced


@pytest.mark.slow
def test_time_budget_skips_runs_that_do_not_fit_and_says_so(tmp_path, env, cifar_dir):
    out, runs = tmp_path / "out", tmp_path / "runs"
    done = reproduce(env, "--profiles", PAPER, *TINY, "--data-dir", cifar_dir, "--out", out, "--run-root", runs,
                     "--time-budget-s", "0.001", "--no-bench")
    assert f"plan: skip {PAPER}" in done.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["runs"] == [] and results["probe"]["planned"] == []
    assert [s["profile"] for s in results["skipped"]] == [PAPER] and results["skipped"][0]["estimate_s"] > 0
    assert f"Skipped: `{PAPER}`" in (out / "results.md").read_text()
    assert not list(runs.rglob("last.pt")) and not list(out.glob("history-*.csv"))


@pytest.mark.slow
def test_a_kill_while_the_second_run_trains_keeps_the_first_run(tmp_path, env, cifar_dir):
    out, runs = tmp_path / "out", tmp_path / "runs"
    slow = f"fast:epochs=50,{SMALL_EVAL}"                  # long enough to be killed mid-training
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--profiles", PAPER, slow, *TINY, "--no-bench",
                             "--data-dir", str(cifar_dir), "--out", str(out), "--run-root", str(runs)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT, env=env)
    watchdog = threading.Timer(240, proc.kill)
    watchdog.start()
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if epoch_lines(line, slow):                       # the second run has finished an epoch: kill now
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=30)
    finally:
        watchdog.cancel()
        proc.kill()
    assert proc.returncode == -signal.SIGKILL, "".join(seen)[-3000:]
    results = json.loads((out / "results.json").read_text())
    first, second = results["runs"]
    assert first["profile"] == PAPER and first["status"] == "done" and isinstance(first["test_acc"], float)
    assert second["profile"] == slow and second["status"] == "training" and second["epochs_run"] >= 1
    assert len(pd.read_csv(out / f"history-{slug(slow)}.csv")) >= 1
    assert f"`{PAPER}` | " in (out / "results.md").read_text()


def test_time_to_94_headline_comes_only_from_a_run_that_had_the_device_alone():
    sys.path.insert(0, str(REPO_ROOT))
    from benchmarks.reproduce import markdown, training_numbers

    history = pd.DataFrame({"seconds": [10.0, 10.0, 10.0], "val_acc": [0.90, 0.941, 0.95]})
    numbers = training_numbers(history, n_train=100)
    assert numbers["seconds_to_94_val"] == 20.0 and numbers["best_val_acc"] == 0.95
    assert numbers["images_per_second"] == pytest.approx(300 / 30)
    row = {"device_name": "GPU", "device": "cuda", "precision": "bf16", "torch": "2", "status": "done"}
    shared = {**row, "profile": "fast", "shared_gpu": True, "seconds_to_94_val": 100.0}
    alone = {**row, "profile": "paper", "shared_gpu": False, "seconds_to_94_val": 200.0}
    table = markdown([shared, alone], [])
    assert "1.7 min (shared GPU)" in table
    assert "Time to 94 % validation accuracy, the device to itself: 3.3 min (`paper`" in table
    assert "No time-to-94 % headline" in markdown([shared], [])


def test_the_plan_keeps_the_runs_that_fit_in_the_order_given():
    sys.path.insert(0, str(REPO_ROOT))
    from benchmarks.probe import plan_runs

    lines = []
    probes = {"a": {"estimate_s": 10.0}, "b": {"estimate_s": 100.0}, "c": {"estimate_s": 5.0}}
    keep, skipped = plan_runs(["a", "b", "c"], probes, budget=50.0, elapsed=20.0, log=lines.append)
    assert keep == ["a", "c"] and [s["profile"] for s in skipped] == ["b"]
    assert "does not fit the 20 s left" in skipped[0]["reason"] and lines[1].startswith("plan: skip b")
    assert plan_runs(["a", "b"], probes, budget=None, elapsed=1e9, log=lines.append) == (["a", "b"], [])
