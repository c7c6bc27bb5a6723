#!/usr/bin/env python3
"""Rank recipes cheaply: paired seeds on a fixed subset, scored on held-out training images (never the test batch).

Why (issue 34): a full-scale run of the paper's model costs hours here, so a recipe change is first measured on
a proxy, and only a change that gains beyond two standard errors earns a full-scale confirmation. The proxy is
trusted only while it orders its controls (`paper:epochs=10` below `quick`) as the full-scale runs did
(docs/benchmarks.md, "The recipe proxy").

Method: every recipe (a profile with overrides, 'quick:schedule=linear') trains with utils.train.fit on the same
`--per-class` training images per class, for `--epochs` epochs (its schedule laid out over them), once per seed in
`--seeds`: the seed is the training seed (initialisation, batch order, augmentation), the data are the same for
every run (`--data-seed`). Each run's final weights (the EMA where the recipe keeps one) are scored with the
recipe's TTA on `--holdout-per-class` other training images per class; nothing chooses an epoch. Each recipe is
compared with the first one (the baseline) seed by seed: the mean paired difference and its standard error
(the sample standard deviation of the differences over sqrt(seeds)); `beyond 2 SE` is the verdict.
Runs are saved under --run-root (outside the work tree: a machine may pass to the next session as it was), one
JSON per finished run; a second call skips the finished ones and resumes an unfinished one from its last.pt.

    nice python benchmarks/proxy.py --recipes quick paper:epochs=10 --seeds 0 1 2
Output: a markdown table, then as the LAST line one JSON object with every number.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.spec import parse_spec, spec_folder  # noqa: E402
from utils.config import Config, load_config  # noqa: E402
from utils.dataset import Splits, channel_stats, load_cifar10, per_class_subset  # noqa: E402
from utils.evaluate import predict_log_probs  # noqa: E402
from utils.loader import DeviceLoader  # noqa: E402
from utils.runtime.device import cpu_has_native_bf16, decide, device_name, resolve_device  # noqa: E402
from utils.runtime.files import write_text  # noqa: E402
from utils.train import fit  # noqa: E402

# Sized to the CPU kind, as issue 34 asks: more images where the CPU trains in bf16 (measured sizes and run times:
# docs/benchmarks.md, "The recipe proxy").
PER_CLASS = {"native bf16": 1200, "other": 500}


def proxy_indices(labels: np.ndarray, per_class: int, holdout_per_class: int,
                  data_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices into the TRAINING images: `per_class` per class to train on, and `holdout_per_class` other ones per
    class to score on; the same for every recipe and seed."""
    train = per_class_subset(labels, per_class, data_seed)
    rest = np.setdiff1d(np.arange(len(labels)), train)
    return train, rest[per_class_subset(labels[rest], holdout_per_class, data_seed + 1)]


def proxy_splits(data, per_class: int, holdout_per_class: int, data_seed: int) -> Splits:
    """The proxy's data: the held-out training images sit in the Splits' test slot, which `fit` reads only as its
    end-of-run monitor (val_fraction 0); the labeled test batch is never loaded into them."""
    train, held_out = proxy_indices(data.train_labels, per_class, holdout_per_class, data_seed)
    images, labels = data.train_images, data.train_labels
    mean, std = channel_stats(images[train])
    return Splits(images[train], labels[train], images[:0], labels[:0], images[held_out], labels[held_out],
                  data.classes, mean, std, data.root)


def run_config(spec: str, seed: int, args: argparse.Namespace) -> Config:
    name, overrides = parse_spec(spec)
    scale = f"{args.per_class}-per-class-{args.holdout_per_class}-held-out-{args.epochs}-epochs-data-{args.data_seed}"
    folder = Path(args.run_root) / scale / spec_folder(spec) / f"seed-{seed}"
    return load_config(name, **{**overrides, "epochs": args.epochs, "seed": seed, "val_fraction": 0.0,
                                "subset_per_class": args.per_class, "monitor_every": args.epochs,
                                "device": args.device, "run_dir": str(folder), "members": 1, "member": None})


def train_and_score(spec: str, seed: int, splits: Splits, args: argparse.Namespace) -> dict:
    """One (recipe, seed) run, from its saved result when it finished before."""
    cfg = run_config(spec, seed, args)
    saved = cfg.run_path / "proxy.json"
    if saved.is_file():
        return json.loads(saved.read_text())
    started = time.perf_counter()
    result = fit(cfg, splits, progress=False, log=lambda line: print(f"[{spec} seed {seed}] {line}", flush=True))
    seconds = time.perf_counter() - started
    plan = decide(resolve_device(cfg.device), cfg.amp, cfg.channels_last)
    loader = DeviceLoader(splits.test_images, splits.test_labels, splits.mean, splits.std, cfg.eval_batch_size,
                          plan.device, channels_last=plan.channels_last)
    predicted = predict_log_probs(result.model, loader, cfg.tta, plan, cfg.tta_weights).argmax(1)
    correct = (predicted == loader.labels).cpu().numpy()
    row = {"recipe": spec, "seed": seed, "acc": float(correct.mean()), "train_seconds": round(seconds, 1),
           "epochs_run": len(result.history), "precision": plan.name, "correct": "".join("01"[int(c)] for c in correct)}
    write_text(saved, json.dumps(row), "proxy result", "--run-root")
    print(f"--- {spec} seed {seed}: held-out acc {row['acc']:.4f}, {seconds:.0f} s", flush=True)
    return row


def seed_summary(diffs: list[float]) -> dict[str, float]:
    """Paired differences, one per seed: their mean, its standard error (the sample standard deviation over
    sqrt(seeds); NaN with fewer than two) and whether the mean is beyond two of them."""
    mean = statistics.fmean(diffs) if diffs else float("nan")
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    return {"mean": mean, "se": se, "beyond_2se": bool(len(diffs) > 1 and abs(mean) > 2 * se)}


def compare(rows: list[dict], recipes: list[str], seeds: list[int]) -> list[dict]:
    """Per recipe: mean accuracy and its paired difference to the baseline (recipes[0]) with the standard error."""
    acc = {(r["recipe"], r["seed"]): r["acc"] for r in rows}
    table = []
    for spec in recipes:
        done = [s for s in seeds if (spec, s) in acc and (recipes[0], s) in acc]
        versus = seed_summary([acc[spec, s] - acc[recipes[0], s] for s in done])
        table.append({"recipe": spec, "seeds": len(done),
                      "mean_acc": statistics.fmean(acc[spec, s] for s in done) if done else float("nan"),
                      "accs": [acc[spec, s] for s in done], "diff": versus["mean"], "se": versus["se"],
                      "beyond_2se": spec != recipes[0] and versus["beyond_2se"]})
    return table


def markdown(table: list[dict]) -> str:
    lines = ["| recipe | seeds | held-out acc, mean | per seed | paired diff to baseline | SE | beyond 2 SE |",
             "|---|---|---|---|---|---|---|"]
    for t in table:
        per_seed = ", ".join(f"{100 * a:.2f}" for a in t["accs"])
        diff = "baseline" if t is table[0] else f"{100 * t['diff']:+.2f} pts"
        verdict = "" if t is table[0] else ("**yes**" if t["beyond_2se"] else "no")
        se = "" if t is table[0] else f"{100 * t['se']:.2f}"
        lines.append(f"| `{t['recipe']}` | {t['seeds']} | {100 * t['mean_acc']:.2f} % | {per_seed} | {diff} | {se} | "
                     f"{verdict} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    kind = "native bf16" if cpu_has_native_bf16() else "other"
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipes", nargs="+", default=["quick", "paper:epochs=10"],
                   help="the baseline first; each a profile or profile:field=value,field=value")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--per-class", type=int, default=PER_CLASS[kind], help=f"training images per class {PER_CLASS}")
    p.add_argument("--holdout-per-class", type=int, default=500, help="held-out training images per class")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--run-root", default=str(Path.home() / "cifar10-proxy"), help="RUN_ROOT/<scale>/<recipe>/seed-N/")
    args = p.parse_args(argv)
    if args.per_class + args.holdout_per_class > 5000:
        raise SystemExit(f"--per-class {args.per_class} + --holdout-per-class {args.holdout_per_class}: at most "
                         "5,000 training images per class exist")
    for spec in args.recipes:          # a bad recipe or value fails before any training
        try:
            run_config(spec, args.seeds[0], args)
        except ValueError as err:
            raise SystemExit(str(err)) from None
    splits = proxy_splits(load_cifar10(args.data_dir), args.per_class, args.holdout_per_class, args.data_seed)
    started = time.perf_counter()
    rows = [train_and_score(spec, seed, splits, args) for seed in args.seeds for spec in args.recipes]
    device = resolve_device(args.device)
    table = compare(rows, args.recipes, args.seeds)
    print(f"\nProxy: {args.per_class} images/class ({len(splits.train_labels):,}) for {args.epochs} epochs, seeds "
          f"{args.seeds}, scored on {len(splits.test_labels):,} held-out training images; {device_name(device)}, "
          f"{rows[0]['precision']}, {torch.get_num_threads()} threads, torch {torch.__version__}; this call "
          f"{(time.perf_counter() - started) / 60:.1f} min.\n")
    print(markdown(table))
    print(json.dumps({"benchmark": "proxy", "per_class": args.per_class, "holdout_per_class": args.holdout_per_class,
                      "epochs": args.epochs, "seeds": args.seeds, "device": device_name(device),
                      "torch": torch.__version__, "table": table,
                      "runs": [{k: v for k, v in r.items() if k != "correct"} for r in rows]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
