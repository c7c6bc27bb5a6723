"""The probe phase of benchmarks/reproduce.py: how fast a profile's training step runs on this device, what its whole
run should then take, and which runs fit a time budget.

What: `time_steps` times a few steps of a throwaway run (fit's loop body: utils.recipe.build_run + train_batch), and
on CUDA counts the host syncs of a few more (torch.cuda.set_sync_debug_mode("warn")); `probe` turns that into an
estimate of the run (epochs left x training images x seconds per image, plus validation and final evaluation at a
third of that: a forward pass, no backward) and, with `compile_probe`, also times torch.compile (default,
max-autotune); `plan_runs` keeps the runs whose estimates fit, in the order given.

Why apart: it is a measurement of the step (the training itself is reproduce.py's job), and a GPU slot is short,
so the call decides up front what to run rather than being cut off mid-run. The estimates steer the plan only;
the numbers reported come from the runs themselves.
"""
from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from utils.config import Config  # noqa: E402
from utils.corruptions import CORRUPTIONS, SEVERITIES  # noqa: E402
from utils.dataset import prepare_splits  # noqa: E402
from utils.evaluate import tta_views  # noqa: E402
from utils.recipe import build_run  # noqa: E402
from utils.runtime.device import decide, resolve_device  # noqa: E402
from utils.runtime.rng import seed_everything  # noqa: E402
from utils.train import train_batch  # noqa: E402

PROBE_STEPS = {"cuda": (10, 20), "other": (1, 2)}          # warm-up, timed
SYNC_CHECK_STEPS = 5                     # steps watched by the CUDA sync debug mode (fit syncs every 25)


def plan_of(cfg: Config):
    return decide(resolve_device(cfg.device), cfg.amp, cfg.channels_last, cfg.compile)


def fmt_time(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def time_steps(cfg: Config, splits, plan, warmup: int, timed: int, compile_mode: str | None = None,
               sync_steps: int = 0) -> tuple[float, list[str] | None, int]:
    """Seconds per training image over `timed` steps of a throwaway run (fit's loop body: next batch, mixer,
    update_weights, schedule, EMA), the host-sync warnings of `sync_steps` more steps on CUDA (with 352 steps per epoch
    on the full data they stay inside the first epoch), and the steps per epoch."""
    device = plan.device
    run = build_run(cfg.replace(epochs=cfg.epochs + warmup + timed + sync_steps), splits, plan)
    if compile_mode:
        run.step_model = torch.compile(run.model, **({} if compile_mode == "default" else {"mode": compile_mode}))

    def epochs():
        for epoch in range(10**9):
            run.train_loader.set_epoch(epoch)
            yield from run.train_loader

    def step(x, y):
        train_batch(run, x, y)

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
    plan = plan_of(cfg)
    cuda = plan.device.type == "cuda"
    seed_everything(cfg.seed, cfg.deterministic)
    splits = prepare_splits(cfg, data)
    warmup, timed = PROBE_STEPS["cuda" if cuda else "other"]
    per_image, warned, steps_per_epoch = time_steps(cfg, splits, plan, warmup, timed,
                                                    sync_steps=SYNC_CHECK_STEPS if cuda else 0)
    history = cfg.run_path / "history.csv"
    epochs_left = max(0, cfg.epochs - (len(pd.read_csv(history)) if history.is_file() else 0))
    n_train, n_val, n_test = len(splits.train_labels), len(splits.val_labels), len(splits.test_labels)
    views = len(tta_views(torch.zeros(1, 3, 8, 8), cfg.tta, torch.zeros(())))
    n_corrupt = min(cfg.corruption_images or n_test, n_test) * (len(CORRUPTIONS) * len(SEVERITIES) + 1)
    eval_images = (epochs_left + 1) * n_val + n_test * (1 + (views if views > 1 else 0)) + n_corrupt * views
    step_s = per_image * cfg.batch_size
    out = {"precision": plan.name, "seconds_per_step": step_s, "steps_per_second": 1 / step_s,
           "steps_per_epoch": steps_per_epoch, "epochs_left": epochs_left, "warmup_steps": warmup, "timed_steps": timed,
           "estimate_s": epochs_left * n_train * per_image + eval_images * per_image / 3,
           "sync_warnings": None if warned is None else len(warned), "sync_messages": sorted(set(warned or []))[:3]}
    if compile_probe:
        out["compile"] = {"eager": 1 / step_s} if cuda else {"skipped": "torch.compile is probed on CUDA only"}
        for mode in ("default", "max-autotune") if cuda else ():
            try:
                out["compile"][mode] = 1 / (cfg.batch_size * time_steps(cfg, splits, plan, warmup, timed, mode)[0])
            except Exception as exc:   # no C compiler for Triton, an Inductor bug: record it and go on
                out["compile"][mode] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
    if cuda:
        torch.cuda.empty_cache()          # the throwaway runs' memory, before the real runs start
    syncs = "" if warned is None else f"; host syncs in {SYNC_CHECK_STEPS} steps: {len(warned)}"
    log(f"probe {spec}: {step_s:.3f} s/step ({1 / per_image:,.0f} img/s, {plan.name}), {steps_per_epoch} "
        f"steps/epoch x {epochs_left} epochs left + evaluation: about {fmt_time(out['estimate_s'])}{syncs}"
        + (f"; steps/s: {out['compile']}" if compile_probe else ""))
    return out


def plan_runs(specs: list[str], probes: dict, budget: float | None, elapsed: float,
              log) -> tuple[list[str], list[dict]]:
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
