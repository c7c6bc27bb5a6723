#!/usr/bin/env python3
"""Training and inference throughput of the same CustomResNet fed by two input pipelines.

(a) `paper`:   torchvision-style Dataset (uint8 -> PIL -> RandomCrop(32, padding=4), RandomHorizontalFlip,
               ToTensor, Normalize) batched by a DataLoader with `--workers` processes, each batch copied to the
               device every step; fp32, contiguous tensors, as the paper ran.
(b) `project`: utils.loader.DeviceLoader (uint8 dataset resident on the device, crop + flip on whole batches there)
               with the plan, layout and compilation `utils.runtime.device.decide` picks for the device.
Both use utils.train.update_weights (the step the trainer takes), the same initial weights (checked), the paper's
SGD and the same arrays (utils.dataset.load_cifar10; `--train-images N` takes the first N). Each pipeline runs in a
fresh process. Warm-up steps are untimed; the timed block is synchronised at both ends only. Peak memory: CUDA
max_memory_allocated, or the CPU's peak RSS after the arrays are loaded. The last stdout line is one JSON object.

    python benchmarks/bench_train.py [--device auto|cpu|cuda] [--steps N] [--warmup N] [--workers 2] [--compile]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from benchmarks.timing import timed  # noqa: E402
from utils.dataset import channel_stats, load_cifar10  # noqa: E402
from utils.loader import DeviceLoader  # noqa: E402
from utils.model import CustomResNet  # noqa: E402
from utils.runtime.device import decide, device_name, pick_device  # noqa: E402
from utils.train import update_weights  # noqa: E402

PIPELINES = ("paper", "project")
DEFAULTS = {"cpu": (2, 8, 1, 4), "other": (20, 100, 5, 20)}   # warmup, steps, eval warmup, eval steps


class PILCifar(torch.utils.data.Dataset):
    """torchvision.datasets.CIFAR10's __getitem__ over in-memory uint8 NHWC arrays: PIL image -> transform."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def paper_loader(images, labels, mean, std, batch: int, train: bool, args) -> torch.utils.data.DataLoader:
    from torchvision import transforms as T
    augment = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if train else []
    transform = T.Compose([*augment, T.ToTensor(), T.Normalize(mean, std)])
    return torch.utils.data.DataLoader(PILCifar(images, labels, transform), batch_size=batch, shuffle=train,
                                       drop_last=train, num_workers=args.workers, persistent_workers=args.workers > 0,
                                       generator=torch.Generator().manual_seed(args.seed))


def forever(loader):
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def run_pipeline(args: argparse.Namespace, which: str) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    data = load_cifar10(args.data_dir)
    x_train, y_train = data.train_images[:args.train_images or None], data.train_labels[:args.train_images or None]
    mean, std = channel_stats(x_train)
    clear_refs = Path("/proc/self/clear_refs")
    if device.type == "cpu" and clear_refs.exists():   # the peak RSS from here on: not the pickle loading both share
        clear_refs.write_text("5")
    plan = (decide(device, amp=False, channels_last=False) if which == "paper"
                 else decide(device, True, True, args.compile))
    torch.manual_seed(args.seed)
    model = CustomResNet().to(device, memory_format=plan.memory_format())
    checksum = float(sum(p.detach().double().sum().item() for p in model.parameters()))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4,
                                **plan.optimizer_kwargs())
    criterion, scaler = torch.nn.CrossEntropyLoss(), plan.make_scaler()
    step_model = torch.compile(model) if plan.compile else model
    if which == "project":
        train = DeviceLoader(x_train, y_train, mean, std, args.batch_size, device, train=True, seed=args.seed,
                             channels_last=plan.channels_last)
        test = DeviceLoader(data.test_images, data.test_labels, mean, std, args.batch_size, device,
                            channels_last=plan.channels_last)
    else:
        train = paper_loader(x_train, y_train, mean, std, args.batch_size, True, args)
        test = paper_loader(data.test_images, data.test_labels, mean, std, args.batch_size, False, args)
    batches, eval_batches = forever(train), forever(test)

    def fetch(source):
        x, y = next(source)
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def step():
        return update_weights(step_model, *fetch(batches), optimizer, criterion, plan, scaler)[0]

    @torch.no_grad()
    def infer():
        with plan.autocast():
            return step_model(fetch(eval_batches)[0]).argmax(1)

    model.train()
    train_s, loss = timed(step, args.warmup, args.steps, device)
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    step_model.eval()
    infer_s, _ = timed(infer, args.eval_warmup, args.eval_steps, device)
    return {"pipeline": which, "train_images_per_s": args.steps * args.batch_size / train_s,
            "step_ms": 1000 * train_s / args.steps, "final_loss": float(loss),
            "infer_images_per_s": args.eval_steps * args.batch_size / infer_s, "peak_mem_mb": peak,
            "precision": plan.name, "channels_last": plan.channels_last, "compiled": plan.compile,
            "init_checksum": checksum, "device": str(device), "device_name": device_name(device),
            "threads": torch.get_num_threads(), "train_images_available": len(x_train)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--batch-size", type=int, default=128)
    for name in ("warmup", "steps", "eval-warmup", "eval-steps"):
        p.add_argument(f"--{name}", type=int, default=None, help="default: 2/8/1/4 on CPU, 20/100/5/20 on GPU")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the paper pipeline")
    p.add_argument("--compile", action="store_true", help="allow torch.compile for the project pipeline")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--train-images", type=int, default=0, help="the first N training images; 0: all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--_child", choices=PIPELINES, help=argparse.SUPPRESS)
    p.add_argument("--_launcher-pid", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._launcher_pid:          # started by reproduce.py (or by this script): end once the caller is gone
        from utils.runtime.launch import end_with_launcher
        end_with_launcher(args._launcher_pid)
    kind = "cpu" if pick_device(args.device).type == "cpu" else "other"
    for name, default in zip(("warmup", "steps", "eval_warmup", "eval_steps"), DEFAULTS[kind]):
        setattr(args, name, default if getattr(args, name) is None else getattr(args, name))
    if args._child:
        print(json.dumps(run_pipeline(args, args._child)))
        return 0
    own = list(argv if argv is not None else sys.argv[1:])
    results = {}
    for which in PIPELINES:
        done = subprocess.run([sys.executable, __file__, *own, "--_child", which, "--_launcher-pid", str(os.getpid())],
                              stdout=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the {which} pipeline failed (exit status {done.returncode}); see above")
        results[which] = json.loads(done.stdout.strip().splitlines()[-1])
    a, b = results["paper"], results["project"]
    result = {"benchmark": "bench_train", "device": b["device"], "device_type": b["device"].split(":")[0],
              "device_name": b["device_name"], "torch": torch.__version__, "python": platform.python_version(),
              "threads": b["threads"], "cpu_count": os.cpu_count(), "batch_size": args.batch_size,
              "warmup": args.warmup, "steps": args.steps, "eval_warmup": args.eval_warmup,
              "eval_steps": args.eval_steps, "workers": args.workers, "compile": args.compile,
              "train_images_available": b["train_images_available"],
              "same_init": a["init_checksum"] == b["init_checksum"], "pipelines": results,
              "ratio_train": b["train_images_per_s"] / a["train_images_per_s"],
              "ratio_inference": b["infer_images_per_s"] / a["infer_images_per_s"]}
    print(f"device: {result['device_name']} ({result['device']}), torch {result['torch']}, {result['threads']} "
          f"threads, batch {args.batch_size}, {args.warmup} warm-up + {args.steps} timed steps")
    print("| pipeline | precision | train images/s | inference images/s | peak MB |\n|---|---|---:|---:|---:|")
    for r in (a, b):
        print(f"| {r['pipeline']} | {r['precision']}{' channels_last' if r['channels_last'] else ''} | "
              f"{r['train_images_per_s']:,.1f} | {r['infer_images_per_s']:,.1f} | {r['peak_mem_mb']:,.0f} |")
    print(f"| ratio project/paper | | {result['ratio_train']:.2f}x | {result['ratio_inference']:.2f}x | |")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
