"""TrivialAugmentWide (Müller & Hutter 2021) with its own op and magnitude for every image, batched on the device.

What it is: torchvision.transforms.v2.TrivialAugmentWide's 14 ops, 31 magnitude bins, signed magnitudes,
NEAREST interpolation and fill 0 (same arguments, same pixels: tests/test_augment.py compares every op, bin
and sign image by image, exactly), applied to a whole uint8 batch (N, 3, H, W) in one call in which image i
gets its own `op[i]`, `magnitude[i]` and `sign[i]`.

Design choices:
- Per image, vectorised, on the device. torchvision's v2 auto-augment classes draw ONE op per call: on a
  batch every image would share it. Calling them per image is a Python loop of N x (a dozen small kernels)
  per batch, or a return to PIL in DataLoader workers, both of which the project's `DeviceLoader` exists
  to avoid (the uint8 dataset lives on the training device and whole batches are augmented there, with
  no per-step host work). Per-chunk v2 calls (one op per chunk) correlate the images of a chunk, change
  the method, and still loop in Python.
- Every op is computed for the whole batch and each image takes its own result (one stacked gather on
  its op). That is ~14 elementwise passes over 3 KB images instead of one: a small cost next to the model's
  forward + backward over the same images (measured by benchmarks/bench_augment.py).
- All geometric ops (ShearX/Y, TranslateX/Y, Rotate) are ONE per-image affine: a (N, 3, 2) matrix per
  image through torchvision's own grid arithmetic (pixel-centred base grid, float32 matrix divided by
  half the size, grid_sample nearest, zero padding, align_corners=False), so the sampled pixels are
  torchvision's, including Rotate's rot90 fast path at +-90 degrees.
- No host-device synchronisation: no `.item()`, no boolean-mask indexing, no data-dependent shapes, no
  Python branch on a tensor value (a test runs it on the meta device, where any of those would fail).
  Every per-(op, bin, sign) constant (inverse affine matrix, blend factor, posterize mask, solarize
  threshold) is computed once on the CPU in float64 as torchvision computes it, cast to float32 as
  torchvision does, and cached on the device per (H, W, device); a batch only gathers table rows with
  its op/magnitude/sign indices. The first call for a new (H, W, device) copies the tables there once.
- Equalize is a batched histogram: scatter_add into one 256-bin row per (image, channel) (bincount would
  sync on CUDA to size its output), then PIL's LUT rule as torchvision applies it, all in integers.
- Blends (Color, Contrast, Sharpness) use addcmul for `a + alpha * b`: it rounds like torchvision's
  `add_(b, alpha=...)`; a separate multiply and add moves some pixels by one level.
- Randomness: `draw_trivial_augment` draws op, magnitude bin and sign for n images from a CPU
  torch.Generator in that fixed order, so the loader can draw a whole epoch up front and move it to the
  device in one copy; the draws are the same on every device.

Evidence: tests/test_augment.py (every op, bin and sign pixel-exact against
torchvision.transforms.v2.functional, image by image; no host sync, on the meta device) and
`python benchmarks/bench_augment.py [--device cuda]` (its cost: augmentation images/s next to the training step
it feeds on the same device). The measured numbers, with their command and device, are in docs/benchmarks.md
("Augmentation cost"). On a GPU the FLOPs stay negligible but the call is ~90 small kernels, so its share of a
fast GPU step must be measured there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

OPS: tuple[str, ...] = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
                        "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")
NUM_OPS = len(OPS)
NUM_BINS = 31
SIGNED_OPS = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
                        "Contrast", "Sharpness"})
GEOMETRIC_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
_OP = {name: i for i, name in enumerate(OPS)}
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)   # torchvision's rgb_to_grayscale


def draw_trivial_augment(n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Op index (int64, 0..13 in `OPS` order), magnitude bin (int64, 0..30) and sign (bool: negate the
    magnitude of a signed op) for n images, drawn on the CPU from `generator` in that order."""
    op = torch.randint(NUM_OPS, (n,), generator=generator)
    magnitude = torch.randint(NUM_BINS, (n,), generator=generator)
    sign = torch.rand(n, generator=generator) <= 0.5   # torchvision negates when rand() <= 0.5
    return {"op": op, "magnitude": magnitude, "sign": sign}


def magnitude_bins(op: str) -> list[float] | None:
    """TrivialAugmentWide's 31 magnitudes of `op` (None for the ops without one), as torchvision builds them."""
    if op in ("ShearX", "ShearY", "Brightness", "Color", "Contrast", "Sharpness"):
        return torch.linspace(0.0, 0.99, NUM_BINS).tolist()
    if op in ("TranslateX", "TranslateY"):
        return torch.linspace(0.0, 32.0, NUM_BINS).tolist()
    if op == "Rotate":
        return torch.linspace(0.0, 135.0, NUM_BINS).tolist()
    if op == "Posterize":   # 8 bits down to 2, rounded from a float32 ramp
        return (8 - torch.arange(NUM_BINS) / ((NUM_BINS - 1) / 6)).round().int().tolist()
    if op == "Solarize":
        return torch.linspace(1.0, 0.0, NUM_BINS).tolist()
    return None


def op_magnitude(op: str, bin_: int, sign: bool) -> float:
    """The signed magnitude TrivialAugmentWide passes to `op` for bin `bin_` (0.0 for ops without one)."""
    bins = magnitude_bins(op)
    if bins is None:
        return 0.0
    value = float(bins[bin_])
    return -value if (sign and op in SIGNED_OPS) else value


def _inverse_affine(center: tuple[float, float], angle: float, translate: tuple[float, float],
                    shear: tuple[float, float]) -> list[float]:
    """Output-to-input pixel map [a, b, c, d, e, f] of T * C * Rotate * ShearY * ShearX * C^-1 (scale 1),
    with centre and coordinates relative to the image centre, angles in degrees (torchvision's convention)."""
    rot, sx, sy = math.radians(angle), math.radians(shear[0]), math.radians(shear[1])
    a = math.cos(rot - sy) / math.cos(sy)
    b = -(a * math.tan(sx) + math.sin(rot))
    c = math.sin(rot - sy) / math.cos(sy)
    d = math.cos(rot) - c * math.tan(sx)
    # The forward 2x2 part has determinant 1, so its inverse is [[d, -b], [-c, a]].
    cx_t, cy_t = center[0] + translate[0], center[1] + translate[1]
    return [d, -b, center[0] - d * cx_t + b * cy_t, -c, a, center[1] + c * cx_t - a * cy_t]


def _geometric_matrix(op: str, m: float, h: int, w: int) -> list[float]:
    """The inverse affine matrix torchvision's F.affine / F.rotate build for `op` at signed magnitude m."""
    corner = (-0.5 * w, -0.5 * h)   # TrivialAugment shears about pixel (0, 0), given relative to the centre
    if op == "ShearX":
        return _inverse_affine(corner, 0.0, (0.0, 0.0), (math.degrees(math.atan(m)), 0.0))
    if op == "ShearY":
        return _inverse_affine(corner, 0.0, (0.0, 0.0), (0.0, math.degrees(math.atan(m))))
    if op == "TranslateX":
        return _inverse_affine((0.0, 0.0), 0.0, (float(int(m)), 0.0), (0.0, 0.0))
    if op == "TranslateY":
        return _inverse_affine((0.0, 0.0), 0.0, (0.0, float(int(m))), (0.0, 0.0))
    if op == "Rotate":   # F.rotate: angle mod 360, then the affine of -angle about the centre
        return _inverse_affine((0.0, 0.0), -(m % 360), (0.0, 0.0), (0.0, 0.0))
    return [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


# Columns of the float table: the transposed, rescaled inverse affine (3 x 2), then the per-image scalars.
_THETA, _RATIO, _ALPHA, _THRESHOLD = slice(0, 6), 6, 7, 8
# What each op's image is taken from, in the order of `candidates` in trivial_augment.
_SOURCE = {"Identity": 0, **{op: 1 for op in GEOMETRIC_OPS}, "Brightness": 2, "Color": 3, "Contrast": 4,
           "Sharpness": 5, "Posterize": 6, "Solarize": 7, "AutoContrast": 8, "Equalize": 9}


@dataclass(frozen=True)
class _Tables:
    """Per (op, bin, sign) constants, flattened to rows (op * NUM_BINS + bin) * 2 + sign, on one device."""
    params: torch.Tensor      # (rows, 9) float32: theta (inverse affine, transposed, divided by (w/2, h/2)),
    #                           blend factor 1 + m, its complement 1 - factor, solarize threshold 255 * m
    mask: torch.Tensor        # (rows,) uint8: posterize bit mask
    source: torch.Tensor      # (NUM_OPS,) int64: which candidate image each op takes
    base_grid: torch.Tensor   # (1, h * w, 3) float32: pixel-centred output coordinates and 1
    sharpen: torch.Tensor     # (3, 1, 3, 3) float32: torchvision's smoothing kernel


@lru_cache(maxsize=16)
def _tables(h: int, w: int, device: torch.device) -> _Tables:
    rows = NUM_OPS * NUM_BINS * 2
    theta = torch.zeros(rows, 2, 3, dtype=torch.float64)
    factor = torch.ones(rows, dtype=torch.float64)
    mask = torch.full((rows,), 255, dtype=torch.uint8)
    threshold = torch.full((rows,), 256.0, dtype=torch.float64)
    for op in OPS:
        for bin_ in range(NUM_BINS):
            for sign in (0, 1):
                row = (_OP[op] * NUM_BINS + bin_) * 2 + sign
                m = op_magnitude(op, bin_, bool(sign))
                theta[row] = torch.tensor(_geometric_matrix(op, m, h, w), dtype=torch.float64).view(2, 3)
                if op in ("Brightness", "Color", "Contrast", "Sharpness"):
                    factor[row] = 1.0 + m
                elif op == "Posterize":
                    bits = int(m)
                    mask[row] = ((1 << bits) - 1) << (8 - bits)
                elif op == "Solarize":
                    threshold[row] = 255.0 * m
    # torchvision makes a float32 theta from the float64 matrix, then divides its transpose by (w/2, h/2).
    half = torch.tensor([0.5 * w, 0.5 * h], dtype=torch.float32)
    theta32 = theta.to(torch.float32).transpose(1, 2).div(half).reshape(rows, 6)
    params = torch.cat([theta32, factor.to(torch.float32)[:, None], (1.0 - factor).to(torch.float32)[:, None],
                        threshold.to(torch.float32)[:, None]], dim=1)
    base = torch.empty(1, h, w, 3, dtype=torch.float32)
    base[..., 0] = torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w)
    base[..., 1] = torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h).unsqueeze(-1)
    base[..., 2] = 1.0
    a, b = 1.0 / 13.0, 5.0 / 13.0
    kernel = torch.tensor([[a, a, a], [a, b, a], [a, a, a]], dtype=torch.float32).expand(3, 1, 3, 3)
    source = torch.tensor([_SOURCE[op] for op in OPS], dtype=torch.int64)
    return _Tables(params=params.to(device), mask=mask.to(device), source=source.to(device),
                   base_grid=base.view(1, h * w, 3).to(device), sharpen=kernel.contiguous().to(device))


def _per_image(v: torch.Tensor) -> torch.Tensor:
    return v[:, None, None, None]


def _blend(xf: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """x * ratio + other * (1 - ratio), clamped and cast like torchvision's _blend (per-image ratio)."""
    return torch.addcmul(xf * ratio, other, alpha).clamp_(0, 255).to(torch.uint8)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) float32 luma, floored as torchvision does for integer images."""
    r, g, b = x.unbind(dim=1)
    gray = r.mul(_GRAY_WEIGHTS[0]).add_(g, alpha=_GRAY_WEIGHTS[1]).add_(b, alpha=_GRAY_WEIGHTS[2])
    return gray.floor_().unsqueeze(1)


def _warp(xf: torch.Tensor, theta: torch.Tensor, base_grid: torch.Tensor) -> torch.Tensor:
    """Per-image affine (theta: (N, 3, 2), already transposed and rescaled), nearest, zeros outside."""
    n, _, h, w = xf.shape
    grid = base_grid.expand(n, -1, -1).bmm(theta).view(n, h, w, 2)
    out = F.grid_sample(xf, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out.round_().to(torch.uint8)


def _sharpness(xf: torch.Tensor, kernel: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Blend with the 3x3-smoothed image inside a 1-pixel border (the border is kept), as torchvision."""
    if xf.shape[-1] <= 2 or xf.shape[-2] <= 2:
        return xf.to(torch.uint8)
    blurred = F.conv2d(xf, kernel, groups=xf.shape[1]).round_()
    out = xf.clone()
    inner = out[..., 1:-1, 1:-1]
    inner.addcmul_(blurred.sub_(inner), alpha)
    return out.clamp_(0, 255).to(torch.uint8)


def _autocontrast(xf: torch.Tensor) -> torch.Tensor:
    low = xf.amin(dim=(-2, -1), keepdim=True)
    high = xf.amax(dim=(-2, -1), keepdim=True)
    flat = high == low
    inv_scale = torch.where(flat, 1.0, (high - low).mul_(1.0 / 255))
    low = torch.where(flat, 0.0, low)
    return (xf - low).div_(inv_scale).clamp_(0, 255).to(torch.uint8)


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """Per (image, channel) histogram equalisation with PIL's LUT, in integers (torchvision's equalize)."""
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w).long()
    hist = torch.zeros(n, c, 256, dtype=torch.int32, device=x.device)
    hist.scatter_add_(-1, flat, torch.ones(1, dtype=torch.int32, device=x.device).expand_as(flat))
    cum = hist.cumsum(-1)
    # Pixels not at the image's largest value (the last non-empty bin), then PIL's step.
    top = flat.amax(dim=-1, keepdim=True)
    step = torch.div(h * w - hist.gather(-1, top), 255, rounding_mode="floor")
    lut = torch.div(cum[..., :-1] + step // 2, step.clamp(min=1), rounding_mode="floor").clamp_(0, 255)
    lut = F.pad(lut, (1, 0)).to(torch.uint8)   # lut[0] = 0
    out = lut.gather(-1, flat).view(n, c, h, w)
    return torch.where((step != 0).unsqueeze(-1), out, x)


def trivial_augment(x: torch.Tensor, op: torch.Tensor, magnitude: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Apply op[i] at magnitude bin magnitude[i] (negated where sign[i], for signed ops) to image i of the uint8
    batch x (N, 3, H, W); op/magnitude/sign live on x's device. Returns a new uint8 batch, same shape and device."""
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"trivial_augment expects a uint8 (N, 3, H, W) batch, got {x.dtype} {tuple(x.shape)}")
    n, _, h, w = x.shape
    if not (op.shape == magnitude.shape == sign.shape == (n,)):
        raise ValueError(f"op, magnitude and sign must each have shape ({n},), got {tuple(op.shape)}, "
                         f"{tuple(magnitude.shape)}, {tuple(sign.shape)}")
    t = _tables(h, w, x.device)
    row = (op * NUM_BINS + magnitude) * 2 + sign.long()
    params = t.params.index_select(0, row)
    ratio, alpha, threshold = (_per_image(params[:, k]) for k in (_RATIO, _ALPHA, _THRESHOLD))
    xf, gray = x.float(), _grayscale(x)
    candidates = [   # every op for the whole batch; index = _SOURCE
        x,
        _warp(xf, params[:, _THETA].view(n, 3, 2), t.base_grid),
        xf.mul(ratio).clamp_(0, 255).to(torch.uint8),
        _blend(xf, gray, ratio, alpha),
        _blend(xf, gray.mean(dim=(-3, -2, -1), keepdim=True), ratio, alpha),
        _sharpness(xf, t.sharpen, alpha),
        x & _per_image(t.mask.index_select(0, row)),
        torch.where(x >= threshold, x.bitwise_not(), x),
        _autocontrast(xf),
        _equalize(x),
    ]
    pick = t.source.index_select(0, op).view(1, n, 1, 1, 1).expand(1, *x.shape)
    return torch.stack(candidates).gather(0, pick).squeeze(0)
