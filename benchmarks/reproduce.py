#!/usr/bin/env python3
"""One call that reproduces every headline number of the README, with the evidence in a few small files.

Phases, for each profile (configs/<name>.yaml, or `name:field=value,...` as in benchmarks/compare_profiles.py; a
spec's own overrides win over this script's flags):
  probe     (benchmarks/probe.py) time a few training steps of each profile (10 warm-up + 20 timed on a GPU, 1 + 2
            elsewhere) and estimate its run; on CUDA count the host syncs of a few steps; --compile-probe also times
            torch.compile (default, max-autotune);
  plan      keep the runs whose estimates fit --time-budget-s (default DEFAULT_TIME_BUDGET_S, counted from the
            start of this call), in the order given; the others are listed as skipped;
  train     utils.train.fit, checkpoints in --run-root/<spec>/, resumed from last.pt (a finished run is only
            re-evaluated); --parallel runs every profile in its own process on the same GPU at once (a 5M-parameter
            model at batch 128 leaves an H100 idle between kernels), and marks their rows shared_gpu;
  evaluate  best.pt: clean validation, the labeled test set with and without the profile's TTA, and the mean
            accuracy under utils.corruptions (on the profile's corruption_images);
  write     --out gets OUT_FILES, whatever the number of profiles: results.json (every number), results.md (the
            README's results rows), histories.csv (every run's history, a `profile` column first) and reproduce.log;
            last, benchmarks/bench_train.py runs on the same device, within the budget left, and its JSON goes
            under "bench".

Why: GPU time is scarce (a loan is one short command on a bare machine, and only a few small files come back:
docs/reproduction.md#the-gpu-evidence-in-one-call), so the whole evidence comes from ONE prepared call, planned to
fit by default, and whatever is finished is on disk at every moment: results.json, results.md and histories.csv are
rewritten whole (utils.runtime.files), by this process alone, after every epoch and every run (every 2 s with
--parallel), and the log is flushed line by line. A timeout or a kill loses the epoch in progress. Checkpoints stay in
--run-root: a rerun on the same machine resumes from them, but they never come back from a GPU loan, and the next
loan starts bare.

A killed call ends its children: SIGTERM (or Ctrl-C) stops the --parallel runs and the bench (its own process
group) before this process exits with 143 (130); each run process also watches this one (utils.members'
end_with_launcher, --_launcher-pid) and ends itself within about a second once it is gone, SIGKILL included.

The GPU command, and how to run it in one device call: docs/reproduction.md#the-gpu-evidence-in-one-call. At test
scale on a CPU: add `--device cpu --subset-per-class 20 --epochs 1` (tests/test_reproduce.py).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from benchmarks.probe import fmt_time, plan_of, plan_runs, probe  # noqa: E402
from benchmarks.scoring import evaluate_checkpoint  # noqa: E402
from benchmarks.spec import parse_spec  # noqa: E402
from utils.config import Config, load_config  # noqa: E402
from utils.dataset import load_cifar10, prepare_splits  # noqa: E402
from utils.runtime.device import device_name, resolve_device  # noqa: E402
from utils.runtime.files import write_json, write_text  # noqa: E402
from utils.runtime.launch import end_with_launcher  # noqa: E402
from utils.train import fit  # noqa: E402

EPOCH_LINE = re.compile(r"^epoch\s+\d+\s+train loss")      # utils.train.epoch_line: fit logs one per epoch
ROW_FILE = "reproduce-row.json"          # a run's row beside its checkpoints, rewritten every epoch
BENCH_CPU = "--train-images 256 --batch-size 16 --warmup 1 --steps 2 --eval-warmup 1 --eval-steps 1 --workers 0"
EVAL_FIELDS = ("val_acc", "test_acc", "test_acc_no_tta", "mean_corruption_acc", "eval_seconds")
# The GPU command runs with timeout_s 540 (docs/reproduction.md); the other 90 s cover laying out the data, Python's
# start and estimates that fall short.
DEFAULT_TIME_BUDGET_S = 450.0
OUT_FILES = ("results.json", "results.md", "histories.csv", "reproduce.log")   # all that --out gets


class Terminated(SystemExit):
    """SIGTERM reached this call: raised in the main thread, so every `finally` runs and the children end too."""


def on_sigterm(signum, frame) -> None:
    raise Terminated(128 + signum)


def budget_seconds(text: str) -> float:
    """--time-budget-s: seconds > 0, or inf (plan no limit)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0:                    # also NaN
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds (or inf: no limit), not {text!r}")
    return value


def make_log(path: Path | None):
    """A function printing a line to stdout and appending it to `path`, both flushed at once; thread-safe."""
    lock, file = threading.Lock(), open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115

    def log(line: str) -> None:
        with lock:
            print(line, flush=True)
            if file:
                file.write(line + "\n")
                file.flush()
    return log


def slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", spec)


def spec_config(spec: str, args: argparse.Namespace) -> Config:
    """configs/<name>.yaml, then this call's flags, then the spec's own overrides (the most specific wins)."""
    name, overrides = parse_spec(spec)
    given = {"subset_per_class": args.subset_per_class, "epochs": args.epochs, "data_dir": args.data_dir}
    return load_config(name, **{"device": args.device, "run_dir": str(Path(args.run_root).resolve() / slug(spec)),
                                "resume": True, **{k: v for k, v in given.items() if v is not None}, **overrides})


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f} %"


# --- train and evaluate -----------------------------------------------------------------------------------------
def training_numbers(hist: pd.DataFrame, n_train: int) -> dict:
    seconds, val = hist["seconds"].astype(float), hist["val_acc"].astype(float)
    train_seconds, reached = float(seconds.sum()), (val >= 0.94).to_numpy().nonzero()[0]
    return {"epochs_run": len(hist), "train_seconds": train_seconds,
            "best_val_acc": None if val.isna().all() else float(val.max()),
            "seconds_to_94_val": float(seconds.cumsum().iloc[reached[0]]) if len(reached) else None,
            "images_per_second": n_train * len(hist) / train_seconds if train_seconds else None}


def train_and_evaluate(spec: str, cfg: Config, data, shared: bool, say, refresh=lambda: None) -> dict:
    """fit (resuming), then evaluate best.pt; the run's row (and, through `refresh`, --out) reach disk before each
    epoch line."""
    plan, splits = plan_of(cfg), prepare_splits(cfg, data)
    n_test, row_file, history = len(splits.test_labels), cfg.run_path / ROW_FILE, cfg.run_path / "history.csv"
    before = json.loads(row_file.read_text()) if row_file.is_file() else {}      # an earlier call's row
    shared_before = bool(before.get("shared_gpu")) and bool(before.get("epochs_run"))
    epochs_before = len(pd.read_csv(history)) if history.is_file() else 0
    base = {"profile": spec, "device": str(plan.device), "device_name": device_name(plan.device),
            "torch": torch.__version__, "precision": plan.name, "train_images": len(splits.train_labels),
            "test_images": n_test, "corruption_images": min(cfg.corruption_images or n_test, n_test),
            **dict.fromkeys(EVAL_FIELDS)}

    def publish(status: str, **extra) -> dict:
        hist = pd.read_csv(history) if history.is_file() else pd.DataFrame({"seconds": [], "val_acc": []})
        # shared_gpu: some epochs of the history were timed beside another run (in this call or an earlier one)
        row = {**base, "status": status, "shared_gpu": shared_before or (shared and len(hist) > epochs_before),
               **training_numbers(hist, base["train_images"]), **extra}
        write_json(row_file, row, "reproduce row")
        refresh()
        return row

    def on_line(line: str) -> None:
        if EPOCH_LINE.match(line):        # fit has just saved this epoch's history.csv
            publish("training")
        say(line)

    publish("training")
    try:
        result = fit(cfg, splits, progress=False, log=on_line)
        started = time.perf_counter()
        scores = evaluate_checkpoint(result.best_path, cfg, splits, plan)
        scores.pop("best_epoch")
    except Exception as exc:              # a non-finite loss, out of memory: record it, go on with the next run
        say(f"FAILED: {type(exc).__name__}: {exc}")
        return publish("failed", error=f"{type(exc).__name__}: {exc}")
    row = publish("done", **scores, eval_seconds=time.perf_counter() - started)
    say(f"done: {row['epochs_run']} epochs, best val {pct(row['best_val_acc'])}, test {pct(row['test_acc'])} "
        f"(no TTA {pct(row['test_acc_no_tta'])}), mean corruption {pct(row['mean_corruption_acc'])}, train "
        f"{fmt_time(row['train_seconds'])}, eval {fmt_time(row['eval_seconds'])}")
    return row


def end_processes(procs, log, group: bool = False) -> None:
    """SIGTERM each process still running (its whole process group with `group`), SIGKILL what is left after 5 s."""
    alive = [p for p in procs if p.poll() is None]

    def send(proc: subprocess.Popen, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig) if group else proc.send_signal(sig)

    for proc in alive:
        send(proc, signal.SIGTERM)
    for proc in alive:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            send(proc, signal.SIGKILL)
            proc.wait()
    if alive:
        log(f"reproduce: ended {len(alive)} child process(es): pid {', '.join(str(p.pid) for p in alive)}")


def run_children(specs: list[str], argv: list[str], configs: dict, log, refresh) -> None:
    """Every spec in its own process (this script with --_child), all at once, their lines relayed with a prefix;
    --out is refreshed from their rows and histories every 2 s. However this ends (SIGTERM, Ctrl-C, an error),
    the processes still running are ended before it returns."""
    flags = [a for a in argv if a != "--parallel"] + (["--_shared"] if len(specs) > 1 else [])
    flags += ["--_launcher-pid", str(os.getpid())]
    procs: dict[str, subprocess.Popen] = {}
    try:
        for spec in specs:
            procs[spec] = subprocess.Popen([sys.executable, __file__, *flags, "--_child", spec], text=True,
                                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                           env={**os.environ, "PYTHONUNBUFFERED": "1"})

        def relay(spec: str, stream) -> None:
            for line in stream:
                log(f"[{spec}] {line.rstrip()}")

        relays = [threading.Thread(target=relay, args=(spec, proc.stdout), daemon=True)
                  for spec, proc in procs.items()]
        for thread in relays:
            thread.start()
        while any(p.poll() is None for p in procs.values()):
            refresh()
            time.sleep(2)
        for thread in relays:
            thread.join()
    finally:
        end_processes(procs.values(), log)
    for spec, proc in procs.items():
        row_file = configs[spec].run_path / ROW_FILE
        row = json.loads(row_file.read_text()) if row_file.is_file() else {"profile": spec}
        if proc.returncode and row.get("status") != "done":
            log(f"[{spec}] its process exited with status {proc.returncode}")
            write_json(row_file, {**row, "status": "failed", "error": f"exit status {proc.returncode}"})
    refresh()


# --- write ------------------------------------------------------------------------------------------------------
def markdown(runs: list[dict], skipped: list[dict]) -> str:
    """The README's table rows; a time-to-94 % headline only from a run that had the device to itself."""
    lines = ["| profile | device | torch | epochs | wall time | best val acc | test acc (TTA) | test acc, no TTA "
             "| mean corruption acc | time to 94 % val |", "|" + "---|" * 10]
    for r in runs:
        status = "" if r.get("status") == "done" else f" ({r.get('status')})"
        lines.append(f"| `{r['profile']}`{status} | {r.get('device_name')} ({r.get('device')}, {r.get('precision')}) "
                     f"| {r.get('torch')} | {r.get('epochs_run')} | {fmt_time(r.get('train_seconds'))} train + "
                     f"{fmt_time(r.get('eval_seconds'))} eval | {pct(r.get('best_val_acc'))} | "
                     f"{pct(r.get('test_acc'))} | {pct(r.get('test_acc_no_tta'))} | "
                     f"{pct(r.get('mean_corruption_acc'))} | {fmt_time(r.get('seconds_to_94_val'))}"
                     f"{' (shared GPU)' if r.get('shared_gpu') else ''} |")
    alone = [r for r in runs if not r.get("shared_gpu") and r.get("seconds_to_94_val") is not None]
    best = min(alone, key=lambda r: r["seconds_to_94_val"]) if alone else None
    lines += ["", f"Time to 94 % validation accuracy, the device to itself: {fmt_time(best['seconds_to_94_val'])} "
                  f"(`{best['profile']}`, {best['device_name']})." if best else
                  "No time-to-94 % headline: no run that had the device to itself reached 94 % validation accuracy."]
    lines += [f"Skipped: `{s['profile']}` (estimate {fmt_time(s['estimate_s'])}; {s['reason']})." for s in skipped]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, state: dict, configs: dict, since: float) -> None:
    """results.json, results.md and histories.csv from the rows this call has written so far and their runs'
    history.csv (each file replaced whole; histories.csv once a run has one)."""
    planned = [s for s in state["probe"]["planned"]
               if (configs[s].run_path / ROW_FILE).is_file()
               and (configs[s].run_path / ROW_FILE).stat().st_mtime >= since]
    runs = [json.loads((configs[s].run_path / ROW_FILE).read_text()) for s in planned]
    write_json(out / "results.json", {"runs": runs, **state})
    write_text(out / "results.md", markdown(runs, state["skipped"]), "results table")
    histories = [pd.read_csv(path).assign(profile=spec) for spec in planned
                 if (path := configs[spec].run_path / "history.csv").is_file()]
    if histories:
        table = pd.concat(histories, ignore_index=True)
        write_text(out / "histories.csv", table[["profile", *table.columns.drop("profile")]].to_csv(index=False),
                   "training histories")


def bench(device: torch.device, args: argparse.Namespace, log, seconds_left: float) -> dict:
    """benchmarks/bench_train.py in its own process group (it starts a process per pipeline), stopped with all of
    them once `seconds_left` have passed, or when this call ends first (SIGTERM, Ctrl-C; after a SIGKILL, which
    runs no cleanup, it and its pipeline process end themselves: `--_launcher-pid`)."""
    cmd = [sys.executable, str(REPO_ROOT / "benchmarks" / "bench_train.py"), "--device", str(device)]
    cmd += ["--data-dir", args.data_dir] if args.data_dir else []
    cmd += BENCH_CPU.split() if device.type == "cpu" else []          # seconds, not minutes, on a CPU
    cmd += ["--_launcher-pid", str(os.getpid())]          # it (and its pipeline process) ends when this call does
    log("bench: " + " ".join(cmd))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=None if math.isinf(seconds_left) else seconds_left)
    except subprocess.TimeoutExpired:
        end_processes([proc], log, group=True)
        stdout, stderr = proc.communicate()
        log(f"[bench] stopped: the {seconds_left:.0f} s left of --time-budget-s ran out")
        return {"error": f"stopped after {seconds_left:.0f} s: the time budget ran out", "stderr_tail": stderr[-2000:]}
    finally:
        end_processes([proc], log, group=True)        # a no-op once it has exited
    lines = stdout.strip().splitlines()
    for line in lines[:-1]:
        log(f"[bench] {line}")
    try:
        if proc.returncode:
            raise ValueError(f"exit status {proc.returncode}")
        return json.loads(lines[-1])                  # its last stdout line is one JSON object
    except (IndexError, ValueError) as exc:
        log(f"[bench] failed ({exc}): {stderr.strip()[-2000:]}")
        return {"error": str(exc), "stderr_tail": stderr[-2000:]}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profiles", nargs="+", default=["paper", "fast"], help="name or name:field=value,field=value")
    p.add_argument("--out", required=True, help="small files only: " + ", ".join(OUT_FILES))
    p.add_argument("--run-root", default=str(REPO_ROOT / "runs" / "reproduce"), help="checkpoints: RUN_ROOT/<spec>/")
    p.add_argument("--device", default="auto")
    p.add_argument("--subset-per-class", type=int, help="training images per class (default: the profile's; 0: all)")
    p.add_argument("--epochs", type=int, help="default: the profile's")
    p.add_argument("--data-dir", help="default: $CIFAR10_DIR, ./data, Kaggle's input")
    p.add_argument("--parallel", action="store_true", help="every profile in its own process, all at once")
    p.add_argument("--time-budget-s", type=budget_seconds, default=DEFAULT_TIME_BUDGET_S,
                   help="run only the profiles whose estimates fit, in order, counted from this call's start, and the "
                        "bench in what is left (default %(default)g s: one GPU-loan command; inf: no limit)")
    p.add_argument("--compile-probe", action="store_true", help="also time steps under torch.compile (CUDA)")
    p.add_argument("--no-bench", action="store_true", help="skip benchmarks/bench_train.py at the end")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    p.add_argument("--_shared", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--_launcher-pid", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    configs = {spec: spec_config(spec, args) for spec in args.profiles}   # a bad spec fails before any work
    if len({slug(s) for s in args.profiles}) < len(args.profiles):
        p.error("two --profiles specs name the same run folder")
    out = Path(args.out).resolve()
    if args._child:                       # one run of a --parallel call; it ends itself once its caller is gone
        end_with_launcher(args._launcher_pid)
        print(f"pid {os.getpid()}, ends itself once reproduce.py pid {args._launcher_pid} is gone", flush=True)
        train_and_evaluate(args._child, configs[args._child], load_cifar10(args.data_dir), args._shared,
                           lambda line: print(line, flush=True))
        return 0

    out.mkdir(parents=True, exist_ok=True)
    log, started, since = make_log(out / "reproduce.log"), time.perf_counter(), time.time()
    budget = args.time_budget_s
    previous = signal.signal(signal.SIGTERM, on_sigterm) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        device = resolve_device(args.device)
        log(f"reproduce.py {' '.join(argv)}\n  device {device} ({device_name(device)}), torch {torch.__version__}, "
            f"python {sys.version.split()[0]}, {torch.get_num_threads()} threads, run root "
            f"{Path(args.run_root).resolve()}, out {out}")
        data = load_cifar10(args.data_dir)
        probes = {spec: probe(spec, cfg, data, args.compile_probe, log) for spec, cfg in configs.items()}
        log(f"probe: estimated total {fmt_time(sum(q['estimate_s'] for q in probes.values()))} for {len(probes)} "
            "runs one after the other")
        planned, skipped = plan_runs(args.profiles, probes, budget, time.perf_counter() - started, log)
        state = {"bench": None, "probe": {"runs": probes, "budget_s": None if math.isinf(budget) else budget,
                                          "planned": planned}, "skipped": skipped}

        def refresh() -> None:
            write_outputs(out, state, configs, since)

        refresh()
        if args.parallel:
            run_children(planned, argv, configs, log, refresh)
        else:
            for spec in planned:
                train_and_evaluate(spec, configs[spec], data, False, lambda line, s=spec: log(f"[{s}] {line}"),
                                   refresh)
        # Members timing (two ensemble members training one epoch side by side on one GPU vs one alone) goes here:
        # one call whose result goes under state["members"], before the bench.
        left = budget - (time.perf_counter() - started)
        state["bench"] = ({"skipped": "--no-bench"} if args.no_bench else
                          {"skipped": "time budget spent"} if left <= 0 else bench(device, args, log, left))
        refresh()
        log(f"reproduce: finished in {fmt_time(time.perf_counter() - started)}; results in {out}")
        return 0
    except Terminated:
        log(f"reproduce: stopped by SIGTERM after {fmt_time(time.perf_counter() - started)}; what was finished is "
            f"in {out}")
        raise
    except BaseException:
        log(traceback.format_exc())
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
