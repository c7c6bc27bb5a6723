"""The runtime decisions, in one place: which device, and which precision, layout and compilation it gets.
(Seeding and RNG state are utils.runtime.rng; whether to draw progress bars, utils.runtime.progress.)

ExecutionPlan: one decision, made once per run.

`decide(device, amp, channels_last, compile)` returns a frozen `ExecutionPlan` whose `reason` is printed
once at the start of a run; training and evaluation read everything from it (`autocast()`,
`memory_format()`, `make_scaler()`, `optimizer_kwargs()`, `compile`) instead of re-testing the device.
`check_device(device)` refuses, before any training, a device that does not exist or that the
installed torch cannot run. The Config's `amp`, `channels_last` and `compile` are permissions, not
orders: False always wins; True is honoured only where the rules below allow it, and the reason
says when a request was turned down.

Rules, and why:
- CUDA, compute capability >= 8.0 (A100, L4, H100, RTX 30xx/40xx): bf16 autocast + channels_last.
  Ampere introduced bf16 tensor cores; bf16 has fp32's exponent range, so no loss scaling is needed.
  Tensor cores consume NHWC natively (cuDNN otherwise transposes around every conv); even in fp32
  these GPUs run convs on TF32 tensor cores, so channels_last stays on with amp=False.
- CUDA 7.x (V100 7.0, T4 7.5): fp16 autocast + `torch.amp.GradScaler` + channels_last.
  Volta/Turing tensor cores do fp16, not bf16: bf16 there is emulated in fp32 and slower than fp16.
  `torch.cuda.is_bf16_supported()` answers True on a T4 (its default counts emulation), so the test
  is the compute capability. fp16's narrow range needs loss scaling; with a plain optimizer
  GradScaler.step reads `found_inf.item()` every step (a host sync that stalls the CUDA queue),
  while for an optimizer with `_step_supports_amp_scaling` (fused SGD/Adam) it hands `found_inf`
  and the scale to the fused kernel and never syncs: hence `optimizer_kwargs() == {"fused": True}`.
  Without autocast (amp=False) Turing runs fp32 on CUDA cores, where NHWC buys nothing: contiguous.
- CUDA below 7.0 (P100 6.0, K80 3.7) and Apple MPS: fp32, contiguous. Pascal has no tensor cores
  (fp16 autocast buys little and needs a scaler); MPS autocast support is partial and
  version-dependent, and fp32 is what its kernels are tuned for.
- CPU: bf16 autocast + channels_last only where the CPU has native bf16 (`avx512_bf16` or `amx_bf16`
  in /proc/cpuinfo's flags), else fp32 contiguous: on a native-bf16 CPU bf16 + channels_last trains the
  project's ResNet faster than fp32 (measured: docs/benchmarks.md, "CPU precision and layout", with the
  device; benchmarks/bench_train.py measures the step). Without the instructions oneDNN emulates bf16 by
  converting to fp32 and back, which is slower than plain fp32; oneDNN's own capability check
  (`torch.ops.mkldnn._is_mkldnn_bf16_supported()`) says yes on AVX-512 CPUs
  that merely emulate, so the flags are read directly. On a native-bf16 CPU channels_last stays on
  with amp=False (faster than contiguous fp32 there, same source).
- torch.compile: only on CUDA >= 7.0, and never with bf16 below 8.0. Inductor emits Triton kernels,
  and Triton supports compute capability >= 7.0 only (torch raises "Found Tesla P100 which is too
  old to be supported by the triton GPU compiler"); Triton's bf16 code needs sm_80 instructions.
  Off on CPU (the compile takes minutes on 2 cores, needs a working C++ toolchain, and students'
  laptops often lack one) and on MPS (no Inductor backend worth using), whatever is asked.

Which GPUs the installed torch can run (CUDA's compatibility rules, `check_device`):
- a cubin `sm_XY` runs on devices of the same major version X and minor >= Y: an sm_86 build runs on
  an L4 (8.9) but not on an A100 (8.0); it never runs across majors (sm_80 does not run on 9.0);
- PTX `compute_XY` is JIT-compiled by the driver for any device with capability >= X.Y;
- arch-specific targets (`sm_90a`, `compute_90a`) run only on exactly X.Y.
Kaggle's current torch ships no sm_60 kernels, so its P100 fails at the first kernel with "CUDA error:
no kernel image is available for execution on the device"; `check_device` refuses it up front and
says to pick the T4 accelerator instead.

Emulation (`CIFAR10_EMULATE`, for CI and for anyone without a GPU): every student trains on a T4, and CI has no
GPU. torch runs fp16 autocast, `GradScaler("cpu")` and fused SGD on the CPU too, so `CIFAR10_EMULATE=t4` makes
`decide` on a CPU return the plan a T4 gets (fed a T4's facts: compute capability 7.5) and `bf16-gpu` the plan of
an A100 / L4 / H100 (8.0), executed on the CPU through the same step, save and restore. The reason says so. It is
refused on any other device (emulation is for CPUs) and for an unknown value. On a CPU without native fp16/bf16
the emulated plans are several times slower than fp32: they are for checking the path, not for training.

This module imports only torch and the standard library: like all of `utils.runtime` it sits below the
student-facing modules and knows nothing of `Config`, so the benchmarks and the GPU kit use it as is.
"""
from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "DeviceError", "ExecutionPlan", "cpu_flags", "cpu_has_native_bf16", "gpu_arch_supported", "check_device",
    "compile_allowed", "decide", "device_name", "pick_device", "resolve_device", "synchronize", "EMULATE_ENV",
    "EMULATED", "emulated_device",
]

CPUINFO = Path("/proc/cpuinfo")
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
GPU_RUNTIME_FIX = ("run on a GPU runtime (Colab: Runtime > Change runtime type > T4 GPU; "
                   "Kaggle: Settings > Accelerator > GPU T4 x2)")
_ARCH = re.compile(r"^(sm|compute)_(\d+)([a-z]?)$")
_NAMES: dict[torch.dtype | None, str] = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}
EMULATE_ENV = "CIFAR10_EMULATE"
# The device classes whose plan can be executed on a CPU: the name the plan line shows, and the compute capability
# the decision is fed. A T4 is 7.5 (NVIDIA's CUDA GPUs list); 8.0 stands for every bf16 GPU (A100 8.0, L4 8.9,
# H100 9.0 get the same plan).
EMULATED: dict[str, tuple[str, tuple[int, int]]] = {"t4": ("T4", (7, 5)), "bf16-gpu": ("bf16 GPU", (8, 0))}


class DeviceError(RuntimeError):
    """A requested device that does not exist or that the installed torch cannot run; the message names the fix."""


@dataclass(frozen=True)
class ExecutionPlan:
    """What a run on `device` uses. `dtype` is the autocast dtype (None: fp32, no autocast)."""
    device: torch.device
    dtype: torch.dtype | None
    channels_last: bool
    grad_scaler: bool
    compile: bool
    reason: str
    fused_optimizer: bool = False      # fused SGD: GradScaler hands it the scale and found_inf, no host sync

    @property
    def name(self) -> str:
        """'bf16', 'fp16' or 'fp32'."""
        return _NAMES[self.dtype]

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """A fresh autocast context for the forward pass (a null context for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def memory_format(self) -> torch.memory_format:
        """torch.channels_last or torch.contiguous_format, for the model and the input batches."""
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def optimizer_kwargs(self) -> dict[str, Any]:
        """{"fused": True} on the GradScaler path of a GPU plan (so GradScaler.step never calls .item()), else {}."""
        return {"fused": True} if self.fused_optimizer else {}

    def make_scaler(self) -> torch.amp.GradScaler | None:
        """A GradScaler for fp16 (loss scaling), None otherwise."""
        return torch.amp.GradScaler(self.device.type) if self.grad_scaler else None


# --- CPU ---------------------------------------------------------------------------------------------------

def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (flags common to every core); empty set where unknown."""
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        return set()
    common: set[str] | None = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):       # x86 / ARM spelling
            flags = set(value.split())
            common = flags if common is None else common & flags
    return common or set()


def cpu_has_native_bf16(flags: set[str] | None = None) -> bool:
    """True when the CPU executes bf16 in hardware (avx512_bf16 or amx_bf16); `flags` None reads /proc/cpuinfo."""
    return bool(NATIVE_BF16_FLAGS & (cpu_flags() if flags is None else set(flags)))


# --- CUDA compatibility ------------------------------------------------------------------------------------

def _parse_arch(entry: str) -> tuple[str, int, int, bool] | None:
    """'sm_86' -> ('sm', 8, 6, False); 'compute_90a' -> ('compute', 9, 0, True); None if unrecognised."""
    m = _ARCH.match(entry.strip().lower())
    if m is None or len(m.group(2)) < 2:
        return None
    digits = m.group(2)
    return m.group(1), int(digits[:-1]), int(digits[-1]), m.group(3) == "a"


def gpu_arch_supported(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a device of `capability` runs a torch built for `arch_list` (torch.cuda.get_arch_list()):
    a cubin sm_XY with the same major and minor <= the device's, or PTX compute_XY <= the device's
    capability; arch-specific 'a' targets only on exactly their capability."""
    major, minor = capability
    for entry in arch_list:
        parsed = _parse_arch(entry)
        if parsed is None:
            continue
        kind, a_major, a_minor, specific = parsed
        if specific:
            ok = (a_major, a_minor) == (major, minor)
        elif kind == "sm":
            ok = a_major == major and a_minor <= minor
        else:
            ok = (a_major, a_minor) <= (major, minor)
        if ok:
            return True
    return False


def _count(device_type: str) -> int:
    if device_type == "cuda":
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device_type == "mps":
        mps = getattr(torch.backends, "mps", None)
        return int(mps is not None and mps.is_available())
    return 1


def check_device(device: torch.device | str, *, capability: tuple[int, int] | None = None,
                 arch_list: list[str] | None = None, device_count: int | None = None,
                 name: str | None = None) -> None:
    """Raise DeviceError when `device` does not exist or the installed torch has no kernels for it.

    Keyword arguments mock what is otherwise asked of torch: `device_count` (CUDA GPUs; for MPS 0/1),
    `capability`, `arch_list` (torch.cuda.get_arch_list()) and `name` of the GPU."""
    device = torch.device(device)
    if device.type not in ("cuda", "mps"):
        return
    count = _count(device.type) if device_count is None else device_count
    if device.type == "mps":
        if count < 1:
            raise DeviceError(f'device="{device}" was requested but MPS is not available (it needs Apple silicon, '
                              f'macOS 12.3+ and an arm64 Python). Fix: set device="auto" (falls back to cpu), '
                              f'or {GPU_RUNTIME_FIX}.')
        return
    index = 0 if device.index is None else device.index
    if index >= count:
        seen = ("no CUDA GPU" if count == 0 else "1 CUDA GPU (cuda:0 only)" if count == 1
                else f"{count} CUDA GPUs (cuda:0 to cuda:{count - 1})")
        raise DeviceError(f'device="{device}" was requested but torch {torch.__version__} sees {seen}. '
                          f'Fix: set device="auto" (uses the GPU if there is one, else mps or cpu), '
                          f'or {GPU_RUNTIME_FIX}.')
    if capability is None:
        capability = torch.cuda.get_device_capability(index)
    if arch_list is None:
        arch_list = torch.cuda.get_arch_list()
    if not arch_list or gpu_arch_supported(capability, arch_list):   # empty list: torch cannot tell, let it try
        return
    if name is None:
        name = torch.cuda.get_device_name(index)
    cc = f"{capability[0]}.{capability[1]}"
    sm = f"sm_{capability[0]}{capability[1]}"
    raise DeviceError(
        f'device="{device}" is a {name} (compute capability {cc}), which torch {torch.__version__} cannot run: '
        f"it ships kernels for {', '.join(arch_list)} and none covers {sm}, so training would fail with "
        f'"CUDA error: no kernel image is available for execution on the device". '
        f"Fix: on Kaggle choose Settings > Accelerator > GPU T4 x2 (Kaggle's torch has no sm_60 kernels for the "
        f"P100); on Colab choose a T4 GPU runtime; elsewhere install a torch build that lists {sm}, "
        f'or set device="cpu".')


# --- the decision ------------------------------------------------------------------------------------------

def compile_allowed(device_type: str, capability: tuple[int, int] | None, dtype: torch.dtype | None
                    ) -> tuple[bool, str]:
    """Whether torch.compile may run for this device and autocast dtype, and why not."""
    if device_type == "cpu":
        return False, "torch.compile is off on cpu (minutes to compile on few cores, needs a C++ toolchain)"
    if device_type != "cuda":
        return False, f"torch.compile is off on {device_type} (Inductor's GPU path is Triton, CUDA only)"
    if capability is None or capability < (7, 0):
        return False, "torch.compile is off below compute capability 7.0 (Triton needs >= 7.0)"
    if dtype == torch.bfloat16 and capability < (8, 0):
        return False, "torch.compile is off for bf16 below compute capability 8.0 (Triton's bf16 needs sm_80)"
    return True, ""


def emulated_device(device: torch.device | str, value: str | None = None) -> str | None:
    """The device class whose plan a CPU run executes ($CIFAR10_EMULATE, or `value`), None when not emulating.
    Raises DeviceError for an unknown value, or for emulation asked on a device other than the CPU."""
    value = (os.environ.get(EMULATE_ENV, "") if value is None else value).strip().lower()
    if not value:
        return None
    if value not in EMULATED:
        raise DeviceError(f"{EMULATE_ENV}={value!r} is not a device class this project emulates; expected one of "
                          f"{', '.join(repr(k) for k in EMULATED)} (or unset it).")
    device = torch.device(device)
    if device.type != "cpu":
        raise DeviceError(f"{EMULATE_ENV}={value!r} with device {device}: emulation executes a GPU's plan on the CPU "
                          f"and is for machines without one. Fix: unset {EMULATE_ENV} to use the {device.type} "
                          'device as it is, or set device="cpu".')
    return value


def decide(device: torch.device | str, amp: bool = True, channels_last: bool = True, compile: bool = False, *,
           capability: tuple[int, int] | None = None, cpu_flags: set[str] | None = None,
           emulate: str | None = None) -> ExecutionPlan:
    """The precision, layout and compilation for `device`; `amp`/`channels_last`/`compile` are permissions.

    `capability` (CUDA) and `cpu_flags` (CPU) mock the hardware; None asks torch / /proc/cpuinfo
    (for CUDA that also runs check_device, so a missing or unsupported GPU raises DeviceError).
    `emulate` (default: $CIFAR10_EMULATE; "" for none) makes a CPU's plan the one a device class of EMULATED gets,
    decided from that class's facts and executed on the CPU."""
    device = torch.device(device)
    emulated = emulated_device(device, emulate)
    if emulated is not None:
        label, emulated_capability = EMULATED[emulated]
        gpu = decide("cuda", amp, channels_last, compile, capability=emulated_capability, emulate="")
        reason = f"emulated {label} plan: " + gpu.reason.split(": ", 1)[1] + ", executed on cpu"
        return replace(gpu, device=device, reason=reason)
    kind = device.type
    dtype: torch.dtype | None = None
    nhwc = False
    scaler = False
    if kind == "cuda":
        if capability is None:
            check_device(device)
            capability = torch.cuda.get_device_capability(device)
        cc = f"{capability[0]}.{capability[1]}"
        where = f"cuda (compute capability {cc})"
        if capability >= (8, 0):
            dtype = torch.bfloat16 if amp else None
            nhwc = True
            why = "bf16 tensor cores" if amp else "amp=False; convs on TF32 tensor cores"
        elif capability >= (7, 0):
            dtype = torch.float16 if amp else None
            scaler = amp
            nhwc = amp
            why = ("fp16 tensor cores, no bf16 ones below 8.0; fused SGD keeps GradScaler free of host syncs"
                   if amp else "amp=False; fp32 runs on CUDA cores")
        else:
            why = "no tensor cores below 7.0"
    elif kind == "cpu":
        native = cpu_has_native_bf16(cpu_flags)      # None: read /proc/cpuinfo
        where = "cpu"
        if native:
            dtype = torch.bfloat16 if amp else None
            nhwc = True
            why = "native bf16 (avx512_bf16/amx_bf16)" if amp else "amp=False; native-bf16 CPU, NHWC oneDNN path"
        else:
            why = "no avx512_bf16/amx_bf16, bf16 would be emulated"
    elif kind == "mps":
        where, why = "mps", "MPS runs fp32"
    else:
        where, why = kind, f"no precision rule for {kind}"
    if nhwc and not channels_last:
        nhwc = False
        why += "; channels_last=False"
    fused = scaler and kind == "cuda"        # fused SGD takes GradScaler's scale and found_inf: no host sync
    can_compile, no_compile = compile_allowed(kind, capability, dtype)
    compiled = compile and can_compile
    parts = [f"{where}: {_NAMES[dtype]}" + (" autocast" if dtype is not None else ""),
             "GradScaler" if scaler else "",
             "fused SGD" if fused else "",
             "channels_last" if nhwc else "contiguous",
             "torch.compile" if compiled else ""]
    reason = " + ".join(p for p in parts if p) + f" ({why})"
    if compile and not compiled:
        reason += f"; compile=True ignored: {no_compile}"
    return ExecutionPlan(device=device, dtype=dtype, channels_last=nhwc, grad_scaler=scaler, compile=compiled,
                         reason=reason, fused_optimizer=fused)


def device_name(device: torch.device | str) -> str:
    """The GPU's name, or the CPU's model name (from /proc/cpuinfo, lscpu or platform)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple {platform.machine() or 'silicon'} GPU (MPS)"
    with contextlib.suppress(OSError):
        for line in CPUINFO.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    lscpu = shutil.which("lscpu")
    if lscpu:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([lscpu], capture_output=True, text=True, timeout=5).stdout
            for line in out.splitlines():
                key, _, value = line.partition(":")
                if key.strip() == "Model name" and value.strip():
                    return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


# --------------------------------------------------------------------------------------------
# Device choice
# --------------------------------------------------------------------------------------------
def pick_device(name: str = "auto") -> torch.device:
    """`auto` picks cuda, then mps, then cpu; any other value is used as given (see `resolve_device`)."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(name: str = "auto") -> torch.device:
    """The device a run uses, refused with the fix when it does not exist or the installed torch cannot run it."""
    device = pick_device(name)
    check_device(device)
    return device


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op elsewhere."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
