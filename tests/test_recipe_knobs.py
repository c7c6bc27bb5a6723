"""The recipe's knobs beyond the paper (issue 34), each off in `paper`: each test fails where its knob silently does
nothing. Also issue 36: every schedule length trains, and momentum buffers exist wherever the schedule makes momentum.
`paper` itself staying bit-identical is held by the bit-for-bit tests of tests/test_data.py and tests/test_train.py."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from layouts import images_for
from test_evaluate import MEAN, STD, by_hand, confident_model
from test_train import SMALL, assert_same_state, tiny_cfg, without_time

from utils import recipe
from utils.checkpoint import load_checkpoint
from utils.config import TTA_VIEWS, Config
from utils.dataset import load_cifar10, prepare_splits
from utils.evaluate import predict_proba, tta_views, uint8_log_probs
from utils.loader import DeviceLoader
from utils.model import PAPER_PARAMETERS, BasicBlock, build_model, patch_pca_filters
from utils.recipe import build_run, make_schedule, planned_learning_rates
from utils.runtime.device import decide
from utils.train import fit

CPU = decide(torch.device("cpu"))


@pytest.fixture(scope="module")
def splits(cifar_dir):
    return prepare_splits(Config(**SMALL), load_cifar10(cifar_dir))


def stepped(cfg: Config, total: int) -> tuple[list[float], list[float]]:
    """Learning rate and momentum of every step of a one-epoch schedule of `total` steps, and after the last."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr, momentum=cfg.momentum)
    scheduler = make_schedule(optimizer, cfg.replace(epochs=1), total)
    lrs, momenta = [], []
    for _ in range(total):
        lrs.append(scheduler.get_last_lr()[0])
        momenta.append(optimizer.param_groups[0]["momentum"])
        optimizer.step()
        scheduler.step()
    return lrs + [scheduler.get_last_lr()[0]], momenta


# --- schedule -------------------------------------------------------------------------------------------------
def test_the_linear_schedule_rises_and_falls_in_straight_lines_and_keeps_the_momentum():
    cfg = Config(epochs=4, lr=0.2, pct_start=0.25, schedule="linear")      # 100 steps, the peak at step 25
    lrs = planned_learning_rates(cfg, 25)                                  # notebook 03's plot: what trains
    assert len(lrs) == 100 and lrs[0] == pytest.approx(0.2 / 25) and lrs[25] == pytest.approx(0.2)
    np.testing.assert_allclose(np.diff(lrs[:26]), (0.2 - 0.2 / 25) / 25, rtol=1e-9)
    np.testing.assert_allclose(np.diff(lrs[25:]), -0.2 / 75, rtol=1e-9)
    assert lrs[-1] == pytest.approx(0.2 / 75)                             # the last step still moves ...
    after, momenta = stepped(cfg.replace(cycle_momentum=True), 100)
    assert after[-1] == 0.0 and set(momenta) == {0.9}                     # ... then 0; momentum never cycled
    onecycle = planned_learning_rates(cfg.replace(schedule="onecycle"), 25)
    assert onecycle[0] == pytest.approx(lrs[0]) and max(onecycle) == pytest.approx(max(lrs))
    assert not np.allclose(onecycle, lrs, atol=1e-3)


@pytest.mark.parametrize("schedule", ["onecycle", "linear"])
def test_every_schedule_length_and_warm_up_share_trains(schedule):
    for pct_start in (0.05, 0.1, 0.2, 0.25, 1 / 3, 0.5, 0.9):
        cfg = Config(schedule=schedule, pct_start=pct_start)
        for total in range(1, 41):                 # 10 steps at 10 %: torch's OneCycleLR divides by zero
            lrs, momenta = stepped(cfg, total)
            assert all(math.isfinite(v) and v >= 0 for v in lrs + momenta), (total, pct_start, lrs)
            assert max(lrs) <= cfg.lr * (1 + 1e-9)


def test_onecycle_is_torchs_onecycle_wherever_torch_can_run_it():
    for total in range(1, 41):
        for pct_start in (0.1, 0.3, 0.5, 0.9):
            if float(pct_start * total) - 1 == 0:
                continue                           # the one count torch cannot run (the test above)
            optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
            torchs = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=total, pct_start=pct_start)
            expected = [torchs.get_last_lr()[0]]
            for _ in range(total):
                optimizer.step()
                torchs.step()
                expected.append(torchs.get_last_lr()[0])
            assert stepped(Config(pct_start=pct_start), total)[0] == expected


# --- momentum buffers (issue 36) and the parameter groups ---------------------------------------------------
def momentum_buffers(optimizer):
    return [optimizer.state[p].get("momentum_buffer") for group in optimizer.param_groups for p in group["params"]]


@pytest.mark.parametrize("decay_norm_and_bias", [True, False])
def test_momentum_buffers_are_there_before_the_first_step_even_from_momentum_0_when_onecycle_cycles_it(
        tmp_path, splits, decay_norm_and_bias):
    run = build_run(tiny_cfg(tmp_path, momentum=0.0, decay_norm_and_bias=decay_norm_and_bias), splits, CPU)
    assert len(run.optimizer.param_groups) == (1 if decay_norm_and_bias else 2)
    assert all(group["momentum"] == pytest.approx(0.95) for group in run.optimizer.param_groups)
    buffers = momentum_buffers(run.optimizer)
    assert len(buffers) == len(list(run.model.parameters()))
    assert all(b is not None and not b.any() for b in buffers)
    still = build_run(tiny_cfg(tmp_path, momentum=0.0, cycle_momentum=False), splits, CPU)  # SGD makes none then
    assert still.optimizer.param_groups[0]["momentum"] == 0
    assert all(b is None for b in momentum_buffers(still.optimizer))


def test_without_decay_on_norms_and_biases_they_form_a_group_of_weight_decay_0(tmp_path, splits):
    model = build_run(tiny_cfg(tmp_path), splits, CPU).model
    [paper] = build_run(tiny_cfg(tmp_path), splits, CPU).optimizer.param_groups
    assert paper["weight_decay"] == 5e-4 and len(paper["params"]) == len(list(model.parameters()))
    run = build_run(tiny_cfg(tmp_path, decay_norm_and_bias=False), splits, CPU)
    decayed, free = run.optimizer.param_groups
    assert decayed["weight_decay"] == 5e-4 and free["weight_decay"] == 0.0
    names = {id(p): name for name, p in run.model.named_parameters()}
    norms = {name for name, m in run.model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    expected_free = {f"{m}.{k}" for m in norms for k in ("weight", "bias")} | {"fc.bias"}
    assert {names[id(p)] for p in free["params"]} == expected_free
    assert {names[id(p)] for p in decayed["params"]} == set(names.values()) - expected_free
    assert all(p.ndim == 4 for p in decayed["params"] if names[id(p)] != "fc.weight")


# --- initialisation ----------------------------------------------------------------------------------------
def test_zero_init_residual_zeroes_each_blocks_last_batchnorm_and_nothing_else():
    torch.manual_seed(3)
    plain = build_model(Config())
    after_plain = torch.get_rng_state()
    torch.manual_seed(3)
    zeroed = build_model(Config(zero_init_residual=True))
    assert torch.equal(torch.get_rng_state(), after_plain)                 # no random draw: the rest is the same
    last_bn = {f"{name}.conv2.1.weight" for name, m in zeroed.named_modules() if isinstance(m, BasicBlock)}
    assert len(last_bn) == 8
    state, before = zeroed.state_dict(), plain.state_dict()
    assert all(not state[k].any() for k in last_bn) and all(before[k].all() for k in last_bn)
    assert_same_state({k: v for k, v in state.items() if k not in last_bn},
                      {k: v for k, v in before.items() if k not in last_bn})
    assert sum(p.numel() for p in zeroed.parameters() if p.requires_grad) == PAPER_PARAMETERS


def numpy_patch_pca(images: np.ndarray, out_channels: int, eps: float = 5e-4) -> np.ndarray:
    """The stem filters computed independently: every 3x3 patch of the float images (N, 3, H, W), their covariance,
    its eigenvectors by decreasing eigenvalue, each with its largest entry positive, over sqrt(eigenvalue + eps),
    the first ceil(out / 2) of them, then the same negated."""
    windows = np.lib.stride_tricks.sliding_window_view(images.astype(np.float64), (3, 3), axis=(2, 3))
    patches = windows.transpose(0, 2, 3, 1, 4, 5).reshape(-1, 27)          # (C, kh, kw): a conv weight's order
    values, vectors = np.linalg.eigh(np.cov(patches, rowvar=False))
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order].T
    vectors *= np.sign(vectors[np.arange(27), np.abs(vectors).argmax(1)])[:, None]
    scaled = vectors / np.sqrt(values + eps)[:, None]
    half = scaled[np.arange((out_channels + 1) // 2) % 27]
    return np.concatenate([half, -half])[:out_channels].reshape(out_channels, 3, 3, 3)


def test_the_patch_pca_stem_holds_the_principal_components_of_the_first_training_images(tmp_path, splits,
                                                                                        monkeypatch):
    monkeypatch.setattr(recipe, "PCA_IMAGES", 100)                      # the first 100 of the 180 training images
    torch.manual_seed(0)
    run = build_run(tiny_cfg(tmp_path, stem_init="patch_pca"), splits, CPU)
    torch.manual_seed(0)
    plain = build_run(tiny_cfg(tmp_path), splits, CPU)
    mean, std = (np.asarray(v).reshape(1, 3, 1, 1) for v in (splits.mean, splits.std))
    x = (splits.train_images.transpose(0, 3, 1, 2) / 255 - mean) / std    # normalized as the training batches
    stem = run.model.stem[0][0].weight
    assert stem.shape == (8, 3, 3, 3) and stem.requires_grad
    np.testing.assert_allclose(stem.detach().numpy(), numpy_patch_pca(x[:100], 8), rtol=1e-4, atol=1e-5)
    assert not np.allclose(stem.detach().numpy(), numpy_patch_pca(x, 8), atol=1e-3)   # the first 100, no others
    # Nothing else moved: the initialisation drew the same numbers, and no parameter was added
    same = {k: v for k, v in run.model.state_dict().items() if k != "stem.0.0.weight"}
    assert_same_state(same, {k: v for k, v in plain.model.state_dict().items() if k != "stem.0.0.weight"})
    full = build_model(Config(stem_init="patch_pca"))
    assert sum(p.numel() for p in full.parameters() if p.requires_grad) == PAPER_PARAMETERS


def test_patch_pca_filters_come_in_signed_pairs_and_repeat_past_the_components():
    # Correlated columns, unequal channels: distinct variances, so each component is defined up to its sign
    noise = np.random.default_rng(1).normal(size=(20, 3, 32, 32))
    images = torch.from_numpy(noise.cumsum(axis=3) * np.array([1, 2, 3]).reshape(1, 3, 1, 1)).float()
    filters = patch_pca_filters(images, 60)                 # 30 pairs from 27 components: the first 3 again
    assert filters.shape == (60, 3, 3, 3) and torch.isfinite(filters).all()
    assert torch.equal(filters[30:], -filters[:30]) and torch.equal(filters[27:30], filters[:3])
    np.testing.assert_allclose(patch_pca_filters(images, 7).numpy(), numpy_patch_pca(images.numpy(), 7), rtol=1e-4,
                               atol=1e-5)


# --- the loader: alternating flip, the crop's padding --------------------------------------------------------
def flips_by_image(loader: DeviceLoader, epoch: int) -> torch.Tensor:
    loader.set_epoch(epoch)
    draws = loader.draw_epoch()
    flipped = torch.full((len(loader.images),), -1)
    flipped[draws["order"][:len(draws["flip"])]] = draws["flip"]
    return flipped


def test_with_alternating_flip_each_image_is_mirrored_every_other_epoch_and_nothing_else_changes():
    images, labels = images_for(45, 6), np.arange(45) % 10
    kw = dict(train=True, cutout_size=8, seed=11)
    alternating = DeviceLoader(images, labels, MEAN, STD, 16, "cpu", alternating_flip=True, **kw)
    coins = DeviceLoader(images, labels, MEAN, STD, 16, "cpu", **kw)
    by_epoch = [flips_by_image(alternating, e) for e in range(4)]
    assert 10 < int(by_epoch[0].sum()) < 35                                   # a random start, about half
    for e in range(3):
        assert torch.equal(by_epoch[e + 1], 1 - by_epoch[e]), f"epoch {e + 1} does not reverse epoch {e}"
    assert not all(torch.equal(flips_by_image(coins, e + 1), 1 - flips_by_image(coins, e)) for e in range(3))
    for epoch in (0, 1):
        alternating.set_epoch(epoch)
        coins.set_epoch(epoch)
        a, b = alternating.draw_epoch(), coins.draw_epoch()
        assert all(torch.equal(a[k], b[k]) for k in ("order", "dy", "dx", "cy", "cx"))    # only the flips differ
    # What trains: an image is the coin-flip loader's, mirrored where the two flips differ (no cutout here: its
    # square is erased after the flip)
    alternating.cutout_size = coins.cutout_size = 0
    for epoch in (0, 1):
        alternating.set_epoch(epoch)
        coins.set_epoch(epoch)
        mirrored = alternating.draw_epoch()["flip"] != coins.draw_epoch()["flip"]
        x_a, x_b = torch.cat([x for x, _ in alternating]), torch.cat([x for x, _ in coins])
        assert mirrored.any() and not mirrored.all()
        assert torch.equal(x_a[~mirrored], x_b[~mirrored]) and torch.equal(x_a[mirrored], x_b[mirrored].flip(3))


def reference_crops(images, draws, pad, mode):
    """Each training image of the epoch, in loader order, uint8 HWC: padded with numpy (zeros or 'reflect', the
    border row not repeated), cropped at (dy, dx), mirrored where flip."""
    out = []
    for k, i in enumerate(draws["order"][:len(draws["dy"])].tolist()):
        padded = np.pad(images[i], ((pad, pad), (pad, pad), (0, 0)), mode="constant" if mode == "zeros" else mode)
        x = padded[int(draws["dy"][k]):int(draws["dy"][k]) + 32, int(draws["dx"][k]):int(draws["dx"][k]) + 32]
        out.append(x[:, ::-1] if int(draws["flip"][k]) else x)
    return np.stack(out)


def loader_pixels(loader) -> np.ndarray:
    x = torch.cat([x for x, _ in loader])
    return ((x * loader.std + loader.mean) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("pad, mode", [(4, "reflect"), (8, "reflect"), (2, "zeros"), (0, "zeros"), (0, "reflect")])
def test_the_crop_pads_by_crop_padding_with_zeros_or_the_reflected_image(pad, mode):
    images, labels = images_for(40, 8), np.arange(40) % 10
    loader = DeviceLoader(images, labels, MEAN, STD, 16, "cpu", train=True, seed=2, crop_padding=pad,
                          padding_mode=mode)
    loader.set_epoch(1)
    draws = loader.draw_epoch()
    got = loader_pixels(loader)
    np.testing.assert_array_equal(got, reference_crops(images, draws, pad, mode))
    shifted = (draws["dy"] != pad) | (draws["dx"] != pad)
    assert shifted.any() if pad else not shifted.any()
    if pad and mode == "reflect":                    # the border holds image pixels, never the zero padding
        assert not np.array_equal(got, reference_crops(images, draws, pad, "zeros"))
        assert (got[shifted.numpy()].max(axis=-1) > 0).all()
    if not pad:                                      # no translation: the image itself, mirrored or not
        order = draws["order"][:len(got)].numpy()
        mirrored = draws["flip"].numpy() != 0
        np.testing.assert_array_equal(got[~mirrored], images[order[~mirrored]])
        np.testing.assert_array_equal(got[mirrored], images[order[mirrored]][:, :, ::-1])


def test_build_run_hands_the_crop_and_flip_knobs_to_the_training_loader_only(tmp_path, splits):
    run = build_run(tiny_cfg(tmp_path, crop_padding=2, padding_mode="reflect", alternating_flip=True), splits, CPU)
    assert (run.train_loader.crop_padding, run.train_loader.padding_mode, run.train_loader.alternating_flip) == (
        2, "reflect", True)
    plain = build_run(tiny_cfg(tmp_path), splits, CPU).train_loader
    assert (plain.crop_padding, plain.padding_mode, plain.alternating_flip) == (4, "zeros", False)


# --- test-time augmentation ---------------------------------------------------------------------------------
def test_each_tta_mode_makes_the_views_its_weights_count_on():
    x = torch.randn(2, 3, 32, 32)
    assert {mode: len(tta_views(x, mode, torch.zeros(1, 3, 1, 1))) for mode in TTA_VIEWS} == TTA_VIEWS


def reflect_shifted(images: np.ndarray, d: int) -> np.ndarray:
    """uint8 NHWC images moved d pixels down and right (up and left for d < 0), the border reflected."""
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    return padded[:, 1 - d:33 - d, 1 - d:33 - d]


def test_flip_translate_averages_the_image_its_mirror_and_both_moved_one_pixel_with_a_reflected_border():
    model = confident_model()
    images = np.random.default_rng(2).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    mirrored = images[:, :, ::-1]
    views = [images, mirrored, reflect_shifted(images, -1), reflect_shifted(images, 1),
             reflect_shifted(mirrored, -1), reflect_shifted(mirrored, 1)]
    expected, _ = by_hand(model, views)
    got = predict_proba(model, images, MEAN, STD, torch.device("cpu"), batch_size=4, tta="flip_translate")
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert not np.allclose(got, predict_proba(model, images, MEAN, STD, torch.device("cpu"), tta="flip_shift"),
                           atol=1e-3)


def test_tta_weights_weigh_each_views_probabilities_and_reach_the_config_path():
    model = confident_model()
    images = np.random.default_rng(3).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    views = [images, images[:, :, ::-1], reflect_shifted(images, -1), reflect_shifted(images, 1),
             reflect_shifted(images[:, :, ::-1], -1), reflect_shifted(images[:, :, ::-1], 1)]
    probs = np.stack([by_hand(model, [v])[0] for v in views])
    args = (MEAN, STD, torch.device("cpu"))
    weights = [2, 2, 1, 1, 1, 1]                                             # airbench's
    got = predict_proba(model, images, *args, tta="flip_translate", tta_weights=weights)
    np.testing.assert_allclose(got, np.tensordot(np.array(weights) / 8, probs, 1), rtol=0, atol=1e-5)
    assert not np.allclose(got, predict_proba(model, images, *args, tta="flip_translate"), atol=1e-3)
    mirror_only = predict_proba(model, images, *args, tta="flip", tta_weights=[0, 1])
    np.testing.assert_allclose(mirror_only, probs[1], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"tta_weights = \[1, 1\]: expected 6 weight"):
        predict_proba(model, images, *args, tta="flip_translate", tta_weights=[1, 1])
    # Notebook 04's path (robustness): the profile's weights
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    checkpoint = {"normalization": {"mean": MEAN, "std": STD}}
    weighted = uint8_log_probs(model, checkpoint, batch, Config(tta="flip", tta_weights=[0, 1])).exp().numpy()
    np.testing.assert_allclose(weighted, probs[1], rtol=0, atol=1e-5)


# --- EMA ----------------------------------------------------------------------------------------------------
def test_ema_window_sets_the_decay_from_the_runs_step_count(tmp_path, splits):
    run = build_run(tiny_cfg(tmp_path, epochs=5, ema_window=0.5), splits, CPU)
    steps = 5 * len(run.train_loader)                                         # 5 x 6 = 30
    assert steps == 30 and run.ema is not None and run.ema.decay == pytest.approx(1 - 1 / 15)
    assert build_run(tiny_cfg(tmp_path, epochs=2, ema_window=0.05), splits, CPU).ema.decay == 0.0   # under a step
    assert build_run(tiny_cfg(tmp_path, ema_decay=0.99), splits, CPU).ema.decay == 0.99
    assert build_run(tiny_cfg(tmp_path), splits, CPU).ema is None


# --- resume with the knobs on -------------------------------------------------------------------------------
ALL_KNOBS = dict(schedule="linear", decay_norm_and_bias=False, zero_init_residual=True, stem_init="patch_pca",
                 alternating_flip=True, crop_padding=3, padding_mode="reflect", ema_window=0.3)


@pytest.mark.parametrize("knobs", [{"schedule": "linear"}, ALL_KNOBS], ids=["linear", "all-knobs"])
def test_one_epoch_then_a_resumed_epoch_equals_two_epochs_straight(tmp_path, splits, knobs):
    straight = fit(tiny_cfg(tmp_path, "straight", epochs=2, **knobs), splits, progress=False, log=lambda line: None)
    first = fit(tiny_cfg(tmp_path, "resumed", epochs=2, **knobs), splits, progress=False, max_epochs_this_call=1,
                log=lambda line: None)
    assert len(first.history) == 1 and not first.finished
    resumed = fit(tiny_cfg(tmp_path, "resumed", epochs=2, **knobs), splits, progress=False, log=lambda line: None)
    a, b = load_checkpoint(straight.last_path), load_checkpoint(resumed.last_path)
    assert_same_state(a["model"], b["model"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 12
    assert resumed.history["lr"].iloc[-1] == 0.0                 # the linear schedule ends at 0
    if "ema_window" in knobs:
        assert_same_state(a["ema"]["module"], b["ema"]["module"], "EMA weights")
    pd.testing.assert_frame_equal(without_time(straight.history), without_time(resumed.history))
