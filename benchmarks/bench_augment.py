#!/usr/bin/env python3
"""Images/s on the training device of (a) the project's crop+flip (utils.loader.random_crop/random_flip),
(b) crop+flip + per-image TrivialAugment (utils.augment) and (c) the CustomResNet training step they feed
(utils.train.update_weights with the execution plan utils.runtime.device.decide picks for the device, as training uses).
Input: uint8 batches already on the device (random pixels: every op runs on every image, so cost does not depend
on content); the TrivialAugment draws of all steps go to the device in one copy, as the loader's do. `--warmup`
untimed steps, then `--steps` timed as one block, synchronised only before and after it.
Prints a table, then as the LAST line one JSON object.
Usage: python benchmarks/bench_augment.py [--device auto|cpu|cuda] [--batch-size 128] [--steps N] [--model-steps N]
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from benchmarks.timing import timed  # noqa: E402
from utils.augment import draw_trivial_augment, trivial_augment  # noqa: E402
from utils.loader import random_crop, random_flip  # noqa: E402
from utils.model import CustomResNet  # noqa: E402
from utils.runtime.device import decide, device_name, pick_device  # noqa: E402
from utils.train import update_weights  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:1 ...")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--model-steps", type=int, default=3, help="timed training steps of (c); 0 skips it")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = p.parse_args()
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    bs, total = args.batch_size, args.warmup + args.steps
    x = torch.randint(0, 256, (bs, 3, 32, 32), dtype=torch.uint8, generator=g).to(device)
    draws = {k: v.view(total, bs).to(device) for k, v in draw_trivial_augment(total * bs, g).items()}
    calls = itertools.count()

    def crop_flip() -> torch.Tensor:   # (a): the project's batched crop (pad 4) + flip
        return random_flip(random_crop(x, 4, g), g)

    def crop_flip_ta() -> torch.Tensor:
        i = next(calls) % total
        return trivial_augment(crop_flip(), draws["op"][i], draws["magnitude"][i], draws["sign"][i])

    rates = {}   # images/s of (a), (b), (c); then the share of (b)'s extra time in an augment + train step
    for name, fn in (("crop_flip", crop_flip), ("crop_flip_trivial_augment", crop_flip_ta)):
        seconds, _ = timed(fn, args.warmup, args.steps, device)
        rates[f"{name}_images_per_s"] = args.steps * bs / seconds
    if args.model_steps:
        plan = decide(device)
        model = CustomResNet().to(device, memory_format=plan.memory_format()).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, **plan.optimizer_kwargs())
        criterion, scaler = torch.nn.CrossEntropyLoss(), plan.make_scaler()
        xf = x.float().div(255).contiguous(memory_format=plan.memory_format())
        y = (x[:, 0, 0, 0] % 10).long()

        def step() -> torch.Tensor:   # (c): forward, loss, backward, optimizer step
            return update_weights(model, xf, y, optimizer, criterion, plan, scaler)[0]

        seconds, _ = timed(step, 1, args.model_steps, device)
        rates["model_precision"] = plan.name
        rates["model_train_images_per_s"] = args.model_steps * bs / seconds
        aug_s = 1 / rates["crop_flip_trivial_augment_images_per_s"] - 1 / rates["crop_flip_images_per_s"]
        rates["trivial_augment_share_of_step"] = aug_s / (aug_s + 1 / rates["model_train_images_per_s"])
    name = device_name(device)
    print(f"device {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}, batch {bs}")
    for key, value in rates.items():
        shown = (value if isinstance(value, str) else f"{value:.2%}" if key.endswith("share_of_step")
                 else f"{value:,.1f} images/s")
        print(f"  {key.removesuffix('_images_per_s'):<32} {shown:>20}")
    print(json.dumps({"device": device.type, "device_name": name, "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "batch_size": bs, "steps": args.steps,
                      "warmup": args.warmup, "model_steps": args.model_steps, "numbers": rates}))


if __name__ == "__main__":
    main()
