#!/usr/bin/env python3
"""One call that reproduces every headline number of the README, with the evidence in a few small files.

Phases, for each profile (configs/<name>.yaml, or `name:field=value,...` as in benchmarks/compare_profiles.py; a
spec's own overrides win over this script's flags):
  probe     time a few training steps of each profile (utils.train.build_run + train_step; 10 warm-up + 20 timed
            on a GPU, 1 + 2 elsewhere) and estimate its run; on CUDA count the host syncs of a few steps
            (torch.cuda.set_sync_debug_mode("warn")); --compile-probe also times torch.compile (default, max-autotune);
  plan      with --time-budget-s, keep the runs that fit, in the order given; the others are listed as skipped;
  train     utils.train.fit, checkpoints in --run-root/<spec>/, resumed from last.pt (a finished run is only
            re-evaluated); --parallel runs every profile in its own process on the same GPU at once (a 5M-parameter
            model at batch 128 leaves an H100 idle between kernels), and marks their rows shared_gpu;
  evaluate  best.pt: clean validation, the labeled test set with and without the profile's TTA, and the mean
            accuracy under utils.corruptions (on the profile's corruption_images);
  write     --out gets results.json (every number), results.md (the README's table rows), history-<spec>.csv and
            reproduce.log; last, benchmarks/bench_train.py runs on the same device and its JSON goes under "bench".

Why: GPU time is scarce (minutes now and then, on a bare machine without network, and only a few small files come
back), so the whole evidence comes from ONE prepared call, and whatever is finished is on disk at every moment:
results and histories are rewritten whole (utils.files) after every epoch and every run, the log is flushed line by
line, and checkpoints stay in --run-root. A timeout or a kill loses the epoch in progress; the same call resumes.

The GPU command the README quotes (first copy ../shared/data/cifar10-jpg.tar.gz and make_cifar10.py into .device/,
which git ignores):

    mkdir -p $OUT/reproduce && PYTHONUNBUFFERED=1 python .device/make_cifar10.py .device/data && \\
    CIFAR10_DIR=.device/data python benchmarks/reproduce.py --profiles paper fast --device cuda --parallel \\
        --out $OUT/reproduce --run-root .device/runs 2>&1 | tee $OUT/reproduce/console.log

At test scale on a CPU: add `--device cpu --subset-per-class 20 --epochs 1` (tests/test_reproduce.py).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from utils.config import Config, load_config, parse_spec  # noqa: E402
from utils.corruptions import CORRUPTIONS, SEVERITIES  # noqa: E402
from utils.data import load_cifar10, prepare_splits  # noqa: E402
from utils.device import decide, device_name, resolve_device, seed_everything  # noqa: E402
from utils.evaluate import evaluate_checkpoint, tta_views  # noqa: E402
from utils.files import write_json, write_text  # noqa: E402
from utils.train import build_run, fit, optimizer_step  # noqa: E402

EPOCH_LINE = re.compile(r"^epoch\s+\d+\s+train loss")      # utils.train.epoch_line: fit logs one per epoch
ROW_FILE = "reproduce-row.json"          # a run's row beside its checkpoints, rewritten every epoch
PROBE_STEPS = {"cuda": (10, 20), "other": (1, 2)}          # warm-up, timed
SYNC_CHECK_STEPS = 5                     # steps watched by the CUDA sync debug mode (fit syncs every 25)
BENCH_CPU = "--train-images 256 --batch-size 16 --warmup 1 --steps 2 --eval-warmup 1 --eval-steps 1 --workers 0"
EVAL_FIELDS = ("val_acc", "test_acc", "test_acc_no_tta", "mean_corruption_acc", "eval_seconds")


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


def precision_of(cfg: Config):
    return decide(resolve_device(cfg.device), cfg.amp, cfg.channels_last, cfg.compile)


def fmt_time(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f} %"


# --- probe and plan ---------------------------------------------------------------------------------------------
def time_steps(cfg: Config, splits, precision, warmup: int, timed: int, compile_mode: str | None = None,
               sync_steps: int = 0) -> tuple[float, list[str] | None, int]:
    """Seconds per training image over `timed` steps of a throwaway run (fit's loop body: next batch, mixer,
    train_step, schedule, EMA), the host-sync warnings of `sync_steps` more steps on CUDA (with 352 steps per epoch
    on the full data they stay inside the first epoch), and the steps per epoch."""
    device = precision.device
    run = build_run(cfg.replace(epochs=cfg.epochs + warmup + timed + sync_steps), splits, precision)
    if compile_mode:
        run.step_model = torch.compile(run.model, **({} if compile_mode == "default" else {"mode": compile_mode}))

    def epochs():
        for epoch in range(10**9):
            run.train_loader.set_epoch(epoch)
            yield from run.train_loader

    def step(x, y):
        optimizer_step(run, x, y)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    batches = epochs()
    run.model.train()
    for _ in range(warmup):
        step(*next(batches))
    sync()
    start, images = time.perf_counter(), 0
    for _ in range(timed):
        x, y = next(batches)
        step(x, y)
        images += len(y)
    sync()
    per_image, warned = (time.perf_counter() - start) / images, None
    if sync_steps and device.type == "cuda":
        mode = torch.cuda.get_sync_debug_mode()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")    # "called a synchronizing CUDA operation" per sync
            try:
                for _ in range(sync_steps):
                    step(*next(batches))
            finally:
                torch.cuda.set_sync_debug_mode(mode)
        warned = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    return per_image, warned, len(run.train_loader)


def probe(spec: str, cfg: Config, data, compile_probe: bool, log) -> dict:
    """Time a few steps of `cfg`; estimate its run as epochs left x training images x seconds per image, plus the
    validation and final evaluation images (x TTA views) at a third of that each (a forward pass, no backward)."""
    precision = precision_of(cfg)
    cuda = precision.device.type == "cuda"
    seed_everything(cfg.seed, cfg.deterministic)
    splits = prepare_splits(cfg, data)
    warmup, timed = PROBE_STEPS["cuda" if cuda else "other"]
    per_image, warned, steps_per_epoch = time_steps(cfg, splits, precision, warmup, timed,
                                                    sync_steps=SYNC_CHECK_STEPS if cuda else 0)
    history = cfg.run_path / "history.csv"
    epochs_left = max(0, cfg.epochs - (len(pd.read_csv(history)) if history.is_file() else 0))
    n_train, n_val, n_test = len(splits.train_labels), len(splits.val_labels), len(splits.test_labels)
    views = len(tta_views(torch.zeros(1, 3, 8, 8), cfg.tta, torch.zeros(())))
    n_corrupt = min(cfg.corruption_images or n_test, n_test) * (len(CORRUPTIONS) * len(SEVERITIES) + 1)
    eval_images = (epochs_left + 1) * n_val + n_test * (1 + (views if views > 1 else 0)) + n_corrupt * views
    step_s = per_image * cfg.batch_size
    out = {"precision": precision.name, "seconds_per_step": step_s, "steps_per_second": 1 / step_s,
           "steps_per_epoch": steps_per_epoch, "epochs_left": epochs_left, "warmup_steps": warmup, "timed_steps": timed,
           "estimate_s": epochs_left * n_train * per_image + eval_images * per_image / 3,
           "sync_warnings": None if warned is None else len(warned), "sync_messages": sorted(set(warned or []))[:3]}
    if compile_probe:
        out["compile"] = {"eager": 1 / step_s} if cuda else {"skipped": "torch.compile is probed on CUDA only"}
        for mode in ("default", "max-autotune") if cuda else ():
            try:
                out["compile"][mode] = 1 / (cfg.batch_size * time_steps(cfg, splits, precision, warmup, timed, mode)[0])
            except Exception as exc:   # no C compiler for Triton, an Inductor bug: record it and go on
                out["compile"][mode] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
    if cuda:
        torch.cuda.empty_cache()          # the throwaway runs' memory, before the real runs start
    syncs = "" if warned is None else f"; host syncs in {SYNC_CHECK_STEPS} steps: {len(warned)}"
    log(f"probe {spec}: {step_s:.3f} s/step ({1 / per_image:,.0f} img/s, {precision.name}), {steps_per_epoch} "
        f"steps/epoch x {epochs_left} epochs left + evaluation: about {fmt_time(out['estimate_s'])}{syncs}"
        + (f"; steps/s: {out['compile']}" if compile_probe else ""))
    return out


def plan(specs: list[str], probes: dict, budget: float | None, elapsed: float, log) -> tuple[list[str], list[dict]]:
    """The runs that fit the time left, in the order given (estimates add up, also with --parallel: conservative)."""
    keep, skipped, left = [], [], None if budget is None else budget - elapsed
    for spec in specs:
        estimate = probes[spec]["estimate_s"]
        if left is None or estimate <= left:
            keep.append(spec)
            left = None if left is None else left - estimate
            log(f"plan: run {spec} (estimate {fmt_time(estimate)})")
        else:
            skipped.append({"profile": spec, "estimate_s": estimate,
                            "reason": f"does not fit the {max(left, 0):.0f} s left of --time-budget-s {budget:g}"})
            log(f"plan: skip {spec}: estimate {fmt_time(estimate)} {skipped[-1]['reason']}")
    return keep, skipped


# --- train and evaluate -----------------------------------------------------------------------------------------
def training_numbers(hist: pd.DataFrame, n_train: int) -> dict:
    seconds, val = hist["seconds"].astype(float), hist["val_acc"].astype(float)
    train_seconds, reached = float(seconds.sum()), (val >= 0.94).to_numpy().nonzero()[0]
    return {"epochs_run": len(hist), "train_seconds": train_seconds,
            "best_val_acc": None if val.isna().all() else float(val.max()),
            "seconds_to_94_val": float(seconds.cumsum().iloc[reached[0]]) if len(reached) else None,
            "images_per_second": n_train * len(hist) / train_seconds if train_seconds else None}


def train_and_evaluate(spec: str, cfg: Config, data, out: Path, shared: bool, say, refresh=lambda: None) -> dict:
    """fit (resuming), then evaluate best.pt; the run's row and history reach disk before each epoch line."""
    precision, splits = precision_of(cfg), prepare_splits(cfg, data)
    n_test, row_file, history = len(splits.test_labels), cfg.run_path / ROW_FILE, cfg.run_path / "history.csv"
    before = json.loads(row_file.read_text()) if row_file.is_file() else {}      # an earlier call's row
    shared_before = bool(before.get("shared_gpu")) and bool(before.get("epochs_run"))
    epochs_before = len(pd.read_csv(history)) if history.is_file() else 0
    base = {"profile": spec, "device": str(precision.device), "device_name": device_name(precision.device),
            "torch": torch.__version__, "precision": precision.name, "train_images": len(splits.train_labels),
            "test_images": n_test, "corruption_images": min(cfg.corruption_images or n_test, n_test),
            **dict.fromkeys(EVAL_FIELDS)}

    def publish(status: str, **extra) -> dict:
        hist = pd.read_csv(history) if history.is_file() else pd.DataFrame({"seconds": [], "val_acc": []})
        if history.is_file():
            write_text(out / f"history-{slug(spec)}.csv", history.read_text(), "training history")
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
        scores = evaluate_checkpoint(result.best_path, cfg, splits, precision)
        scores.pop("best_epoch")
    except Exception as exc:              # a non-finite loss, out of memory: record it, go on with the next run
        say(f"FAILED: {type(exc).__name__}: {exc}")
        return publish("failed", error=f"{type(exc).__name__}: {exc}")
    row = publish("done", **scores, eval_seconds=time.perf_counter() - started)
    say(f"done: {row['epochs_run']} epochs, best val {pct(row['best_val_acc'])}, test {pct(row['test_acc'])} "
        f"(no TTA {pct(row['test_acc_no_tta'])}), mean corruption {pct(row['mean_corruption_acc'])}, train "
        f"{fmt_time(row['train_seconds'])}, eval {fmt_time(row['eval_seconds'])}")
    return row


def run_children(specs: list[str], argv: list[str], configs: dict, log, refresh) -> None:
    """Every spec in its own process (this script with --_child), all at once, their lines relayed with a prefix;
    results.json is refreshed from their rows every 2 s."""
    flags = [a for a in argv if a != "--parallel"] + (["--_shared"] if len(specs) > 1 else [])
    procs = {spec: subprocess.Popen([sys.executable, __file__, *flags, "--_child", spec], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
             for spec in specs}

    def relay(spec: str, stream) -> None:
        for line in stream:
            log(f"[{spec}] {line.rstrip()}")

    relays = [threading.Thread(target=relay, args=(spec, proc.stdout)) for spec, proc in procs.items()]
    for thread in relays:
        thread.start()
    while any(p.poll() is None for p in procs.values()):
        refresh()
        time.sleep(2)
    for thread in relays:
        thread.join()
    for spec, proc in procs.items():
        row_file = configs[spec].run_path / ROW_FILE
        row = json.loads(row_file.read_text()) if row_file.is_file() else {"profile": spec}
        if proc.returncode and row.get("status") != "done":
            log(f"[{spec}] its process exited with status {proc.returncode}")
            write_json(row_file, {**row, "status": "failed", "error": f"exit status {proc.returncode}"})


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
    """results.json and results.md from the rows this call has written so far (each file replaced whole)."""
    rows = [configs[s].run_path / ROW_FILE for s in state["probe"]["planned"]]
    runs = [json.loads(p.read_text()) for p in rows if p.is_file() and p.stat().st_mtime >= since]
    write_json(out / "results.json", {"runs": runs, **state})
    write_text(out / "results.md", markdown(runs, state["skipped"]), "results table")


def bench(device: torch.device, args: argparse.Namespace, log) -> dict:
    cmd = [sys.executable, str(REPO_ROOT / "benchmarks" / "bench_train.py"), "--device", str(device)]
    cmd += ["--data-dir", args.data_dir] if args.data_dir else []
    cmd += BENCH_CPU.split() if device.type == "cpu" else []          # seconds, not minutes, on a CPU
    log("bench: " + " ".join(cmd))
    done = subprocess.run(cmd, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    for line in lines[:-1]:
        log(f"[bench] {line}")
    try:
        if done.returncode:
            raise ValueError(f"exit status {done.returncode}")
        return json.loads(lines[-1])                  # its last stdout line is one JSON object
    except (IndexError, ValueError) as exc:
        log(f"[bench] failed ({exc}): {done.stderr.strip()[-2000:]}")
        return {"error": str(exc), "stderr_tail": done.stderr[-2000:]}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profiles", nargs="+", default=["paper", "fast"], help="name or name:field=value,field=value")
    p.add_argument("--out", required=True, help="small files only: results.json/.md, histories, the log")
    p.add_argument("--run-root", default=str(REPO_ROOT / "runs" / "reproduce"), help="checkpoints: RUN_ROOT/<spec>/")
    p.add_argument("--device", default="auto")
    p.add_argument("--subset-per-class", type=int, help="training images per class (default: the profile's; 0: all)")
    p.add_argument("--epochs", type=int, help="default: the profile's")
    p.add_argument("--data-dir", help="default: $CIFAR10_DIR, ./data, Kaggle's input")
    p.add_argument("--parallel", action="store_true", help="every profile in its own process, all at once")
    p.add_argument("--time-budget-s", type=float, help="run only the profiles whose estimates fit, in order")
    p.add_argument("--compile-probe", action="store_true", help="also time steps under torch.compile (CUDA)")
    p.add_argument("--no-bench", action="store_true", help="skip benchmarks/bench_train.py at the end")
    p.add_argument("--_child", help=argparse.SUPPRESS)
    p.add_argument("--_shared", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    configs = {spec: spec_config(spec, args) for spec in args.profiles}   # a bad spec fails before any work
    if len({slug(s) for s in args.profiles}) < len(args.profiles):
        p.error("two --profiles specs name the same run folder")
    out = Path(args.out).resolve()
    if args._child:                       # one run of a --parallel call; it stops at its next epoch if orphaned
        caller = os.getppid()

        def say(line: str) -> None:
            if os.getppid() != caller:
                raise SystemExit("the calling reproduce.py is gone: stopping")
            print(line, flush=True)
        train_and_evaluate(args._child, configs[args._child], load_cifar10(args.data_dir), out, args._shared, say)
        return 0

    out.mkdir(parents=True, exist_ok=True)
    log, started, since = make_log(out / "reproduce.log"), time.perf_counter(), time.time()
    try:
        device = resolve_device(args.device)
        log(f"reproduce.py {' '.join(argv)}\n  device {device} ({device_name(device)}), torch {torch.__version__}, "
            f"python {sys.version.split()[0]}, {torch.get_num_threads()} threads, run root "
            f"{Path(args.run_root).resolve()}, out {out}")
        data = load_cifar10(args.data_dir)
        probes = {spec: probe(spec, cfg, data, args.compile_probe, log) for spec, cfg in configs.items()}
        log(f"probe: estimated total {fmt_time(sum(q['estimate_s'] for q in probes.values()))} for {len(probes)} "
            "runs one after the other")
        planned, skipped = plan(args.profiles, probes, args.time_budget_s, time.perf_counter() - started, log)
        state = {"bench": None, "probe": {"runs": probes, "budget_s": args.time_budget_s, "planned": planned},
                 "skipped": skipped}

        def refresh() -> None:
            write_outputs(out, state, configs, since)

        refresh()
        if args.parallel:
            run_children(planned, argv, configs, log, refresh)
        else:
            for spec in planned:
                train_and_evaluate(spec, configs[spec], data, out, False, lambda line, s=spec: log(f"[{s}] {line}"),
                                   refresh)
        over_budget = args.time_budget_s is not None and time.perf_counter() - started >= args.time_budget_s
        state["bench"] = ({"skipped": "--no-bench"} if args.no_bench else
                          {"skipped": "time budget spent"} if over_budget else bench(device, args, log))
        refresh()
        log(f"reproduce: finished in {fmt_time(time.perf_counter() - started)}; results in {out}")
        return 0
    except BaseException:
        log(traceback.format_exc())
        raise


if __name__ == "__main__":
    sys.exit(main())
