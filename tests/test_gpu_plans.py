"""The plans a T4 and a bf16 GPU get, executed on the CPU ($CIFAR10_EMULATE, utils.runtime.device): through the
project's own decision, step (train_batch), save and restore. torch runs fp16 autocast, GradScaler("cpu") and fused
SGD on the CPU, so the Python-level path every student's T4 runs is the one tested here; beside them, the plan of a
CPU with native bf16. On a CPU without native fp16/bf16 these plans are several times slower than fp32, hence the
narrow model (TINY) on a few real images."""
from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest
import torch

from utils import members as members_mod
from utils.checkpoint import load_checkpoint
from utils.config import Config
from utils.dataset import load_cifar10, prepare_splits
from utils.recipe import build_run
from utils.resume import State, restore
from utils.runtime.device import EMULATE_ENV, DeviceError, decide
from utils.runtime.rng import seed_everything
from utils.train import fit, save, train_batch, train_one_epoch

TINY = dict(subset_per_class=20, epochs=2, batch_size=64, test_limit=100, deterministic=True, seed=1,
            channels=[8, 16, 16, 32])
# What each plan must build, written out here rather than read back from utils.runtime.device: SGD's `fused` flag
# (None is torch's default, the foreach/for-loop kernels) and whether weights and momentum buffers are channels_last.
PLANS = {"cpu": {"fused": None, "channels_last": False},        # this AVX2 CI machine: fp32, contiguous
         "cpu-bf16": {"fused": None, "channels_last": True},    # avx512_bf16 or amx_bf16: bf16 + channels_last
         "t4": {"fused": True, "channels_last": True},          # fp16 + GradScaler + fused SGD + channels_last
         "bf16-gpu": {"fused": None, "channels_last": True}}    # bf16 + channels_last, no scaler


@pytest.fixture(scope="module")
def splits(cifar_dir):
    return prepare_splits(Config(**TINY), load_cifar10(cifar_dir))


def plan_of(name: str):
    """The plan `name` gets: the CPU's own decision (fed a native-bf16 CPU's flags for "cpu-bf16"; torch executes
    its bf16 in software on a CPU without them), else the emulated GPU class's."""
    if name.startswith("cpu"):
        return decide("cpu", emulate="", cpu_flags={"avx512_bf16"} if name == "cpu-bf16" else set())
    return decide("cpu", emulate=name, cpu_flags=set())


def set_plan(patch: pytest.MonkeyPatch, name: str) -> None:
    """Every decision of this process made plan_of(name)'s: the CPU's bf16 support as `name` says, and
    $CIFAR10_EMULATE set for a GPU class, as a student's CIFAR10_EMULATE=t4 does."""
    patch.setattr("utils.runtime.device.cpu_has_native_bf16", lambda flags=None: name == "cpu-bf16")
    if name.startswith("cpu"):
        patch.delenv(EMULATE_ENV, raising=False)
    else:
        patch.setenv(EMULATE_ENV, name)


@pytest.fixture
def under(monkeypatch):
    """under("t4") makes every decision of this process the emulated T4's (set_plan), undone after the test."""
    set_plan(monkeypatch, "cpu")
    return lambda name: set_plan(monkeypatch, name)


def conv_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    """The 3x3 convolutions' weights (a 1x1 one is contiguous and channels_last at once)."""
    return [p for p in model.parameters() if p.ndim == 4 and p.shape[-1] > 1]


# --------------------------------------------------------------------------------------------
# The decision
# --------------------------------------------------------------------------------------------
def test_the_emulated_plans_are_the_gpu_decisions_executed_on_the_cpu():
    for name, capability in (("t4", (7, 5)), ("bf16-gpu", (8, 0))):
        emulated, gpu = decide("cpu", compile=True, emulate=name), decide("cuda", compile=True, capability=capability)
        same = ("dtype", "channels_last", "grad_scaler", "compile", "fused_optimizer")
        assert {k: getattr(emulated, k) for k in same} == {k: getattr(gpu, k) for k in same}
        assert emulated.device == torch.device("cpu")
    t4 = decide("cpu", emulate="t4")
    assert t4.reason.startswith("emulated T4 plan: fp16 autocast + GradScaler + fused SGD + channels_last")
    assert t4.reason.endswith("executed on cpu")
    assert t4.optimizer_kwargs() == {"fused": True} and t4.make_scaler().state_dict()["scale"] > 1
    assert decide("cpu", emulate="bf16-gpu").reason.startswith("emulated bf16 GPU plan: bf16 autocast + channels_last")


def test_emulation_is_refused_for_an_unknown_class_and_on_a_real_gpu(monkeypatch):
    monkeypatch.setenv(EMULATE_ENV, "a100")
    with pytest.raises(DeviceError, match=r"CIFAR10_EMULATE='a100'.*expected one of 't4', 'bf16-gpu'"):
        decide("cpu")
    monkeypatch.setenv(EMULATE_ENV, "t4")
    with pytest.raises(DeviceError, match="emulation executes a GPU's plan on the CPU"):
        decide("cuda", capability=(7, 5))
    monkeypatch.setenv(EMULATE_ENV, "")
    assert not decide("cpu", cpu_flags=set()).reason.startswith("emulated")


# --------------------------------------------------------------------------------------------
# Resume across plans, in every direction
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory, splits) -> dict[str, Path]:
    """For each plan, made once for the module: a run's first epoch (`<root>/epoch1`, copied by each test that
    resumes it) and the same run trained straight through both epochs (`<root>/straight`)."""
    roots = {}
    with pytest.MonkeyPatch.context() as patch:
        for name in PLANS:
            set_plan(patch, name)
            roots[name] = tmp_path_factory.mktemp(name)
            cfg = Config(**{**TINY, "run_dir": str(roots[name] / "epoch1")})
            fit(cfg, splits, progress=False, max_epochs_this_call=1, log=lambda line: None)
            fit(cfg.replace(run_dir=str(roots[name] / "straight")), splits, progress=False, log=lambda line: None)
    return roots



@pytest.mark.parametrize("before", list(PLANS))
@pytest.mark.parametrize("after", list(PLANS))
def test_a_run_resumes_under_another_plan_with_its_momentum_in_the_new_kernel_and_layout(
        tmp_path, splits, under, trained, before, after):
    """Epoch 1 under plan `before`, epoch 2 under `after`: the optimizer's kernel flag and the momentum buffers'
    layout are `after`'s, their values `before`'s, and the first resumed step moves each weight by exactly
    lr x (its new momentum buffer), the SGD update written out by hand (no nesterov, dampening 0). Under one plan,
    the resumed run ends with the weights of the run trained straight through (deterministic kernels)."""
    folder = Path(shutil.copytree(trained[before] / "epoch1", tmp_path / "run"))
    cfg = Config(**{**TINY, "run_dir": str(folder)})
    saved = load_checkpoint(cfg.run_path / "last.pt")

    under(after)
    run = build_run(cfg, splits, plan_of(after))
    restore(run, log=lambda line: None)
    expected = PLANS[after]
    assert {g["fused"] for g in run.optimizer.param_groups} == {expected["fused"]}
    params = list(run.model.parameters())
    saved_buffers = [saved["optimizer"]["state"][i]["momentum_buffer"] for i in range(len(params))]
    for p, old in zip(params, saved_buffers):
        buffer = run.optimizer.state[p]["momentum_buffer"]
        assert buffer.stride() == p.stride(), "a momentum buffer is not in its parameter's layout"
        assert torch.equal(buffer, old), "a momentum buffer lost its saved values"
    for p in conv_weights(run.model):
        assert p.is_contiguous(memory_format=torch.channels_last) == expected["channels_last"]

    group = run.optimizer.param_groups[0]
    lr, weights_before = group["lr"], [p.detach().clone() for p in params]
    scale_before = run.scaler.get_scale() if run.scaler is not None else None
    run.train_loader.set_epoch(1)
    x, y = next(iter(run.train_loader))
    train_batch(run, x, y)
    if run.scaler is not None:
        assert run.scaler.get_scale() >= scale_before, "the GradScaler skipped the step: nothing to compare"
    for p, w in zip(params, weights_before):
        moved = run.optimizer.state[p]["momentum_buffer"] * lr
        torch.testing.assert_close(w - p.detach(), moved, rtol=1e-3, atol=1e-7)

    result = fit(cfg, splits, progress=False, log=lambda line: None)   # the same resume, through fit, to the end
    assert result.finished and len(result.history) == 2
    assert torch.isfinite(torch.tensor(result.history["train_loss"].tolist())).all()
    ended = load_checkpoint(cfg.run_path / "last.pt")
    assert {g["fused"] for g in ended["optimizer"]["param_groups"]} == {expected["fused"]}
    if before == after:
        straight = load_checkpoint(trained[before] / "straight" / "last.pt")
        different = [k for k in straight["model"] if not torch.equal(straight["model"][k], ended["model"][k])]
        assert not different, f"resumed under the same plan, the weights differ in {different[:5]}"
        assert straight["scaler"] == ended["scaler"]



# --------------------------------------------------------------------------------------------
# The GradScaler path of a T4
# --------------------------------------------------------------------------------------------
def t4_run(tmp_path, splits):
    torch.manual_seed(0)
    return build_run(Config(**{**TINY, "run_dir": str(tmp_path / "run")}), splits, plan_of("t4"))


def test_momentum_buffers_exist_as_zeros_before_the_first_step(tmp_path, splits):
    """Fused SGD would make them with empty_like in its first step, and leave them unwritten if that step is
    skipped: uninitialised memory for the whole run."""
    run = t4_run(tmp_path, splits)
    for p in run.model.parameters():
        buffer = run.optimizer.state[p].get("momentum_buffer")
        assert buffer is not None and not buffer.any() and buffer.stride() == p.stride()


def test_a_grad_scaler_overflow_skips_the_step_halves_the_scale_and_leaves_finite_weights(tmp_path, splits):
    """An overflow forced on the first step and on a later one (a loss scale of 2^40 makes every fp16 gradient
    inf): the weights and momentum stay as they were, the scale halves, and the next step trains on."""
    run = t4_run(tmp_path, splits)
    def epochs_of_batches():
        for epoch in range(3):
            run.train_loader.set_epoch(epoch)
            yield from run.train_loader

    batches = epochs_of_batches()
    params = list(run.model.parameters())

    def step(force_overflow: bool) -> bool:
        scale = 2.0 ** 40 if force_overflow else 2.0 ** 16       # 2^16: GradScaler's own initial scale
        run.scaler.load_state_dict({**run.scaler.state_dict(), "scale": scale})
        weights = [p.detach().clone() for p in params]
        buffers = [run.optimizer.state[p]["momentum_buffer"].clone() for p in params]
        scale = run.scaler.get_scale()
        x, y = next(batches)
        loss, _, _ = train_batch(run, x, y)
        assert torch.isfinite(loss)
        assert all(torch.isfinite(p).all() for p in params)
        skipped = all(torch.equal(p, w) for p, w in zip(params, weights))
        if skipped:
            assert all(torch.equal(run.optimizer.state[p]["momentum_buffer"], b) for p, b in zip(params, buffers))
            assert run.scaler.get_scale() == scale / 2
        return skipped

    assert step(force_overflow=True), "an overflowing first step was applied"
    assert not step(force_overflow=False), "a normal step was skipped"
    assert not step(force_overflow=False)
    assert step(force_overflow=True), "an overflowing later step was applied"
    assert not step(force_overflow=False), "training did not go on after the skipped step"


def test_the_loss_scale_is_saved_and_restored_on_resume(tmp_path, splits):
    run = t4_run(tmp_path, splits)
    run.train_loader.set_epoch(0)
    x, y = next(iter(run.train_loader))
    train_batch(run, x, y)
    run.scaler.update(new_scale=1024.0)                   # a scale no fresh GradScaler starts with
    state = State(history=[{"epoch": 1, "train_loss": 0.0, "train_acc": 0.0, "val_loss": 0.0, "val_acc": 0.0}])
    save(run, state, improved=True)
    resumed = t4_run(tmp_path, splits)
    restore(resumed, log=lambda line: None)
    assert resumed.scaler.get_scale() == 1024.0


def test_training_under_the_emulated_t4_plan_moves_the_weights_as_far_as_the_cpu_plan(trained):
    """The same two epochs straight through under the CPU's fp32 plan and under the T4's: the T4's loss-scaled steps
    move every layer's weights from their (identical) initialisation about as far as fp32 steps do. Were the loss
    not scaled before backward, the fused step would divide the gradients by the scale (2^16): the weights would
    move by weight decay alone. (The learning bar under this plan is test_training_under_the_emulated_t4_plan_learns,
    minutes; this check takes seconds, so the fast suite holds it.)"""
    from utils.model import build_model
    cfg = Config(**TINY)
    torch.manual_seed(cfg.training_seed(0))           # fit's seeding of member 0's initialisation
    initial = build_model(cfg).state_dict()
    moved = {}
    for name in ("cpu", "t4"):
        weights = load_checkpoint(trained[name] / "straight" / "last.pt")["model"]
        moved[name] = torch.stack([(weights[k].float() - initial[k].float()).norm() / initial[k].float().norm()
                                   for k, w in initial.items() if w.ndim == 4 and w.shape[-1] == 3])
    ratio = moved["t4"] / moved["cpu"]
    assert (ratio > 0.5).all() and (ratio < 2).all(), f"T4 / CPU weight movement per conv layer: {ratio.tolist()}"


# Training under the T4's plan learns: the narrow model on 100 real images per class, 4 epochs, batch 32. Measured
# test accuracy on 1,000 test images (2 AMD EPYC cores, AVX2, torch 2.14.1, seed 0): 0.241 under the emulated T4
# plan, 0.237 under the CPU's fp32 plan; chance is 0.10. The bar keeps the short fit's margin (tests/test_notebooks.py:
# 0.25 against a measured 0.339, about three quarters of it).
T4_LEARN = dict(subset_per_class=100, epochs=4, batch_size=32, test_limit=1000, channels=[8, 16, 16, 32])
T4_LEARN_MIN_TEST_ACC = 0.18


@pytest.mark.slow
def test_training_under_the_emulated_t4_plan_learns(tmp_path, cifar_dir, under):
    """fit, then the test images predicted, all under CIFAR10_EMULATE=t4: fp16 autocast, loss scaling, fused SGD
    and channels_last from the first step to the evaluation. (fp16 convolutions are slow on a CPU without native
    fp16, docs/tests.md: hence the narrow model, a few minutes.)"""
    from utils.checkpoint import find_checkpoint, load_trained_model
    from utils.evaluate import accuracy, checkpoint_splits, predict_with_checkpoint
    from utils.runtime.device import resolve_device

    under("t4")
    cfg = Config(**T4_LEARN, data_dir=str(cifar_dir), run_dir=str(tmp_path / "run"), device="cpu")
    fit(cfg, progress=False, log=lambda line: None)
    device = resolve_device(cfg.device)
    plan = decide(device, cfg.amp, cfg.channels_last)
    assert plan.grad_scaler and plan.fused_optimizer and plan.dtype == torch.float16, plan
    model, ckpt = load_trained_model(find_checkpoint(cfg), device)
    last = load_checkpoint(cfg.run_path / "last.pt")
    assert last["scaler"] is not None and last["optimizer"]["param_groups"][0]["fused"] is True
    splits = checkpoint_splits(ckpt, cfg)
    probs = predict_with_checkpoint(model, ckpt, splits.test_images, device, cfg.eval_batch_size, cfg.tta, plan)
    test_acc = accuracy(splits.test_labels, probs.argmax(1))
    assert len(splits.test_labels) == T4_LEARN["test_limit"]
    assert test_acc >= T4_LEARN_MIN_TEST_ACC, f"test accuracy {test_acc:.3f} under the T4 plan (chance: 0.10)"


# --------------------------------------------------------------------------------------------
# compile, the layout of inputs, and the launcher's devices
# --------------------------------------------------------------------------------------------
def test_a_compiled_run_does_not_trace_again_for_the_last_partial_batch(tmp_path, splits, monkeypatch):
    """The plan's torch.compile (allowed on a T4) with dynamo's `eager` backend, so only the tracing is counted: the
    first full batch traces the step's graphs, and neither the epoch's last, smaller batch nor a second epoch
    traces again."""
    dynamo = pytest.importorskip("torch._dynamo")
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    dynamo.reset()
    plan = decide("cpu", compile=True, emulate="t4")
    assert plan.compile
    run = build_run(Config(**{**TINY, "run_dir": str(tmp_path / "run")}), splits, plan)
    assert len(run.splits.train_labels) % run.cfg.batch_size, "the tiny split needs a partial last batch"
    seed_everything(0, run.cfg.deterministic)   # as fit does first: the deterministic flag is a guard of the graph
    counters = dynamo.utils.counters
    run.train_loader.set_epoch(0)
    first = iter(run.train_loader)
    train_batch(run, *next(first))
    traced = counters["stats"]["unique_graphs"]
    assert traced >= 1
    for x, y in first:
        train_batch(run, x, y)
    train_one_epoch(run, 1, progress=False, on_step=None)
    assert counters["stats"]["unique_graphs"] == traced, "the step was traced again"


def test_a_mixed_batch_reaches_the_model_in_the_plans_layout(tmp_path, splits, monkeypatch):
    run = build_run(Config(**{**TINY, "mixup_alpha": 0.2, "run_dir": str(tmp_path / "run")}), splits,
                    plan_of("t4"))
    seen = []
    forward = type(run.model).forward
    monkeypatch.setattr(type(run.model), "forward",
                        lambda self, x: seen.append(x.is_contiguous(memory_format=torch.channels_last))
                        or forward(self, x))
    run.train_loader.set_epoch(0)
    train_batch(run, *next(iter(run.train_loader)))
    assert seen == [True]


# What a member process sees on Kaggle's T4 x2: torch's CUDA calls answered as CUDA answers them inside
# CUDA_VISIBLE_DEVICES (only the GPUs it names exist, numbered from 0), each a T4. Installed in the child as a
# sitecustomize on its PYTHONPATH, so the child is the real `python -m utils.members` command the launcher built;
# the real resolve_device runs, then its answer is printed and the child ends before any training.
STAND_IN_GPUS = """
import json, os
import torch
visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
torch.cuda.is_available = lambda: bool(visible)
torch.cuda.device_count = lambda: len(visible)
torch.cuda.get_device_capability = lambda device=None: (7, 5)
torch.cuda.get_arch_list = lambda: ["sm_75"]
torch.cuda.get_device_name = lambda device=None: "Tesla T4"
from utils.runtime import device as device_module
real_resolve = device_module.resolve_device

def resolve_and_report(name="auto"):
    device = real_resolve(name)
    print("resolved " + json.dumps({"asked": name, "device": str(device),
                                    "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}), flush=True)
    raise SystemExit(0)

device_module.resolve_device = resolve_and_report
"""


def test_each_member_process_gets_its_own_gpu_and_uses_it_as_cuda(tmp_path, monkeypatch):
    """Two stand-in GPUs (Kaggle's T4 x2), through the launcher's own device slots and the real member process:
    default_devices gives one slot per visible GPU, so both members start at once; each child sees only its own GPU
    (CUDA_VISIBLE_DEVICES, the machine's numbering kept) and resolves "cuda" inside it, read back from the child."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")          # the machine's own numbering is kept
    monkeypatch.delenv(EMULATE_ENV, raising=False)
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(STAND_IN_GPUS)
    monkeypatch.setenv("PYTHONPATH", str(shim))                # child_env puts the repository before it
    cfg = Config(members=2, run_dir=str(tmp_path / "run"))
    assert members_mod.default_devices(cfg) == ["cuda:0", "cuda:1"]
    logged = []
    members_mod.train_members(cfg, log=logged.append)          # default devices: the launcher's own choice
    assert any("2 at a time on cuda:0, cuda:1" in line for line in logged), logged
    resolved = {}
    for line in logged:
        head, _, report = line.partition(" resolved ")
        if report:
            resolved[int(head.removeprefix("[member ").rstrip("]"))] = json.loads(report)
    assert resolved == {0: {"asked": "cuda", "device": "cuda", "CUDA_VISIBLE_DEVICES": "2"},
                        1: {"asked": "cuda", "device": "cuda", "CUDA_VISIBLE_DEVICES": "3"}}, logged
