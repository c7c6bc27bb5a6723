"""benchmarks/reproduce.py end to end at tiny CPU scale (20 images per class, 1 epoch, 200 test images, 10 per
corruption set): every result file and field, the four files of --out and nothing else, one log line per epoch,
resuming without retraining, the time budget (a default, a bad value refused), a kill that keeps the finished run,
and a killed --parallel call (SIGTERM or SIGKILL) that leaves none of its run processes behind.

Each call runs in a subprocess that cannot import what the GPU machine lacks (papermill, torchinfo, Jupyter: a
`sitecustomize` on PYTHONPATH refuses them, also in the --parallel children and the bench), with one torch thread:
on 2 cores shared with other jobs, two threads per process made the corruption pass 14x slower.
"""
from __future__ import annotations

import json
import math
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

from benchmarks.reproduce import DEFAULT_TIME_BUDGET_S, OUT_FILES, budget_seconds, main, markdown, training_numbers

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
    assert sorted(p.name for p in out.rglob("*")) == sorted(OUT_FILES)      # a GPU loan returns at most 8 files
    assert results["probe"]["budget_s"] == DEFAULT_TIME_BUDGET_S           # planned to a budget by default
    histories = pd.read_csv(out / "histories.csv")
    assert histories.columns[0] == "profile" and set(histories["profile"]) == set(rows)
    for row in rows.values():
        assert row["status"] == "done", row.get("error")
        for name, kind in RUN_FIELDS.items():
            assert isinstance(row[name], kind), (row["profile"], name, row.get(name))
        assert row["device"] == "cpu" and row["epochs_run"] == 1
        assert row["shared_gpu"] is True                     # --parallel: the two runs overlapped
        assert 0 <= row["test_acc"] <= 1 and 0 <= row["mean_corruption_acc"] <= 1
        assert (row["test_images"], row["corruption_images"]) == (200, 10)
        assert row["images_per_second"] == pytest.approx(row["train_images"] / row["train_seconds"])
        history = histories[histories["profile"] == row["profile"]]
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
    assert not list(runs.rglob("last.pt")) and not (out / "histories.csv").exists()


@pytest.mark.slow
def test_a_kill_while_the_second_run_trains_keeps_the_first_run(tmp_path, env, cifar_dir):
    out, runs = tmp_path / "out", tmp_path / "runs"
    slow = f"fast:epochs=50,{SMALL_EVAL}"                  # long enough to be killed mid-training
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--profiles", PAPER, slow, *TINY, "--no-bench",
                             "--time-budget-s", "inf",                  # a slow CPU must not plan the second run away
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
    histories = pd.read_csv(out / "histories.csv")
    assert (histories["profile"] == slow).sum() >= 1 and (histories["profile"] == PAPER).sum() == 1
    assert f"`{PAPER}` | " in (out / "results.md").read_text()


def test_time_to_94_headline_comes_only_from_a_run_that_had_the_device_alone():
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
    from benchmarks.probe import plan_runs

    lines = []
    probes = {"a": {"estimate_s": 10.0}, "b": {"estimate_s": 100.0}, "c": {"estimate_s": 5.0}}
    keep, skipped = plan_runs(["a", "b", "c"], probes, budget=50.0, elapsed=20.0, log=lines.append)
    assert keep == ["a", "c"] and [s["profile"] for s in skipped] == ["b"]
    assert "does not fit the 20 s left" in skipped[0]["reason"] and lines[1].startswith("plan: skip b")
    assert plan_runs(["a", "b"], probes, budget=None, elapsed=1e9, log=lines.append) == (["a", "b"], [])


@pytest.mark.parametrize("value", ["0", "-30", "nan", "soon"])
def test_a_time_budget_that_is_not_positive_is_refused_naming_the_flag(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as refused:
        main(["--out", str(tmp_path / "out"), "--time-budget-s", value])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert "--time-budget-s" in err and "must be a positive number of seconds" in err and repr(value) in err
    assert not (tmp_path / "out").exists()                    # refused before any work


def test_a_positive_or_infinite_time_budget_is_taken():
    assert budget_seconds("90") == 90.0 and budget_seconds("0.5") == 0.5 and budget_seconds("inf") == math.inf


# --- a killed --parallel call ------------------------------------------------------------------------------------
def proc_stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields from the state on (state, ppid, ..., start time at [19]); None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def children_of(parent: int) -> dict[int, str]:
    """pid -> start time of the processes whose parent is `parent`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := proc_stat(int(entry.name))) and stat[1] == str(parent):
            found[int(entry.name)] = stat[19]
    return found


def running(pid: int, start: str) -> bool:
    stat = proc_stat(pid)
    return stat is not None and stat[19] == start and stat[0] not in ("Z", "X")   # a zombie has ended


def gone_within(processes: dict[int, str], seconds: float) -> list[int]:
    """Wait until none of `processes` (pid -> start time) runs, `seconds` at most; those still running."""
    since = time.perf_counter()
    while any(running(*p) for p in processes.items()) and time.perf_counter() - since < seconds:
        time.sleep(0.05)
    print(f"run processes gone after {time.perf_counter() - since:.2f} s")
    return [pid for pid, start in processes.items() if running(pid, start)]


def end_all(processes: dict[int, str]) -> None:
    """Whatever a test found, it leaves nothing running."""
    for pid, start in processes.items():
        if running(pid, start):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_sigterm_to_a_parallel_call_ends_its_run_processes(tmp_path, env, cifar_dir):
    """SIGTERM reproduce.py once both --parallel runs are training (their next line, and with it the broken pipe
    that would end them, is steps away: longer than the 3 s waited): within 3 s neither run process is left, and
    the call said it ended them."""
    specs = [f"paper:batch_size=32,{SMALL_EVAL}", f"fast:batch_size=32,{SMALL_EVAL}"]
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--profiles", *specs, "--parallel", "--no-bench",
                             "--device", "cpu", "--subset-per-class", "100", "--epochs", "1",
                             "--data-dir", str(cifar_dir), "--out", str(tmp_path / "out"),
                             "--run-root", str(tmp_path / "runs")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT, env=env)
    watchdog = threading.Timer(240, proc.kill)
    watchdog.start()
    children, seen, left = {}, [], []
    try:
        training = set()
        for line in proc.stdout:
            seen.append(line)
            if match := re.match(r"^\[(.+?)\] Training ", line):
                training.add(match[1])
            if training == set(specs):
                break
        children = children_of(proc.pid)
        assert len(children) == 2, "".join(seen)[-3000:]
        proc.send_signal(signal.SIGTERM)
        left = gone_within(children, 3.0)
        seen.append(proc.stdout.read())
        proc.wait(timeout=30)
    finally:
        watchdog.cancel()
        proc.kill()
        end_all(children)
    assert not left, f"still running 3 s after SIGTERM to reproduce.py: {left}"
    assert proc.returncode == 128 + signal.SIGTERM, "".join(seen)[-3000:]
    log = (tmp_path / "out" / "reproduce.log").read_text()
    assert "reproduce: ended 2 child process(es)" in log and "reproduce: stopped by SIGTERM" in log


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_run_process_ends_itself_once_its_caller_is_killed(tmp_path, env, cifar_dir):
    """A --parallel run process whose caller dies by SIGKILL (no cleanup runs) ends itself within 3 s. A shell
    stands in for the caller: the run's output goes straight to this test, so no broken pipe can end it instead."""
    spec = f"paper:batch_size=32,{SMALL_EVAL}"
    launcher = subprocess.Popen(
        ["sh", "-c", '"$@" --_launcher-pid $$ & wait', "sh", sys.executable, str(SCRIPT), "--profiles", spec,
         "--device", "cpu", "--subset-per-class", "100", "--epochs", "1", "--data-dir", str(cifar_dir),
         "--out", str(tmp_path / "out"), "--run-root", str(tmp_path / "runs"), "--_child", spec],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT, env=env)
    watchdog = threading.Timer(120, launcher.kill)
    watchdog.start()
    children, seen, left = {}, [], []
    try:
        for line in launcher.stdout:
            seen.append(line)
            if f"ends itself once reproduce.py pid {launcher.pid} is gone" in line:
                break
        children = children_of(launcher.pid)
        assert len(children) == 1, "".join(seen)[-3000:]
        launcher.kill()
        launcher.wait(timeout=30)
        left = gone_within(children, 3.0)
    finally:
        watchdog.cancel()
        launcher.kill()
        end_all(children)
    assert not left, f"still running 3 s after its caller was killed: {left}"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_the_bench_and_its_pipeline_process_end_themselves_once_their_caller_is_killed(env, cifar_dir):
    """reproduce.py's bench phase after a SIGKILL of reproduce.py: benchmarks/bench_train.py, started with
    `--_launcher-pid` as reproduce.py starts it, and the pipeline process it runs end within 5 s (two links, each
    checked every second); the pipeline's DataLoader workers follow within torch's own parent check (every 5 s).
    A shell stands in for reproduce.py, as above."""
    from torch.utils.data._utils import MP_STATUS_CHECK_INTERVAL
    bench = REPO_ROOT / "benchmarks" / "bench_train.py"
    launcher = subprocess.Popen(
        ["sh", "-c", '"$@" --_launcher-pid $$ & wait', "sh", sys.executable, str(bench), "--device", "cpu",
         "--data-dir", str(cifar_dir), "--steps", "100000", "--train-images", "2000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO_ROOT, env=env)
    chain: dict[int, str] = {}
    workers: dict[int, str] = {}
    left: list[int] = []
    try:
        since = time.perf_counter()
        while time.perf_counter() - since < 120:            # until the paper pipeline's DataLoader workers run
            chain = children_of(launcher.pid)
            chain.update({pid: start for main in list(chain) for pid, start in children_of(main).items()})
            workers = {pid: start for pipe in list(chain) for pid, start in children_of(pipe).items()
                       if pid not in chain}
            if len(chain) == 2 and workers:
                break
            time.sleep(0.2)
        assert len(chain) == 2 and workers, f"bench_train, its pipeline process and workers: {chain} {workers}"
        launcher.kill()
        launcher.wait(timeout=30)
        left = gone_within(chain, 5.0)
        left += gone_within(workers, MP_STATUS_CHECK_INTERVAL + 5.0)
    finally:
        launcher.kill()
        end_all({**chain, **workers})
    assert not left, f"still running after their caller was killed: {left}"
