#!/usr/bin/env python3
"""Train several profiles at an equal budget on the same real subset; compare clean and corrupted test accuracy.

Method: every profile (configs/<name>.yaml, optionally with overrides: `fast:ema_decay=0,cutout=0`) is trained
with utils.train.fit on the same subset of real CIFAR-10 (--subset-per-class, split with the same --seed), for the
same number of epochs (OneCycleLR laid out over them), on the same device; each keeps its own recipe otherwise
(batch, lr, augmentation, EMA, TTA, its val_fraction). The budget is equal in epochs, not wall time (reported).
`best.pt` of each run is evaluated on the full labeled test set with and without the profile's TTA, and under
utils.corruptions (mean accuracy over every corruption and severity, on --corruption-images test images).
Output: a markdown table, then as the LAST line one JSON object with every number.

    python benchmarks/compare_profiles.py --profiles paper fast --subset-per-class 500 --epochs 8 --device cpu
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from benchmarks.scoring import evaluate_checkpoint  # noqa: E402
from benchmarks.spec import parse_spec, spec_folder  # noqa: E402
from utils.config import Config, load_config  # noqa: E402
from utils.dataset import load_cifar10, prepare_splits  # noqa: E402
from utils.runtime.device import decide, device_name, resolve_device  # noqa: E402
from utils.train import fit  # noqa: E402


def spec_config(spec: str, args: argparse.Namespace) -> Config:
    try:
        name, overrides = parse_spec(spec)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    run_dir = Path(args.run_root) / spec_folder(spec)
    return load_config(name, **{**overrides, "subset_per_class": args.subset_per_class, "epochs": args.epochs,
                                "seed": args.seed, "device": args.device, "run_dir": str(run_dir),
                                "resume": False, "test_limit": args.test_limit,
                                "corruption_images": args.corruption_images})


def run_profile(spec: str, args: argparse.Namespace, data) -> dict:
    cfg = spec_config(spec, args)
    for stale in ("last.pt", "best.pt", "history.csv"):
        (cfg.run_path / stale).unlink(missing_ok=True)
    splits = prepare_splits(cfg, data)
    device = resolve_device(cfg.device)
    print(f"\n=== {spec}: {cfg.batch_size} / lr {cfg.lr}, val_fraction {cfg.val_fraction}, auto_augment "
          f"{cfg.auto_augment}, mixup {cfg.mixup_alpha}, cutmix {cfg.cutmix_alpha}, label_smoothing "
          f"{cfg.label_smoothing}, ema {cfg.ema_decay}, cutout {cfg.cutout}, tta {cfg.tta}", flush=True)
    started = time.perf_counter()
    result = fit(cfg, splits, progress=False)
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    plan = decide(device, cfg.amp, cfg.channels_last)
    scores = {**evaluate_checkpoint(result.best_path, cfg, splits, plan), "precision": plan.name}
    hist = result.history
    row = {"profile": spec, "epochs": len(hist), "train_images": len(splits.train_labels),
           "val_images": len(splits.val_labels), "test_images": len(splits.test_labels),
           "batch_size": cfg.batch_size, "lr": cfg.lr, "tta": cfg.tta, "train_seconds": train_seconds,
           "eval_seconds": time.perf_counter() - started, "best_val_acc": result.best_val_acc, **scores,
           "val_acc_by_epoch": [round(float(v), 4) for v in hist["val_acc"].dropna()]}
    print(f"--- {spec}: best val {row['best_val_acc']}, test {row['test_acc']:.4f} (no TTA "
          f"{row['test_acc_no_tta']:.4f}), mean corruption {row['mean_corruption_acc']:.4f}, "
          f"train {train_seconds:.0f} s", flush=True)
    return row


def percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f} %"


def markdown(rows: list[dict]) -> str:
    lines = ["| profile | epochs | train / val images | batch / lr | train time | best val acc | test acc "
             "| test acc, no TTA | mean corruption acc |", "|" + "---|" * 9]
    for r in rows:
        tta = f" (TTA {r['tta']})" if r["tta"] != "none" else ""
        lines.append(f"| {r['profile']} | {r['epochs']} | {r['train_images']:,} / {r['val_images']:,} | "
                     f"{r['batch_size']} / {r['lr']:g} | {r['train_seconds']:.0f} s | {percent(r['best_val_acc'])} | "
                     f"{percent(r['test_acc'])}{tta} | {percent(r['test_acc_no_tta'])} | "
                     f"{percent(r['mean_corruption_acc'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profiles", nargs="+", default=["paper", "fast"], help="name or name:field=value,field=value")
    p.add_argument("--subset-per-class", type=int, default=500, help="training images per class (0: all)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--corruption-images", type=int, default=1000, help="test images per corruption; 0: all")
    p.add_argument("--test-limit", type=int, default=0, help="the first N test images; 0: all 10,000 (tests only)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0: torch's default")
    p.add_argument("--run-root", default=str(REPO_ROOT / "runs" / "compare"), help="RUN_ROOT/<spec>/ (overwritten)")
    args = p.parse_args(argv)
    for spec in args.profiles:
        spec_config(spec, args)   # a bad spec or value fails before any training
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_cifar10(args.data_dir)
    started = time.perf_counter()
    rows = [run_profile(spec, args, data) for spec in args.profiles]
    device = resolve_device(args.device)
    print(f"\nEqual budget: {args.epochs} epochs on {args.subset_per_class or 5000} images/class, seed {args.seed}, "
          f"{device_name(device)} ({device}), {torch.get_num_threads()} threads, torch {torch.__version__}, total "
          f"{(time.perf_counter() - started) / 60:.1f} min. Test: {rows[0]['test_images']:,} labeled test images, "
          "best.pt of each run.\n")
    print(markdown(rows))
    print(json.dumps({"benchmark": "compare_profiles", "subset_per_class": args.subset_per_class,
                      "epochs": args.epochs, "seed": args.seed, "device": str(device),
                      "device_name": device_name(device), "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
