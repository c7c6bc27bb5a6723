#!/usr/bin/env python3
"""One model against the average of two or three: ensemble members measured at the recipe proxy's scale.

Why (issue 35): `leaderboard` trained two members because peers reported that it pays; here it is measured. A
member is one of the proxy's runs (benchmarks/proxy.py: the same training images, the seed is the member's
training seed), so the runs the proxy trained are reused and missing ones are trained the same way.

Method: for each seed s of --seeds (N of them), the ensemble of k members is seeds s, s+1, ... (k of them, wrapping
round), its probabilities the mean of theirs (utils.ensemble's rule), each with the recipe's TTA; it is scored on
the proxy's held-out training images, clean and as a shifted copy (benchmarks.self_training.shifted_copy: one
corruption per image, --severity), and compared with member s alone: the mean over s of the paired differences and
their standard error, as the proxy compares recipes. Cost: k trainings (the members' measured seconds).

    python benchmarks/members_proxy.py --recipe quick --seeds 0 1 2 --per-class 500
Output: a markdown table, then as the LAST line one JSON object with every number.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.proxy import PER_CLASS, proxy_splits, run_config, seed_summary, train_and_score  # noqa: E402
from benchmarks.self_training import shifted_copy  # noqa: E402
from utils.checkpoint import load_trained_model  # noqa: E402
from utils.dataset import load_cifar10  # noqa: E402
from utils.evaluate import predict_proba  # noqa: E402
from utils.runtime.device import cpu_has_native_bf16, decide, device_name, resolve_device  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    kind = "native bf16" if cpu_has_native_bf16() else "other"
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default="quick", help="a profile or profile:field=value,field=value")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="the members' training seeds")
    p.add_argument("--per-class", type=int, default=PER_CLASS[kind], help=f"training images per class {PER_CLASS}")
    p.add_argument("--holdout-per-class", type=int, default=500)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--severity", type=int, default=3, choices=range(1, 6))
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--run-root", default=str(Path.home() / "cifar10-proxy"), help="the proxy's run root")
    args = p.parse_args(argv)
    if len(args.seeds) < 2:
        p.error("--seeds: at least two, one per member")
    splits = proxy_splits(load_cifar10(args.data_dir), args.per_class, args.holdout_per_class, args.data_seed)
    runs = {s: train_and_score(args.recipe, s, splits, args) for s in args.seeds}
    cfg = run_config(args.recipe, args.seeds[0], args)
    plan = decide(resolve_device(cfg.device), cfg.amp, cfg.channels_last)
    views = {"clean": splits.test_images, "shifted": shifted_copy(splits.test_images, args.severity, args.data_seed)}
    probs = {}                                                   # (seed, view) -> (n, 10)
    for s in args.seeds:
        model, _ = load_trained_model(run_config(args.recipe, s, args).run_path / "best.pt", plan.device)
        for view, images in views.items():
            probs[s, view] = predict_proba(model, images, splits.mean, splits.std, plan.device,
                                           cfg.eval_batch_size, cfg.tta, plan, cfg.tta_weights)

    def accuracy(members: list[int], view: str) -> float:
        mean = np.mean([probs[s, view] for s in members], axis=0)
        return float((mean.argmax(1) == splits.test_labels).mean())

    rows = []
    for k in range(1, len(args.seeds) + 1):
        row = {"members": k, "train_seconds": round(sum(runs[s]["train_seconds"] for s in args.seeds[:k]), 1)}
        ensembles = [[args.seeds[(i + j) % len(args.seeds)] for j in range(k)] for i in range(len(args.seeds))]
        for view in views:
            accs = [accuracy(members, view) for members in ensembles]
            row[view] = {"accs": accs, "mean_acc": statistics.fmean(accs),
                         "vs_one": seed_summary([a - accuracy(m[:1], view) for a, m in zip(accs, ensembles)])}
        rows.append(row)

    print(f"\nMembers at the proxy's scale: {args.recipe}, {args.per_class} images/class for {args.epochs} epochs, "
          f"seeds {args.seeds}, scored on {len(splits.test_labels):,} held-out training images (shifted: one "
          f"corruption each, severity {args.severity}); {device_name(plan.device)}, {plan.name}, torch "
          f"{torch.__version__}.\n")
    print("| members | clean acc, mean | vs one, clean (SE) | shifted acc, mean | vs one, shifted (SE) | beyond 2 SE "
          "(clean / shifted) | training seconds |\n|---|---|---|---|---|---|---|")
    for r in rows:
        c, s = r["clean"], r["shifted"]
        verdict = " / ".join("yes" if v["vs_one"]["beyond_2se"] else "no" for v in (c, s))
        print(f"| {r['members']} | {100 * c['mean_acc']:.2f} % | {100 * c['vs_one']['mean']:+.2f} pts "
              f"({100 * c['vs_one']['se']:.2f}) | {100 * s['mean_acc']:.2f} % | {100 * s['vs_one']['mean']:+.2f} pts "
              f"({100 * s['vs_one']['se']:.2f}) | {verdict} | {r['train_seconds']:,.0f} |")
    print(json.dumps({"benchmark": "members_proxy", "recipe": args.recipe, "per_class": args.per_class,
                      "holdout_per_class": args.holdout_per_class, "epochs": args.epochs, "seeds": args.seeds,
                      "severity": args.severity, "device": device_name(plan.device), "precision": plan.name,
                      "torch": torch.__version__, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
