#!/usr/bin/env python3
"""Train several profiles at an equal budget on the same real subset and compare them on the test set.

Method:
- Every profile (configs/<name>.yaml) is trained with utils.train.fit on the same subset of real
  CIFAR-10 (--subset-per-class, chosen and split 90/10 with the same --seed), for the same number of
  epochs (--epochs; OneCycleLR is laid out over these epochs, so every schedule is complete), on the
  same device. Each profile keeps its own recipe otherwise: batch size, lr, label smoothing, EMA,
  cutout, nesterov, TTA. A different batch size means a different number of optimizer steps per epoch;
  the table reports batch, lr and steps so this is visible. Early stopping stays as each profile sets it.
- The budget is equal in epochs (images seen), not in wall time; wall time is reported.
- Each trained model (best.pt: the best val epoch, EMA weights where the profile uses EMA) is then
  evaluated on the full labeled CIFAR-10 test set (10,000 images) with the profile's own `tta`
  setting; the accuracy without TTA is reported too, so TTA's share of a difference is visible
  (both from one pass over the images plus one over their mirrors, with utils.evaluate's TTA rule).
- A profile may carry overrides for ablations: `fast:ema_decay=0,cutout=0` trains `fast` with those
  fields changed (values are parsed as YAML), and is labelled with the whole spec.

Output: a markdown table (profile, epochs, train images, batch / lr / steps, wall time, best val acc,
test acc), then as the LAST line one JSON object with every number.

Usage:  python benchmarks/compare_profiles.py --subset-per-class 500 --epochs 10 --device cpu
        python benchmarks/compare_profiles.py --profiles paper fast "fast:ema_decay=0" ...
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from utils.config import Config, load_config, pick_device  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from utils.data import DeviceLoader, load_cifar10, prepare_splits  # noqa: E402
from utils.evaluate import accuracy, autocast_for  # noqa: E402
from utils.train import fit, load_trained_model  # noqa: E402
from bench_train import device_name  # noqa: E402  (same folder: the script's own sys.path entry)


def parse_spec(spec: str) -> tuple[str, dict]:
    """'fast:ema_decay=0,cutout=0' -> ('fast', {'ema_decay': 0, 'cutout': 0})."""
    name, _, rest = spec.partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in Config.field_names():
            raise SystemExit(f"bad override {item!r} in {spec!r}: use FIELD=VALUE with a field of utils.config.Config")
        overrides[key] = yaml.safe_load(value)
    return name, overrides


@torch.no_grad()
def test_accuracies(model, splits, device, batch_size: int, amp: bool, channels_last: bool) -> tuple[float, float]:
    """Test accuracy without and with flip TTA, from one pass over the images and one over their mirrors.

    The TTA rule is utils.evaluate.predict_logits': log of the mean of the two softmaxes."""
    loader = DeviceLoader(splits.test_images, splits.test_labels, splits.mean, splits.std, batch_size, device,
                          train=False, channels_last=channels_last)
    model.eval()
    plain, tta = [], []
    for x, _ in loader:
        with autocast_for(device, amp):
            logp = F.log_softmax(model(x).float(), dim=1)
            logp_flip = F.log_softmax(model(x.flip(3)).float(), dim=1)
        plain.append(logp.argmax(1))
        tta.append((torch.logsumexp(torch.stack([logp, logp_flip]), 0) - np.log(2.0)).argmax(1))
    labels = splits.test_labels
    return (accuracy(labels, torch.cat(plain).cpu().numpy()), accuracy(labels, torch.cat(tta).cpu().numpy()))


def run_profile(spec: str, args: argparse.Namespace, data) -> dict:
    name, overrides = parse_spec(spec)
    run_dir = Path(args.run_root) / spec.replace(":", "__").replace(",", "_").replace("=", "-")
    cfg = load_config(name, **{**overrides, "subset_per_class": args.subset_per_class, "epochs": args.epochs,
                               "seed": args.seed, "device": args.device, "run_dir": str(run_dir),
                               "resume": False, "test_limit": 0})
    for stale in ("last.pt", "best.pt", "history.csv"):
        (cfg.run_path / stale).unlink(missing_ok=True)
    splits = prepare_splits(cfg, data)
    device = pick_device(cfg.device)
    print(f"\n=== {spec}: batch {cfg.batch_size}, lr {cfg.lr}, label_smoothing {cfg.label_smoothing}, "
          f"ema_decay {cfg.ema_decay}, cutout {cfg.cutout}, nesterov {cfg.nesterov}, tta {cfg.tta}, "
          f"patience {cfg.patience}", flush=True)
    t0 = time.perf_counter()
    result = fit(cfg, splits, progress=False)
    train_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    model, ckpt = load_trained_model(result.best_path, device)
    channels_last = device.type == "cuda" and cfg.channels_last

    acc_plain, acc_tta = test_accuracies(model, splits, device, cfg.eval_batch_size, cfg.amp, channels_last)
    acc = acc_tta if cfg.tta else acc_plain
    eval_seconds = time.perf_counter() - t0
    hist = result.history
    steps_per_epoch = -(-len(splits.train_labels) // cfg.batch_size)   # DeviceLoader keeps a last partial batch
    row = {"profile": spec, "epochs": int(len(hist)), "train_images": int(len(splits.train_labels)),
           "val_images": int(len(splits.val_labels)), "test_images": int(len(splits.test_labels)),
           "batch_size": cfg.batch_size, "lr": cfg.lr, "steps": int(steps_per_epoch * len(hist)),
           "label_smoothing": cfg.label_smoothing, "ema_decay": cfg.ema_decay, "cutout": cfg.cutout,
           "nesterov": cfg.nesterov, "tta": cfg.tta,
           "train_seconds": train_seconds, "eval_seconds": eval_seconds,
           "best_val_acc": float(result.best_val_acc), "best_epoch": int(ckpt["epoch"]),
           "final_val_acc": float(hist["val_acc"].iloc[-1]), "final_train_acc": float(hist["train_acc"].iloc[-1]),
           "test_acc": acc, "test_acc_no_tta": acc_plain,
           "val_acc_by_epoch": [round(float(v), 4) for v in hist["val_acc"]]}
    print(f"--- {spec}: best val {row['best_val_acc']:.4f} (epoch {row['best_epoch']}), test {acc:.4f} "
          f"(no TTA {acc_plain:.4f}), train {train_seconds:.0f}s, eval {eval_seconds:.0f}s", flush=True)
    return row


def markdown(rows: list[dict]) -> str:
    head = ("| profile | epochs | train images | batch / lr / steps | wall time (train + test eval) "
            "| best val acc | test acc | test acc, no TTA |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r['profile']} | {r['epochs']} | {r['train_images']:,} | "
                     f"{r['batch_size']} / {r['lr']:g} / {r['steps']:,} | "
                     f"{r['train_seconds']:.0f} s + {r['eval_seconds']:.0f} s | {100 * r['best_val_acc']:.2f} % | "
                     f"{100 * r['test_acc']:.2f} %{' (TTA)' if r['tta'] else ''} | {100 * r['test_acc_no_tta']:.2f} % |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--profiles", nargs="+", default=["paper", "fast"],
                   help="profile names, optionally with overrides: name:field=value,field=value")
    p.add_argument("--subset-per-class", type=int, default=500, help="training images per class (0: all)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0: torch's default")
    p.add_argument("--run-root", default=str(REPO_ROOT / "runs" / "compare"),
                   help="checkpoints go to RUN_ROOT/<profile spec>/ (overwritten)")
    args = p.parse_args(argv)
    for spec in args.profiles:
        parse_spec(spec)   # fail on a bad spec before any training
    if args.threads:
        torch.set_num_threads(args.threads)

    data = load_cifar10(args.data_dir)
    t0 = time.perf_counter()
    rows = [run_profile(spec, args, data) for spec in args.profiles]
    total = time.perf_counter() - t0
    device = pick_device(args.device)
    name = device_name(device)
    print()
    print(f"Equal budget: {args.epochs} epochs on {args.subset_per_class} images/class (90 % train), seed {args.seed}, "
          f"device {device} ({name}), {torch.get_num_threads()} threads, total {total / 60:.1f} min. "
          "Test: full labeled CIFAR-10 test set, best.pt of each run.")
    print()
    print(markdown(rows))
    print(json.dumps({"benchmark": "compare_profiles", "subset_per_class": args.subset_per_class,
                      "epochs": args.epochs, "seed": args.seed, "device": str(device), "device_name": name,
                      "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "total_seconds": total, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
