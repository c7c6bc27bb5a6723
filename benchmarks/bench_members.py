#!/usr/bin/env python3
"""Two ensemble members training side by side on ONE device against one member alone: does a GPU have room for two?

Method: utils.members.train_members, as notebook 03 runs it (a fresh process per member), first with one member on
`device`, then with two members both on `device` (two slots naming the same GPU: CUDA_VISIBLE_DEVICES the same for
both). Each run trains `epochs` epochs of `cfg` in a temporary folder; the numbers are the LAST epoch's seconds from
each member's history.csv (the first includes cuDNN's autotuning), and the wall time of each call (process start
and data loading included). `throughput_gain` = 2 x alone / slowest side-by-side epoch: above 1, two members side by
side train more images per second than one; about 1, the device was already full.

    python benchmarks/bench_members.py --profile paper --device cuda:0 --subset-per-class 1000
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import pandas as pd  # noqa: E402

from utils.config import Config, load_config  # noqa: E402
from utils.members import train_members  # noqa: E402


def bench_members(cfg: Config, device: str = "cuda:0", epochs: int = 2, work_dir: str | Path | None = None,
                  log=print) -> dict:
    """Time `epochs` epochs of one member alone on `device`, then of two members side by side on it; a dict of
    seconds (see the module docstring)."""
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        def run(members: int) -> tuple[float, list[float], int]:
            run_cfg = cfg.replace(epochs=epochs, members=members, member=None, max_epochs_this_call=None,
                                  resume=False, run_dir=str(Path(tmp) / f"{members}-members"))
            started = time.perf_counter()
            train_members(run_cfg, devices=[device] * members, log=log)
            wall = time.perf_counter() - started
            histories = [pd.read_csv(run_cfg.member_path(k) / "history.csv") for k in range(members)]
            return wall, [float(h["seconds"].iloc[-1]) for h in histories], len(histories[0])

        alone_wall, (alone,), done = run(1)
        pair_wall, pair, _ = run(2)
    return {"device": device, "profile": cfg.profile, "epochs": done, "subset_per_class": cfg.subset_per_class,
            "batch_size": cfg.batch_size, "alone_epoch_s": alone, "side_by_side_epoch_s": pair,
            "alone_wall_s": alone_wall, "side_by_side_wall_s": pair_wall,
            "throughput_gain": 2 * alone / max(pair)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--device", default="cuda:0", help="the one device both members share (cuda:N or cpu)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--subset-per-class", type=int, default=0, help="0: all 5,000 per class")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    cfg = load_config(args.profile, subset_per_class=args.subset_per_class, data_dir=args.data_dir)
    print(json.dumps(bench_members(cfg, args.device, args.epochs, log=lambda line: print(line, file=sys.stderr))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
