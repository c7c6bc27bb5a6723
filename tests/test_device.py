"""utils.runtime.device: the device -> precision / layout / compile rules, with mocked GPUs and CPU flags,
plus real checks on this CPU (bf16 autocast output, GradScaler state round trip, sync-free fused step)."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from helpers import top_level_imports
from torch import nn

from utils.runtime import device as P
from utils.runtime.device import DeviceError, ExecutionPlan, check_device, decide, gpu_arch_supported

CUDA = torch.device("cuda")
CPU = torch.device("cpu")
BF16_CPU = {"fpu", "avx2", "avx512f", "avx512_bf16"}
AMX_CPU = {"fpu", "avx2", "avx512f", "amx_bf16", "amx_tile"}
PLAIN_CPU = {"fpu", "avx2", "avx512f", "avx512bw"}          # AVX-512 but no bf16: oneDNN would only emulate
KAGGLE_ARCHES = ["sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]   # no sm_60: P100 dies
L4_BUILD = ["sm_50", "sm_80", "sm_86", "sm_90"]


# --- GPUs by compute capability --------------------------------------------------------------------------

def test_t4_fp16_scaler_fused_compile():
    p = decide(CUDA, compile=True, capability=(7, 5))
    assert (p.name, p.dtype, p.grad_scaler, p.channels_last, p.compile) == ("fp16", torch.float16, True, True, True)
    assert p.optimizer_kwargs() == {"fused": True}
    assert p.memory_format() == torch.channels_last
    assert "fp16" in p.reason and "\n" not in p.reason


def test_t4_is_not_bf16_even_if_torch_says_bf16_is_supported(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)   # what a T4 reports (emulation)
    assert decide(CUDA, capability=(7, 5)).dtype == torch.float16


def test_v100_fp16():
    p = decide(CUDA, capability=(7, 0))
    assert p.name == "fp16" and p.grad_scaler and p.optimizer_kwargs() == {"fused": True}
    check_device(CUDA, capability=(7, 0), arch_list=KAGGLE_ARCHES, device_count=1, name="Tesla V100")


@pytest.mark.parametrize("capability", [(8, 0), (8, 6), (8, 9), (9, 0), (12, 0)])
def test_ampere_and_later_bf16(capability):
    p = decide(CUDA, compile=True, capability=capability)
    assert (p.name, p.grad_scaler, p.channels_last, p.compile) == ("bf16", False, True, True)
    assert p.optimizer_kwargs() == {} and p.make_scaler() is None


def test_l4_runs_on_an_sm86_build():
    check_device(CUDA, capability=(8, 9), arch_list=L4_BUILD, device_count=1, name="NVIDIA L4")
    assert decide(CUDA, capability=(8, 9)).name == "bf16"


def test_h100_bf16_supported():
    check_device(CUDA, capability=(9, 0), arch_list=KAGGLE_ARCHES, device_count=1, name="NVIDIA H100")
    assert decide(CUDA, capability=(9, 0)).name == "bf16"


def test_p100_refused_with_the_t4_fix():
    with pytest.raises(DeviceError) as err:
        check_device(CUDA, capability=(6, 0), arch_list=KAGGLE_ARCHES, device_count=1, name="Tesla P100-PCIE-16GB")
    msg = str(err.value)
    assert "Tesla P100" in msg and "6.0" in msg and "no kernel image" in msg
    assert "Kaggle" in msg and "Accelerator > GPU T4" in msg                    # the fix, where to click


def test_pre_volta_is_fp32_without_compile():
    p = decide(CUDA, compile=True, capability=(6, 1))
    assert (p.name, p.grad_scaler, p.channels_last, p.compile) == ("fp32", False, False, False)
    assert "compile" in p.reason and "7.0" in p.reason
    assert p.optimizer_kwargs() == {} and p.make_scaler() is None


# --- CUDA compatibility (cubin / PTX) --------------------------------------------------------------------

@pytest.mark.parametrize("capability, arches, ok", [
    ((8, 9), ["sm_86"], True),             # same major, lower minor cubin
    ((8, 0), ["sm_86"], False),            # cubin minor above the device's
    ((9, 0), ["sm_80", "sm_86"], False),   # cubins never cross majors
    ((7, 5), ["sm_75"], True),
    ((6, 0), ["sm_61"], False),
    ((6, 1), ["sm_60"], True),
    ((12, 0), ["sm_120"], True),           # three-digit arch: 12.0, not 1.20
    ((10, 0), ["sm_120"], False),
    ((9, 0), ["sm_90a"], True),            # arch-specific: exactly 9.0 only
    ((10, 0), ["sm_90a", "compute_90a"], False),
    ((8, 6), [], False),
    ((8, 6), ["garbage", "sm_x"], False),
])
def test_cubin_rules(capability, arches, ok):
    assert gpu_arch_supported(capability, arches) is ok


@pytest.mark.parametrize("capability, ok", [((6, 0), False), ((7, 0), True), ((7, 5), True), ((9, 0), True),
                                            ((12, 0), True)])
def test_ptx_only_build_is_jit_compiled_forward(capability, ok):
    assert gpu_arch_supported(capability, ["compute_70"]) is ok
    if ok:
        check_device(CUDA, capability=capability, arch_list=["compute_70"], device_count=1, name="GPU")
    else:
        with pytest.raises(DeviceError):
            check_device(CUDA, capability=capability, arch_list=["compute_70"], device_count=1, name="GPU")


# --- missing devices -------------------------------------------------------------------------------------

@pytest.mark.parametrize("device, count", [("cuda", 0), ("cuda:0", 0), ("cuda:3", 1), ("cuda:2", 2), ("mps", 0)])
def test_missing_device_refused_naming_field_and_fix(device, count):
    with pytest.raises(DeviceError) as err:
        check_device(torch.device(device), device_count=count, capability=(8, 0), arch_list=KAGGLE_ARCHES)
    msg = str(err.value)
    assert f'device="{device}"' in msg and 'device="auto"' in msg and "GPU" in msg


def test_existing_devices_pass():
    check_device(torch.device("cuda:1"), device_count=2, capability=(7, 5), arch_list=KAGGLE_ARCHES)  # Kaggle T4 x2
    check_device(torch.device("mps"), device_count=1)
    check_device(CPU)


def test_real_cuda_request_on_a_machine_without_one():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(DeviceError, match='device="auto"'):
        check_device(CUDA)
    with pytest.raises(DeviceError):
        decide(CUDA)                        # no capability mocked: asks torch, so it checks the device first


# --- CPU and MPS -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags", [BF16_CPU, AMX_CPU])
def test_native_bf16_cpu(flags):
    assert P.cpu_has_native_bf16(flags)
    p = decide(CPU, cpu_flags=flags)
    assert (p.name, p.channels_last, p.grad_scaler, p.compile) == ("bf16", True, False, False)
    assert p.optimizer_kwargs() == {} and p.make_scaler() is None


@pytest.mark.parametrize("flags", [PLAIN_CPU, set()])
def test_emulated_bf16_cpu_is_fp32_contiguous(flags, monkeypatch):
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)   # oneDNN's yes must not matter
    assert not P.cpu_has_native_bf16(flags)
    p = decide(CPU, cpu_flags=flags)
    assert (p.name, p.channels_last, p.memory_format()) == ("fp32", False, torch.contiguous_format)


def test_cpu_permissions():
    p = decide(CPU, amp=False, cpu_flags=BF16_CPU)
    assert p.name == "fp32" and p.channels_last and "amp=False" in p.reason     # fp32 NHWC: 115 vs 95 img/s
    p = decide(CPU, channels_last=False, cpu_flags=BF16_CPU)
    assert p.name == "bf16" and not p.channels_last and "channels_last=False" in p.reason
    p = decide(CPU, compile=True, cpu_flags=BF16_CPU)
    assert not p.compile and "compile=True ignored" in p.reason


def test_cuda_permissions():
    p = decide(CUDA, amp=False, capability=(7, 5))
    assert (p.name, p.grad_scaler, p.optimizer_kwargs(), p.make_scaler()) == ("fp32", False, {}, None)
    p = decide(CUDA, channels_last=False, capability=(8, 0))
    assert p.name == "bf16" and p.memory_format() == torch.contiguous_format
    assert not decide(CUDA, capability=(9, 0)).compile                          # compile only when asked


def test_mps_fp32_no_compile():
    p = decide(torch.device("mps"), compile=True)
    assert (p.name, p.channels_last, p.grad_scaler, p.compile) == ("fp32", False, False, False)
    assert "compile=True ignored" in p.reason
    assert isinstance(p.autocast(), type(P.contextlib.nullcontext()))


@pytest.mark.parametrize("kind, capability, dtype, ok", [
    ("cuda", (7, 5), torch.float16, True),
    ("cuda", (7, 5), torch.bfloat16, False),     # Triton's bf16 needs sm_80
    ("cuda", (7, 5), None, True),
    ("cuda", (8, 0), torch.bfloat16, True),
    ("cuda", (6, 0), None, False),
    ("cpu", None, torch.bfloat16, False),
    ("mps", None, None, False),
])
def test_compile_allowed(kind, capability, dtype, ok):
    assert P.compile_allowed(kind, capability, dtype)[0] is ok


def test_cpu_flags_parsing(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 avx512_bf16\n\n"
                    "processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 avx512_bf16 amx_bf16\n")
    monkeypatch.setattr(P, "CPUINFO", info)
    assert P.cpu_flags() == {"fpu", "avx2", "avx512_bf16"}                       # flags every core has
    assert P.cpu_has_native_bf16() and decide(CPU).name == "bf16"
    assert P.device_name(CPU) == "Test CPU 9000"
    monkeypatch.setattr(P, "CPUINFO", tmp_path / "missing")
    assert P.cpu_flags() == set() and decide(CPU).name == "fp32"
    assert P.device_name(CPU)                                                    # lscpu / platform fallback


# --- real checks on this CPU -----------------------------------------------------------------------------

def test_real_cpu_autocast_gives_bf16_conv_output():
    p = decide(CPU)
    assert p.reason and "\n" not in p.reason
    if not P.cpu_has_native_bf16():
        assert p.dtype is None
        pytest.skip("this CPU has no native bf16")
    conv = nn.Conv2d(3, 8, 3, padding=1).to(memory_format=p.memory_format())
    x = torch.randn(2, 3, 8, 8).to(memory_format=p.memory_format())
    with torch.no_grad(), p.autocast():
        y = conv(x)
    assert y.dtype == torch.bfloat16
    with torch.no_grad():
        assert conv(x).dtype == torch.float32                                    # autocast ends with the block


def _fp16_on_cpu() -> ExecutionPlan:
    return ExecutionPlan(CPU, torch.float16, channels_last=False, grad_scaler=True, compile=False, reason="test")


def _scaled_step(scaler: torch.amp.GradScaler, opt: torch.optim.Optimizer, model: nn.Module) -> None:
    loss = model(torch.randn(4, 3)).square().mean()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)


def test_grad_scaler_state_dict_round_trip():
    p = _fp16_on_cpu()
    scaler = p.make_scaler()
    assert isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled()
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    _scaled_step(scaler, opt, model)
    scaler.update(1024.0)                                                        # a non-default state to carry
    state = scaler.state_dict()
    restored = p.make_scaler()
    restored.load_state_dict(state)
    assert restored.state_dict() == state and restored.get_scale() == 1024.0


def test_fused_sgd_step_never_calls_item(monkeypatch):
    """Why optimizer_kwargs() says fused: GradScaler.step reads found_inf.item() (a host sync on CUDA)
    for a plain optimizer and hands found_inf to the kernel for a fused one. Checked on CPU."""
    p = _fp16_on_cpu()
    kwargs = {"fused": True}                      # what p.optimizer_kwargs() returns on CUDA
    assert decide(CUDA, capability=(7, 5)).optimizer_kwargs() == kwargs
    calls = []
    real_item = torch.Tensor.item

    def counting_item(self):
        calls.append(1)
        return real_item(self)

    for fused, expect_items in ((True, False), (False, True)):
        model = nn.Linear(3, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, **({"fused": True} if fused else {}))
        scaler = p.make_scaler()
        monkeypatch.setattr(torch.Tensor, "item", counting_item)
        calls.clear()
        _scaled_step(scaler, opt, model)
        monkeypatch.setattr(torch.Tensor, "item", real_item)
        assert bool(calls) is expect_items, f"fused={fused}: {len(calls)} .item() calls"


# --- module hygiene --------------------------------------------------------------------------------------

def test_imports_only_torch_numpy_and_stdlib():
    roots = top_level_imports(Path(P.__file__))
    assert roots - {"torch", "numpy"} <= set(sys.stdlib_module_names) | {"__future__"}, roots


def test_precision_is_frozen():
    p = decide(CPU, cpu_flags=BF16_CPU)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.compile = True  # type: ignore[misc]
