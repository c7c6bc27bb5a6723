#!/usr/bin/env python3
"""Training and inference throughput of the same CustomResNet fed by two input pipelines.

What is compared (GitHub issue 3):
  (a) `paper`   - the paper's pipeline: a torchvision-style Dataset whose __getitem__ turns one uint8
                  image into a PIL image and applies RandomCrop(32, padding=4), RandomHorizontalFlip,
                  ToTensor, Normalize; a torch DataLoader with `--workers` worker processes batches
                  them; each batch is moved to the device every step; fp32, contiguous tensors.
  (b) `project` - this project's pipeline: utils.data.DeviceLoader (the uint8 dataset resident on the
                  device, crop + flip done on whole batches there), plus channels_last and bf16 autocast
                  on CUDA (as utils.train.fit does; on CPU both run fp32, contiguous), `--compile` optional.

Method:
- Both pipelines read the same real CIFAR-10 uint8 arrays (utils.data.load_cifar10) held in memory,
  so no disk I/O confounds either; `--train-images` takes the first N training images (0: all 50,000).
  Normalisation uses the same per-channel statistics of those images.
- Same model, same init (torch.manual_seed(--seed) before CustomResNet(); a parameter checksum of the
  initial weights is reported for each pipeline and must match), same batch size, same optimizer
  (the paper's SGD: lr 0.1, momentum 0.9, weight decay 5e-4) and the same loss (cross-entropy).
- A training step is everything: fetch the batch (wait for the workers / augment on device), move it
  to the device, forward, loss, backward, optimizer step. `--warmup` steps (worker start-up, cudnn
  autotuning, torch.compile, allocator growth) are run and not timed; then `--steps` steps are timed
  as one block, with torch.cuda.synchronize() before each clock read on CUDA (no per-step syncs, so
  the GPU keeps its normal asynchronous queue). images/s = steps * batch / seconds.
- Inference: eval mode, torch.no_grad(), over the test images, the same `--eval-warmup` /
  `--eval-steps` rule; (a) a DataLoader with ToTensor + Normalize only, (b) DeviceLoader(train=False),
  TTA off. The classes are predicted (argmax) so the work is not optimised away.
- Each pipeline runs in its own fresh Python process (this script re-invoked with --_child), so peak
  memory, allocator caches, cudnn autotuning and thread pools of one cannot flatter or burden the other.
  Peak memory is taken at the end of the timed training steps: CUDA torch.cuda.max_memory_allocated
  (the dataset on the device included); CPU peak RSS of the process from resource.getrusage
  (ru_maxrss). On Linux the RSS high-water mark is reset (/proc/self/clear_refs) right after the
  CIFAR arrays are loaded, so the pickle-loading transient, identical for both, does not hide the
  pipelines' own memory; the resident arrays stay counted. The largest DataLoader worker's peak RSS
  is reported apart (workers share the parent's pages copy-on-write, so a sum would overcount).
- On a small CPU the workers compete with the compute threads for the same cores: that cost is part
  of what the paper's pipeline is, so it is measured, not avoided. Record the machine load when
  timing (`uptime`); other processes on the cores change both numbers.

Output: a readable table, then as the LAST line exactly one JSON object with every number, the
device name, torch version, threads, batch size and step counts. The ratio fields are (b)/(a).

Usage:  python benchmarks/bench_train.py [--device auto|cpu|cuda] [--steps N] [--warmup N] [--workers 2]
                                         [--batch-size 128] [--compile] [--data-dir DIR]
Defaults take under 2 minutes on 2 CPU cores, even with other jobs on them (CPU: 2 warm-up + 8 timed training steps,
1 + 4 inference batches per pipeline; CUDA: 20 + 100 and 5 + 20).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

PIPELINES = ("paper", "project")
LABELS = {"paper": "(a) paper: PIL transforms + DataLoader, fp32",
          "project": "(b) project: DeviceLoader on device"}
# The paper's optimizer, used by both pipelines.
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4
DEFAULT_COUNTS = {  # (warmup, steps, eval_warmup, eval_steps)
    "cpu": (2, 8, 1, 4),
    "other": (20, 100, 5, 20),
}


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, warmup: int, steps: int, device: torch.device):
    """Run `step` warmup times untimed, then `steps` times timed (device synchronised at both ends).
    Returns (seconds of the timed steps, the last step's result)."""
    result = None
    for _ in range(warmup):
        result = step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        result = step()
    sync(device)
    return time.perf_counter() - t0, result


def forever(loader):
    """Batches of `loader`, epoch after epoch (set_epoch when the loader has it)."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def param_checksum(model: torch.nn.Module) -> float:
    return float(sum(p.detach().double().sum().item() for p in model.parameters()))


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (Linux: write 5 to /proc/self/clear_refs); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_mb(who: int) -> float:
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    kib = resource.getrusage(who).ru_maxrss
    return kib / (1024 * 1024) if sys.platform == "darwin" else kib / 1024


class PILCifar(torch.utils.data.Dataset):
    """torchvision.datasets.CIFAR10's __getitem__ over in-memory uint8 NHWC arrays: PIL image -> transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


# --------------------------------------------------------------------------------------------
# One pipeline, in its own process
# --------------------------------------------------------------------------------------------
def run_pipeline(args: argparse.Namespace, which: str) -> dict:
    from utils.config import pick_device
    from utils.data import DeviceLoader, channel_stats, load_cifar10
    from utils.evaluate import autocast_for
    from utils.model import CustomResNet

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    on_cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = True

    data = load_cifar10(args.data_dir)
    train_x, train_y = data.train_images, data.train_labels
    if args.train_images:
        train_x, train_y = train_x[:args.train_images], train_y[:args.train_images]
    test_x, test_y = data.test_images, data.test_labels
    mean, std = channel_stats(train_x)
    bs, ebs = args.batch_size, args.eval_batch_size or args.batch_size
    if len(train_x) < bs:
        raise SystemExit(f"only {len(train_x)} training images for batch size {bs}; lower --batch-size")

    # Loading the pickles has a transient peak that is the same for both pipelines: measure from here.
    rss_reset = (not on_cuda) and reset_peak_rss()

    torch.manual_seed(args.seed)
    model = CustomResNet().to(device)
    checksum = param_checksum(model)
    project = which == "project"
    channels_last = project and on_cuda
    amp = project and on_cuda
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    criterion = torch.nn.CrossEntropyLoss()
    step_model = torch.compile(model) if (project and args.compile) else model

    loaders = []
    if project:
        train_loader = DeviceLoader(train_x, train_y, mean, std, bs, device, train=True, seed=args.seed,
                                    channels_last=channels_last)
        eval_loader = DeviceLoader(test_x, test_y, mean, std, ebs, device, train=False,
                                   channels_last=channels_last)
    else:
        from torchvision import transforms as T
        train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                              T.Normalize(mean, std)])
        eval_tf = T.Compose([T.ToTensor(), T.Normalize(mean, std)])

        def make(ds, batch, shuffle):
            return torch.utils.data.DataLoader(
                ds, batch_size=batch, shuffle=shuffle, drop_last=shuffle, num_workers=args.workers,
                persistent_workers=args.workers > 0, pin_memory=args.pin_memory and on_cuda,
                generator=torch.Generator().manual_seed(args.seed))
        train_loader = make(PILCifar(train_x, train_y, train_tf), bs, True)
        eval_loader = make(PILCifar(test_x, test_y, eval_tf), ebs, False)
        loaders = [train_loader, eval_loader]

    def to_device(x, y):
        if project:
            return x, y   # already on the device, normalised, in the right memory format
        nb = args.pin_memory and on_cuda
        return x.to(device, non_blocking=nb), y.to(device, non_blocking=nb)

    # --- training steps ---
    model.train()
    batches = forever(train_loader)

    def train_step():
        x, y = to_device(*next(batches))
        with autocast_for(device, amp):
            logits = step_model(x)
            loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    train_seconds, loss = timed(train_step, args.warmup, args.steps, device)
    final_loss = float(loss.item())

    if on_cuda:
        peak = {"peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20,
                "peak_mem_kind": "cuda max_memory_allocated"}
    else:
        peak = {"peak_mem_mb": rss_mb(resource.RUSAGE_SELF),
                "peak_mem_kind": "peak RSS after data loading (ru_maxrss; high-water mark reset via "
                                 "/proc/self/clear_refs once the arrays were loaded)" if rss_reset else
                                 "peak RSS (ru_maxrss, data loading included)"}
    # Shut the training workers down (they are waited for, so RUSAGE_CHILDREN then covers them).
    del batches
    if loaders and args.workers > 0:
        train_loader._iterator = None
        import gc
        gc.collect()
        peak["worker_peak_rss_mb"] = rss_mb(resource.RUSAGE_CHILDREN)

    # --- inference ---
    step_model.eval()
    eval_batches = forever(eval_loader)

    @torch.no_grad()
    def eval_step():
        x, _ = to_device(*next(eval_batches))
        with autocast_for(device, amp):
            return step_model(x).argmax(1)

    eval_seconds, _ = timed(eval_step, args.eval_warmup, args.eval_steps, device)

    return {
        "pipeline": which,
        "train_images_per_s": args.steps * bs / train_seconds,
        "train_seconds": train_seconds,
        "step_ms": 1000 * train_seconds / args.steps,
        "final_loss": final_loss,
        "infer_images_per_s": args.eval_steps * ebs / eval_seconds,
        "infer_seconds": eval_seconds,
        **peak,
        "init_checksum": checksum,
        "amp_bf16": amp,
        "channels_last": channels_last,
        "compiled": bool(project and args.compile),
        "workers": 0 if project else args.workers,
        "train_images_available": int(len(train_x)),
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:1 ...")
    p.add_argument("--data-dir", default=None,
                   help="folder holding cifar-10-python/; default: $CIFAR10_DIR, ./data, Kaggle input")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--eval-batch-size", type=int, default=0, help="0: the training batch size")
    p.add_argument("--warmup", type=int, default=None, help="untimed training steps (default 2 CPU / 20 GPU)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps (default 8 CPU / 100 GPU)")
    p.add_argument("--eval-warmup", type=int, default=None, help="untimed inference batches (1 CPU / 5 GPU)")
    p.add_argument("--eval-steps", type=int, default=None, help="timed inference batches (4 CPU / 20 GPU)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the paper pipeline")
    p.add_argument("--pin-memory", action="store_true", help="pin the paper pipeline's batches (CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model of the project pipeline")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0: torch's default")
    p.add_argument("--train-images", type=int, default=0, help="use the first N training images; 0: all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--_child", choices=PIPELINES, help=argparse.SUPPRESS)
    p.add_argument("--_out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    from utils.config import pick_device
    kind = "cpu" if pick_device(args.device).type == "cpu" else "other"
    for name, default in zip(("warmup", "steps", "eval_warmup", "eval_steps"), DEFAULT_COUNTS[kind]):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.steps < 1 or args.eval_steps < 1 or args.warmup < 0 or args.eval_warmup < 0:
        p.error("--steps and --eval-steps must be >= 1, warm-ups >= 0")
    return args


def child_argv(args: argparse.Namespace) -> list[str]:
    out = ["--device", args.device, "--batch-size", str(args.batch_size),
           "--eval-batch-size", str(args.eval_batch_size), "--warmup", str(args.warmup),
           "--steps", str(args.steps), "--eval-warmup", str(args.eval_warmup),
           "--eval-steps", str(args.eval_steps), "--workers", str(args.workers),
           "--threads", str(args.threads), "--train-images", str(args.train_images), "--seed", str(args.seed)]
    if args.data_dir:
        out += ["--data-dir", args.data_dir]
    out += ["--pin-memory"] * args.pin_memory + ["--compile"] * args.compile
    return out


def run_child(args: argparse.Namespace, which: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{which}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), *child_argv(args), "--_child", which, "--_out", str(out)]
        print(f"running {LABELS[which]} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0 or not out.exists():
            sys.stderr.write(proc.stdout)
            raise SystemExit(f"the {which} pipeline failed (exit status {proc.returncode}); see above")
        return json.loads(out.read_text())


def table(result: dict) -> str:
    a, b = result["pipelines"]["paper"], result["pipelines"]["project"]
    mem = "peak GPU MB" if result["device_type"] == "cuda" else "peak RSS MB"
    rows = [("train images/s", "train_images_per_s", "{:,.1f}"),
            ("train step ms", "step_ms", "{:,.1f}"),
            ("inference images/s", "infer_images_per_s", "{:,.1f}"),
            (mem, "peak_mem_mb", "{:,.0f}"),
            ("worker peak RSS MB", "worker_peak_rss_mb", "{:,.0f}")]
    lines = [f"device: {result['device_name']} ({result['device']}), torch {result['torch']}, "
             f"{result['threads']} threads, batch {result['batch_size']}, "
             f"{result['warmup']} warm-up + {result['steps']} timed steps, "
             f"inference {result['eval_warmup']} + {result['eval_steps']} batches of {result['eval_batch_size']}",
             "",
             f"| {'':<20} | {LABELS['paper']:<45} | {LABELS['project']:<36} | {'(b)/(a)':>8} |",
             f"|{'-' * 22}|{'-' * 47}|{'-' * 38}|{'-' * 10}|"]
    for name, key, fmt in rows:
        va, vb = a.get(key), b.get(key)
        ratio = {"train_images_per_s": result["ratio_train"],
                 "infer_images_per_s": result["ratio_inference"]}.get(key)
        lines.append(f"| {name:<20} | {fmt.format(va) if va is not None else '-':<45} | "
                     f"{fmt.format(vb) if vb is not None else '-':<36} | "
                     f"{(f'{ratio:.2f}x' if ratio is not None else ''):>8} |")
    lines.append("")
    lines.append(f"(a): {result['workers']} DataLoader workers, fp32, contiguous, batches copied to the device each "
                 f"step. (b): amp bf16 {b['amp_bf16']}, channels_last {b['channels_last']}, "
                 f"compile {b['compiled']}.")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._child:
        res = run_pipeline(args, args._child)
        Path(args._out).write_text(json.dumps(res))
        return 0

    results = {which: run_child(args, which) for which in PIPELINES}
    a, b = results["paper"], results["project"]
    if a["init_checksum"] != b["init_checksum"]:
        print(f"WARNING: initial weights differ between pipelines ({a['init_checksum']} vs "
              f"{b['init_checksum']})", file=sys.stderr)
    result = {
        "benchmark": "bench_train",
        "device": b["device"],
        "device_type": b["device"].split(":")[0],
        "device_name": b["device_name"],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": b["threads"],
        "cpu_count": os.cpu_count(),
        "batch_size": args.batch_size,
        "eval_batch_size": args.eval_batch_size or args.batch_size,
        "warmup": args.warmup,
        "steps": args.steps,
        "eval_warmup": args.eval_warmup,
        "eval_steps": args.eval_steps,
        "workers": args.workers,
        "compile": args.compile,
        "train_images_available": b["train_images_available"],
        "same_init": a["init_checksum"] == b["init_checksum"],
        "pipelines": results,
        "ratio_train": b["train_images_per_s"] / a["train_images_per_s"],
        "ratio_inference": b["infer_images_per_s"] / a["infer_images_per_s"],
    }
    print(table(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
