#!/usr/bin/env python3
"""Which test-time augmentation, measured on a trained model: every mode scored on the same images, paired.

Why (issue 34): TTA costs no training, so its choice can be measured on a full-scale model directly instead of a
proxy. Each mode (`flip`, `flip_shift`, `flip_translate`, with view weights as `flip_translate:2,2,1,1,1,1`) scores
the checkpoint's own held-out split (its 10 % of the training images, rebuilt from its config: `--split val`) or
the labeled test batch (`--split test`, for the confirmation only: choose on val). Each mode is compared with the
first one image by image: the images it gets right that the baseline gets wrong and the reverse, the difference
and its standard error (of the mean per-image difference); `beyond 2 SE` is the verdict.

    python benchmarks/tta.py /path/to/best.pt --modes flip flip_translate flip_translate:2,2,1,1,1,1
Output: a markdown table, then as the LAST line one JSON object with every number.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.scoring import paired  # noqa: E402
from utils.checkpoint import load_trained_model  # noqa: E402
from utils.config import Config  # noqa: E402
from utils.evaluate import checkpoint_splits, predict_with_checkpoint  # noqa: E402
from utils.runtime.device import decide, resolve_device  # noqa: E402


def parse_mode(text: str) -> tuple[str, list[float] | None]:
    """'flip_translate:2,2,1,1,1,1' -> ('flip_translate', [2, 2, 1, 1, 1, 1]); 'flip' -> ('flip', None)."""
    mode, _, weights = text.partition(":")
    return mode, [float(w) for w in weights.split(",")] if weights else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a best.pt")
    parser.add_argument("--modes", nargs="+", default=["flip", "flip_translate", "flip_translate:2,2,1,1,1,1"],
                        help="the baseline first; a tta mode, with :w1,w2,... for view weights")
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    cfg = Config(data_dir=args.data_dir, device=args.device)
    device = resolve_device(cfg.device)
    plan = decide(device, cfg.amp, cfg.channels_last)
    model, ckpt = load_trained_model(args.checkpoint, device)
    splits = checkpoint_splits(ckpt, cfg)
    images, labels = ((splits.val_images, splits.val_labels) if args.split == "val"
                      else (splits.test_images, splits.test_labels))
    if not len(labels):
        parser.error(f"{args.checkpoint}: trained without a validation split; choose with --split test only to "
                     "confirm, never to choose")
    correct = {}
    for text in args.modes:
        mode, weights = parse_mode(text)
        probs = predict_with_checkpoint(model, ckpt, images, device, cfg.eval_batch_size, mode, plan, weights)
        correct[text] = probs.argmax(1) == labels
    baseline = correct[args.modes[0]]
    rows = {text: paired(c, baseline) for text, c in correct.items()}

    print(f"{args.checkpoint}, {args.split} split ({len(labels):,} images), {plan.reason}\n")
    print("| tta | accuracy | gained | lost | vs baseline | SE | beyond 2 SE |\n|---|---|---|---|---|---|---|")
    for text, r in rows.items():
        print(f"| {text} | {r['acc']:.2%} | {r['gained']} | {r['lost']} | {r['diff'] * 100:+.2f} | "
              f"{r['se'] * 100:.2f} | {'yes' if r['beyond_2se'] else 'no'} |")
    print(json.dumps({"checkpoint": str(args.checkpoint), "split": args.split, "images": len(labels),
                      "plan": plan.reason, "modes": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
