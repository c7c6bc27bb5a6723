"""utils.augment: per-image TrivialAugmentWide on a batch, checked image by image against torchvision.

The reference for one image is torchvision.transforms.v2.functional's op, called with the arguments
torchvision's TrivialAugmentWide passes (`reference` below mirrors its dispatch; a test checks the two agree).
Every op is checked at all 31 magnitude bins and both signs on real CIFAR-10 images plus two synthetic ones
(a ramp holding every value 0..255 and a flat image: the edge cases of Solarize, AutoContrast and Equalize).
All comparisons are exact: with nearest sampling the batched grid is computed with torchvision's own
arithmetic (float32 matrix from the float64 one, pixel-centred base grid, divide by half the size), so the
sampled pixel indices are the same; `MAX_GEOMETRIC_MISMATCH` is the tolerance kept for a future torch whose
batched matmul rounds differently, and it is 0 here.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from utils import augment
from utils.augment import NUM_BINS, NUM_OPS, OPS, SIGNED_OPS, draw_trivial_augment, trivial_augment
from utils.dataset import BATCHES_SUBDIR, load_batch

REPO_ROOT = Path(__file__).resolve().parents[1]
NEAREST = InterpolationMode.NEAREST
MAX_GEOMETRIC_MISMATCH = 0.0   # fraction of pixels; see the module docstring


def tv_magnitude(op: str, bin_: int, sign: bool, h: int = 32, w: int = 32) -> float:
    """The signed magnitude torchvision's TrivialAugmentWide would pass for this op, bin and sign."""
    magnitudes_fn, signed = T.TrivialAugmentWide._AUGMENTATION_SPACE[op]
    magnitudes = magnitudes_fn(NUM_BINS, h, w)
    if magnitudes is None:
        return 0.0
    m = float(magnitudes[bin_])
    return -m if (signed and sign) else m


def reference(img: torch.Tensor, op: str, m: float) -> torch.Tensor:
    """One (3, H, W) uint8 image through torchvision's functional op, as TrivialAugmentWide calls it."""
    if op == "Identity":
        return img
    if op in ("ShearX", "ShearY"):
        shear = [math.degrees(math.atan(m)), 0.0] if op == "ShearX" else [0.0, math.degrees(math.atan(m))]
        return TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, interpolation=NEAREST,
                         fill=None, center=[0, 0])
    if op in ("TranslateX", "TranslateY"):
        translate = [int(m), 0] if op == "TranslateX" else [0, int(m)]
        return TF.affine(img, angle=0.0, translate=translate, scale=1.0, shear=[0.0, 0.0], interpolation=NEAREST,
                         fill=None)
    if op == "Rotate":
        return TF.rotate(img, angle=m, interpolation=NEAREST, fill=None)
    if op == "Brightness":
        return TF.adjust_brightness(img, brightness_factor=1.0 + m)
    if op == "Color":
        return TF.adjust_saturation(img, saturation_factor=1.0 + m)
    if op == "Contrast":
        return TF.adjust_contrast(img, contrast_factor=1.0 + m)
    if op == "Sharpness":
        return TF.adjust_sharpness(img, sharpness_factor=1.0 + m)
    if op == "Posterize":
        return TF.posterize(img, bits=int(m))
    if op == "Solarize":
        return TF.solarize(img, threshold=255.0 * m)
    if op == "AutoContrast":
        return TF.autocontrast(img)
    if op == "Equalize":
        return TF.equalize(img)
    raise ValueError(op)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Thousands of tiny single-image reference calls: on a shared 2-core CPU, 2 threads only add spin-waits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def images(cifar_dir) -> torch.Tensor:
    """Four real CIFAR-10 test images, a ramp with every value 0..255 and a flat image: (6, 3, 32, 32) uint8."""
    real, _ = load_batch(cifar_dir / BATCHES_SUBDIR / "test_batch")
    real = torch.from_numpy(real[:4]).permute(0, 3, 1, 2)
    ramp = (torch.arange(3 * 32 * 32) * 7 % 256).to(torch.uint8).view(1, 3, 32, 32)
    flat = torch.full((1, 3, 32, 32), 77, dtype=torch.uint8)
    return torch.cat([real, ramp, flat]).contiguous()


def mismatch(out: torch.Tensor, ref: torch.Tensor) -> float:
    return (out != ref).any(dim=0).float().mean().item()   # fraction of pixel positions with any channel off


def check_against_reference(x: torch.Tensor, op: torch.Tensor, magnitude: torch.Tensor, sign: torch.Tensor,
                            out: torch.Tensor) -> None:
    failures = []
    for i in range(len(x)):
        name, bin_, neg = OPS[int(op[i])], int(magnitude[i]), bool(sign[i])
        ref = reference(x[i], name, tv_magnitude(name, bin_, neg))
        off = mismatch(out[i], ref)
        allowed = MAX_GEOMETRIC_MISMATCH if name in augment.GEOMETRIC_OPS else 0.0
        if off > allowed:
            failures.append(f"image {i}: {name} bin {bin_} sign {neg}: {off:.2%} of pixels differ "
                            f"(max |diff| {(out[i].int() - ref.int()).abs().max().item()})")
    assert not failures, f"{len(failures)} of {len(x)} images differ from torchvision:\n" + "\n".join(failures[:10])


# --- the ops ------------------------------------------------------------------------------------------------
def test_magnitudes_are_torchvisions_augmentation_space():
    assert tuple(T.TrivialAugmentWide._AUGMENTATION_SPACE) == OPS
    for op in OPS:
        assert (op in SIGNED_OPS) == T.TrivialAugmentWide._AUGMENTATION_SPACE[op][1], op
        for bin_ in range(NUM_BINS):
            for sign in (False, True):
                assert augment.op_magnitude(op, bin_, sign) == tv_magnitude(op, bin_, sign), (op, bin_, sign)


@pytest.mark.parametrize("op", [op for op in OPS if op != "Identity"])
def test_reference_is_what_trivial_augment_wide_applies(images, op):
    """Our `reference` passes the same arguments as torchvision's own dispatch (private, so skipped if gone)."""
    ta = T.TrivialAugmentWide()
    apply = getattr(ta, "_apply_image_or_video_transform", None)
    if apply is None:
        pytest.skip("torchvision's TrivialAugmentWide has no _apply_image_or_video_transform")
    for bin_ in (0, 7, 20, 30):
        for sign in (False, True):
            m = tv_magnitude(op, bin_, sign)
            got = apply(images[0], op, m, interpolation=NEAREST, fill=ta._fill)
            assert torch.equal(got, reference(images[0], op, m)), (op, bin_, sign)


@pytest.mark.parametrize("op", OPS)
def test_every_bin_and_sign_matches_torchvision_image_by_image(images, op):
    """All 31 bins x both signs x 6 images in ONE batch, each image compared with torchvision's result."""
    combos = [(b, s, i) for b in range(NUM_BINS) for s in (False, True) for i in range(len(images))]
    magnitude = torch.tensor([b for b, _, _ in combos])
    sign = torch.tensor([s for _, s, _ in combos])
    x = images[torch.tensor([i for _, _, i in combos])]
    op_idx = torch.full((len(combos),), OPS.index(op))
    out = trivial_augment(x, op_idx, magnitude, sign)
    check_against_reference(x, op_idx, magnitude, sign, out)


def test_one_batch_gives_each_image_its_own_op(images):
    g = torch.Generator().manual_seed(3)
    n = 6 * 42
    x = images.repeat(42, 1, 1, 1)
    draw = draw_trivial_augment(n, g)
    assert len(set(draw["op"].tolist())) == NUM_OPS   # a mixed batch, not one op
    out = trivial_augment(x, **draw)
    check_against_reference(x, draw["op"], draw["magnitude"], draw["sign"], out)
    # Image 0's op applied to everyone would be a different batch.
    same_op = trivial_augment(x, draw["op"][:1].expand(n).contiguous(), draw["magnitude"], draw["sign"])
    assert not torch.equal(same_op, out)


def test_rotate_by_90_and_0_match_torchvisions_fast_paths(images):
    # Bin 20 is exactly 90 degrees; torchvision transposes (rot90) instead of sampling, and clones at 0.
    for bin_, sign, k in ((20, False, 1), (20, True, 3), (0, False, 0), (0, True, 0)):
        op = torch.full((len(images),), OPS.index("Rotate"))
        out = trivial_augment(images, op, torch.full_like(op, bin_), torch.full((len(images),), sign))
        assert torch.equal(out, torch.rot90(images, k=k, dims=(-2, -1))), (bin_, sign)


def test_unsigned_ops_ignore_the_sign_and_signed_ops_do_not(images):
    n = len(images)
    for op in OPS:
        idx = torch.full((n,), OPS.index(op))
        bins = torch.full((n,), 12)
        plus = trivial_augment(images, idx, bins, torch.zeros(n, dtype=torch.bool))
        minus = trivial_augment(images, idx, bins, torch.ones(n, dtype=torch.bool))
        assert torch.equal(plus, minus) == (op not in SIGNED_OPS), op


# --- draws ----------------------------------------------------------------------------------------------------
def test_draws_are_deterministic_typed_and_in_range():
    a = draw_trivial_augment(500, torch.Generator().manual_seed(7))
    b = draw_trivial_augment(500, torch.Generator().manual_seed(7))
    c = draw_trivial_augment(500, torch.Generator().manual_seed(8))
    assert set(a) == {"op", "magnitude", "sign"}
    for key in a:
        assert torch.equal(a[key], b[key]) and a[key].device.type == "cpu" and a[key].shape == (500,)
    assert not torch.equal(a["op"], c["op"])
    assert a["op"].dtype == a["magnitude"].dtype == torch.int64 and a["sign"].dtype == torch.bool
    assert a["op"].min() >= 0 and a["op"].max() < NUM_OPS
    assert a["magnitude"].min() >= 0 and a["magnitude"].max() < NUM_BINS
    # A fixed order: op for all n, then magnitude for all n, then sign for all n.
    g = torch.Generator().manual_seed(7)
    assert torch.equal(torch.randint(NUM_OPS, (500,), generator=g), a["op"])
    assert torch.equal(torch.randint(NUM_BINS, (500,), generator=g), a["magnitude"])


def test_op_magnitude_and_sign_distributions_cover_everything():
    n = 28_000
    draw = draw_trivial_augment(n, torch.Generator().manual_seed(0))
    counts = torch.bincount(draw["op"], minlength=NUM_OPS)
    expected, sd = n / NUM_OPS, math.sqrt(n / NUM_OPS * (1 - 1 / NUM_OPS))
    assert ((counts - expected).abs() < 5 * sd).all(), counts.tolist()
    assert (torch.bincount(draw["magnitude"], minlength=NUM_BINS) > 0).all()
    assert abs(draw["sign"].float().mean().item() - 0.5) < 0.02


# --- contract: dtype, shape, device, no host sync -------------------------------------------------------------
def test_dtype_shape_device_kept_and_input_untouched(images):
    x = images.repeat(3, 1, 1, 1)
    before = x.clone()
    draw = draw_trivial_augment(len(x), torch.Generator().manual_seed(1))
    out = trivial_augment(x, **draw)
    assert out.dtype == torch.uint8 and out.shape == x.shape and out.device == x.device
    assert torch.equal(x, before)
    # channels_last input gives the same pixels
    assert torch.equal(trivial_augment(x.contiguous(memory_format=torch.channels_last), **draw), out)
    # a non-square image keeps its shape
    wide = torch.randint(0, 256, (4, 3, 16, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    d = draw_trivial_augment(4, torch.Generator().manual_seed(2))
    assert trivial_augment(wide, **d).shape == wide.shape


def test_rejects_wrong_inputs(images):
    d = draw_trivial_augment(len(images), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="uint8"):
        trivial_augment(images.float(), **d)
    with pytest.raises(ValueError, match="shape"):
        trivial_augment(images, d["op"][:2], d["magnitude"], d["sign"])


def test_runs_on_the_meta_device_so_nothing_reads_tensor_values():
    """Meta tensors carry no data: .item(), bool(tensor), nonzero or a boolean-mask index would raise."""
    d = {k: v.to("meta") for k, v in draw_trivial_augment(16, torch.Generator().manual_seed(0)).items()}
    out = trivial_augment(torch.empty(16, 3, 32, 32, dtype=torch.uint8, device="meta"), **d)
    assert out.device.type == "meta" and out.shape == (16, 3, 32, 32) and out.dtype == torch.uint8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_no_synchronisation_and_same_pixels_as_cpu(images):
    x = images.repeat(8, 1, 1, 1)
    d = draw_trivial_augment(len(x), torch.Generator().manual_seed(4))
    cpu = trivial_augment(x, **d)
    xc, dc = x.cuda(), {k: v.cuda() for k, v in d.items()}
    trivial_augment(xc, **dc)   # builds and copies the tables once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = trivial_augment(xc, **dc)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert (out.cpu() != cpu).float().mean().item() < 0.001   # CUDA may fuse multiply-adds differently


# --- benchmark ------------------------------------------------------------------------------------------------
def test_benchmark_runs_tiny_on_cpu_and_ends_with_json():
    cmd = [sys.executable, str(REPO_ROOT / "benchmarks" / "bench_augment.py"), "--device", "cpu",
           "--batch-size", "8", "--steps", "2", "--warmup", "1", "--model-steps", "1", "--threads", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["device"] == "cpu" and result["device_name"] and result["torch"]
    assert (result["batch_size"], result["steps"]) == (8, 2)
    numbers = result["numbers"]
    for key in ("crop_flip_images_per_s", "crop_flip_trivial_augment_images_per_s", "model_train_images_per_s"):
        assert numbers[key] > 0, key
    assert "images/s" in done.stdout
