"""utils.corruptions: deterministic corruptions, severity ordering, and the robustness table.

Shape, determinism and table tests use small synthetic images; severity-ordering tests use 200 real CIFAR-10
test images (the `cifar_dir` fixture), where "harder" means something."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from utils.corruptions import (
    CORRUPTIONS,
    PARAMETERS,
    RANDOM_CORRUPTIONS,
    SEVERITIES,
    corrupt,
    corruption_seed,
    robustness_table,
    summarize,
)
from utils.dataset import BATCHES_SUBDIR, TEST_FILE, load_batch

DETERMINISTIC = tuple(n for n in CORRUPTIONS if n not in RANDOM_CORRUPTIONS)
SMALL_NAMES = ("gaussian_noise", "contrast", "motion_blur")
SMALL_SEVERITIES = (1, 4)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def synthetic(n: int = 12, seed: int = 0) -> torch.Tensor:
    """Smooth random colour fields plus texture: every corruption has something to change."""
    g = gen(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)
    texture = 0.15 * torch.rand(n, 3, 32, 32, generator=g)
    return ((0.1 + 0.7 * smooth + texture) * 255).round().clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def real(cifar_dir) -> torch.Tensor:
    images, _ = load_batch(cifar_dir / BATCHES_SUBDIR / TEST_FILE)
    return torch.from_numpy(images[:200]).permute(0, 3, 1, 2).contiguous()


def by_severity(images: torch.Tensor, name: str, seed: int = 0) -> list[torch.Tensor]:
    """The images at every severity, each drawn with the same seed (same noise field, same blur angles)."""
    return [corrupt(images, name, s, gen(seed)).float() for s in SEVERITIES]


def strictly_increasing(values: list[float]) -> bool:
    return all(a < b for a, b in itertools.pairwise(values))


# --------------------------------------------------------------------------------------------
# The catalogue
# --------------------------------------------------------------------------------------------
def test_catalogue_has_nine_types_five_severities_and_a_parameter_per_severity():
    assert set(CORRUPTIONS) >= {"gaussian_noise", "shot_noise", "gaussian_blur", "motion_blur", "contrast",
                                "brightness", "saturate", "jpeg", "pixelate"}
    assert SEVERITIES == (1, 2, 3, 4, 5)
    assert all(len(PARAMETERS[n]) == len(SEVERITIES) for n in CORRUPTIONS)
    assert set(RANDOM_CORRUPTIONS) < set(CORRUPTIONS)


# --------------------------------------------------------------------------------------------
# corrupt(): contract
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_severity_changes_the_images_and_keeps_shape_dtype_device(name):
    images = synthetic()
    before = images.clone()
    for severity in SEVERITIES:
        out = corrupt(images, name, severity, gen())
        assert out.shape == images.shape and out.dtype == torch.uint8 and out.device == images.device
        assert (out.float() - images.float()).abs().mean() > 0.5, f"{name} severity {severity} barely changed"
    assert torch.equal(images, before), "corrupt() must not modify its input"


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "brightness", "saturate", "contrast"])
def test_values_are_clamped_not_wrapped_at_black_and_white(name):
    black = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    white = torch.full((4, 3, 32, 32), 255, dtype=torch.uint8)
    # A wrap-around (-3 -> 253, 258 -> 2) would put far-away values in; clamping keeps them near the extremes.
    assert corrupt(black, name, 1, gen()).max() < 128
    assert corrupt(white, name, 1, gen()).min() > 128
    noisy = corrupt(torch.full((4, 3, 32, 32), 250, dtype=torch.uint8), "gaussian_noise", 5, gen())
    assert (noisy == 255).float().mean() > 0.2   # about 42% of N(250, 25.5) lies above 255


def test_empty_batch_comes_back_empty():
    empty = torch.zeros(0, 3, 32, 32, dtype=torch.uint8)
    assert corrupt(empty, "jpeg", 3, gen()).shape == (0, 3, 32, 32)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_same_seed_gives_identical_images(name):
    images = synthetic()
    for severity in (1, 5):
        assert torch.equal(corrupt(images, name, severity, gen(7)), corrupt(images, name, severity, gen(7)))


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_channels_last_input_gives_the_same_images(name):
    images = synthetic()
    channels_last = images.contiguous(memory_format=torch.channels_last)
    assert torch.equal(corrupt(images, name, 3, gen(4)), corrupt(channels_last, name, 3, gen(4)))


@pytest.mark.parametrize("name", RANDOM_CORRUPTIONS)
def test_different_seed_gives_different_images_for_random_corruptions(name):
    images = synthetic()
    for severity in (1, 5):
        assert not torch.equal(corrupt(images, name, severity, gen(1)), corrupt(images, name, severity, gen(2)))


@pytest.mark.parametrize("name", RANDOM_CORRUPTIONS)
def test_the_generator_is_the_only_source_of_randomness(name):
    images = synthetic()
    torch.manual_seed(1)
    first = corrupt(images, name, 3, gen(5))
    torch.manual_seed(2)                 # the global RNG must not matter
    assert torch.equal(first, corrupt(images, name, 3, gen(5)))


def test_each_image_gets_its_own_motion_angle():
    same = synthetic(1).expand(16, -1, -1, -1).contiguous()
    out = corrupt(same, "motion_blur", 5, gen())
    assert len({tuple(img.flatten().tolist()) for img in out}) > 8


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_corruptions_do_not_depend_on_the_seed(name):
    images = synthetic()
    assert torch.equal(corrupt(images, name, 3, gen(1)), corrupt(images, name, 3, gen(2)))


@pytest.mark.parametrize("bad", ["gaussian", "", "clean", None, "JPEG"])
def test_unknown_corruption_raises_value_error_naming_it_and_the_allowed(bad):
    with pytest.raises(ValueError) as err:
        corrupt(synthetic(2), bad, 1, gen())
    assert repr(bad) in str(err.value) and "gaussian_noise" in str(err.value) and "pixelate" in str(err.value)


@pytest.mark.parametrize("bad", [0, 6, -1, 2.0, "3", True, None])
def test_unknown_severity_raises_value_error_naming_it_and_the_allowed(bad):
    with pytest.raises(ValueError) as err:
        corrupt(synthetic(2), "contrast", bad, gen())
    assert repr(bad) in str(err.value) and "1, 2, 3, 4, 5" in str(err.value)


@pytest.mark.parametrize("images", [torch.zeros(2, 3, 32, 32), torch.zeros(2, 32, 32, 3, dtype=torch.uint8),
                                    np.zeros((2, 3, 32, 32), dtype=np.uint8)])
def test_images_must_be_uint8_nchw_tensors(images):
    with pytest.raises(ValueError, match="uint8"):
        corrupt(images, "contrast", 1, gen())


def test_generator_must_be_a_cpu_generator():
    with pytest.raises(ValueError, match="generator"):
        corrupt(synthetic(2), "gaussian_noise", 1, None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_same_images_on_cuda_as_on_cpu(name):
    images = synthetic(64)
    cpu = corrupt(images, name, 4, gen(3))
    cuda = corrupt(images.cuda(), name, 4, gen(3))
    assert cuda.device.type == "cuda"
    assert (cuda.cpu().int() - cpu.int()).abs().max() <= 1     # float rounding in filters only


# --------------------------------------------------------------------------------------------
# Severity ordering (real images)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_mean_absolute_change_grows_with_severity(real, name):
    mad = [(out - real.float()).abs().mean().item() for out in by_severity(real, name)]
    assert strictly_increasing(mad), f"{name}: {mad}"


def high_frequency_energy(x: torch.Tensor) -> float:
    """Mean squared difference between horizontal and vertical neighbours."""
    return ((x[..., 1:, :] - x[..., :-1, :]) ** 2).mean().item() + ((x[..., 1:] - x[..., :-1]) ** 2).mean().item()


@pytest.mark.parametrize("name", ["gaussian_blur", "motion_blur"])
def test_blur_lowers_high_frequency_energy_with_severity(real, name):
    energy = [high_frequency_energy(real.float())] + [high_frequency_energy(o) for o in by_severity(real, name)]
    assert strictly_increasing(energy[::-1]), f"{name}: {energy}"


def impulse(n: int = 4) -> torch.Tensor:
    x = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    x[:, :, 16, 16] = 255
    return x


@pytest.mark.parametrize("severity", SEVERITIES)
def test_gaussian_blur_has_the_listed_sigma_in_pixels_and_a_4_sigma_kernel(severity):
    sigma = PARAMETERS["gaussian_blur"][severity - 1]
    k = torch.arange(-int(4 * sigma + 0.5), int(4 * sigma + 0.5) + 1, dtype=torch.float64)
    g = torch.exp(-k ** 2 / (2 * sigma ** 2))
    g /= g.sum()
    expected = torch.zeros(32, 32, dtype=torch.float64)
    expected[16 + int(k[0]):16 + int(k[-1]) + 1, 16 + int(k[0]):16 + int(k[-1]) + 1] = 255 * torch.outer(g, g)
    out = corrupt(impulse(), "gaussian_blur", severity, gen()).double()
    assert (out - expected.round()).abs().max() <= 1


@pytest.mark.parametrize("severity", SEVERITIES)
def test_motion_blur_is_a_one_sided_gaussian_of_the_listed_sigma(severity):
    radius, sigma = PARAMETERS["motion_blur"][severity - 1]
    t = torch.arange(2 * radius + 1, dtype=torch.float64)
    w = torch.exp(-t ** 2 / (2 * sigma ** 2))
    w /= w.sum()
    out = corrupt(impulse(16), "motion_blur", severity, gen()).double()
    assert (out[:, :, 16, 16] - 255 * w[0]).abs().max() <= 1            # only tap 0 lands on the centre
    assert (out.sum(dim=(2, 3)) - 255).abs().max() <= 12               # the streak keeps the energy
    streak = (out[:, 0] > 0).sum(dim=(1, 2)).double()
    assert 0.5 * sigma < streak.mean() < 4 * sigma + 2                 # as long as the kernel's visible taps


def test_contrast_lowers_the_per_image_std_with_severity(real):
    std = [real.float().std(dim=(1, 2, 3)).mean().item()]
    std += [out.std(dim=(1, 2, 3)).mean().item() for out in by_severity(real, "contrast")]
    assert strictly_increasing(std[::-1]), std


def test_brightness_raises_the_mean_with_severity(real):
    mean = [real.float().mean().item()] + [out.mean().item() for out in by_severity(real, "brightness")]
    assert strictly_increasing(mean), mean


def test_saturate_spreads_the_channels_with_severity(real):
    def spread(x: torch.Tensor) -> float:
        return (x.amax(1) - x.amin(1)).mean().item()
    values = [spread(real.float())] + [spread(out) for out in by_severity(real, "saturate")]
    assert strictly_increasing(values), values


# --------------------------------------------------------------------------------------------
# corruption_seed
# --------------------------------------------------------------------------------------------
def test_corruption_seed_is_stable_across_processes_and_distinct_per_set():
    # Fixed values: a salted hash() (different in every process) or a changed recipe would break them.
    assert corruption_seed(0, "gaussian_noise", 1) == 7763232494068660857
    assert corruption_seed(1, "jpeg", 5) == 1283446348268841770
    seeds = {corruption_seed(s, n, v) for s in (0, 1) for n in CORRUPTIONS for v in SEVERITIES}
    assert len(seeds) == 2 * len(CORRUPTIONS) * len(SEVERITIES)
    assert all(0 <= s < 2 ** 63 for s in seeds)


# --------------------------------------------------------------------------------------------
# robustness_table and summarize
# --------------------------------------------------------------------------------------------
class Recorder:
    """A fake model: records what it is shown and answers `answer(images)`."""

    def __init__(self, answer):
        self.answer = answer
        self.seen: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor):
        self.seen.append(x.clone())
        return self.answer(x)


def test_table_has_the_clean_row_first_then_every_set_and_the_columns():
    images, labels = synthetic(10), np.arange(10) % 10
    table = robustness_table(Recorder(lambda x: labels[:len(x)]), images, labels, names=SMALL_NAMES,
                             severities=SMALL_SEVERITIES, progress=False)
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == ["corruption", "severity", "accuracy", "images"]
    assert table.iloc[0]["corruption"] == "clean" and table.iloc[0]["severity"] == 0
    expected = [("clean", 0)] + [(n, s) for n in SMALL_NAMES for s in SMALL_SEVERITIES]
    assert list(zip(table["corruption"], table["severity"])) == expected
    assert (table["images"] == 10).all()


def test_predict_sees_each_whole_set_once_clean_first_and_corrupted_with_the_sets_seed():
    images, labels = synthetic(10), np.zeros(10, dtype=int)
    model = Recorder(lambda x: np.zeros(len(x), dtype=int))
    robustness_table(model, images, labels, seed=3, names=SMALL_NAMES, severities=SMALL_SEVERITIES, progress=False)
    sets = [(n, s) for n in SMALL_NAMES for s in SMALL_SEVERITIES]
    assert len(model.seen) == 1 + len(sets)
    assert torch.equal(model.seen[0], images)
    for (name, severity), seen in zip(sets, model.seen[1:]):
        expected = corrupt(images, name, severity, gen(corruption_seed(3, name, severity)))
        assert torch.equal(seen, expected), f"{name} severity {severity}"


def test_the_seed_changes_random_sets_and_only_them():
    images, labels = synthetic(10), np.zeros(10, dtype=int)
    runs = {}
    for seed in (0, 0, 1):
        model = Recorder(lambda x: np.zeros(len(x), dtype=int))
        robustness_table(model, images, labels, seed=seed, names=("gaussian_noise", "jpeg"), severities=(2,),
                         progress=False)
        runs.setdefault(seed, []).append(model.seen)
    (a, b), (c,) = runs[0], runs[1]
    assert all(torch.equal(x, y) for x, y in zip(a, b))          # same seed: same images
    assert not torch.equal(a[1], c[1])                            # gaussian_noise: new noise
    assert torch.equal(a[2], c[2])                                # jpeg: no randomness


def test_severities_differ_within_a_table():
    images, labels = synthetic(10), np.zeros(10, dtype=int)
    model = Recorder(lambda x: np.zeros(len(x), dtype=int))
    robustness_table(model, images, labels, names=("contrast",), severities=(1, 5), progress=False)
    assert model.seen[1].float().std() > model.seen[2].float().std()


@pytest.mark.parametrize("limit, expected", [(0, 30), (7, 7), (30, 30), (100, 30)])
def test_limit_keeps_the_first_images_and_their_labels(limit, expected):
    images, labels = synthetic(30), np.arange(30) % 10
    model = Recorder(lambda x: labels[:len(x)])
    table = robustness_table(model, images, labels, limit=limit, names=("contrast",), severities=(1,), progress=False)
    assert [len(x) for x in model.seen] == [expected, expected]
    assert torch.equal(model.seen[0], images[:expected])
    assert (table["images"] == expected).all() and (table["accuracy"] == 1.0).all()


def test_negative_limit_raises():
    with pytest.raises(ValueError, match="limit"):
        robustness_table(lambda x: np.zeros(len(x)), synthetic(4), np.zeros(4), limit=-1, progress=False)


def test_accuracy_is_the_fraction_of_correct_ids_for_tensor_and_array_predictions():
    images = synthetic(20)
    labels = torch.arange(20) % 10
    clean = images.clone()

    def answer(x: torch.Tensor) -> torch.Tensor:
        # Right on the first 15 clean images; on corrupted sets, right on the first 4 only.
        pred = labels[:len(x)].clone()
        wrong_from = 15 if torch.equal(x, clean[:len(x)]) else 4
        pred[wrong_from:] = (pred[wrong_from:] + 1) % 10
        return pred

    table = robustness_table(answer, images, labels, names=("jpeg", "pixelate"), severities=(1, 2), progress=False)
    assert table["accuracy"].tolist() == pytest.approx([15 / 20] + [4 / 20] * 4)
    table = robustness_table(lambda x: answer(x).numpy(), images, labels.numpy(), limit=10, names=("jpeg",),
                             severities=(3,), progress=False)
    assert table["accuracy"].tolist() == pytest.approx([10 / 10, 4 / 10])


def test_logits_instead_of_ids_raise_a_clear_error():
    with pytest.raises(ValueError, match="class ids"):
        robustness_table(lambda x: torch.zeros(len(x), 10), synthetic(4), np.zeros(4), names=("jpeg",),
                         severities=(1,), progress=False)


def test_unknown_names_or_severities_raise_before_any_prediction():
    model = Recorder(lambda x: np.zeros(len(x)))
    with pytest.raises(ValueError, match="'fog'"):
        robustness_table(model, synthetic(4), np.zeros(4), names=("jpeg", "fog"), progress=False)
    with pytest.raises(ValueError, match="7"):
        robustness_table(model, synthetic(4), np.zeros(4), severities=(1, 7), progress=False)
    assert model.seen == []


def test_progress_bar_can_be_switched_off(capsys):
    robustness_table(lambda x: np.zeros(len(x)), synthetic(4), np.zeros(4), names=("jpeg",), severities=(1,),
                     progress=False)
    assert capsys.readouterr().err == ""
    robustness_table(lambda x: np.zeros(len(x)), synthetic(4), np.zeros(4), names=("jpeg",), severities=(1,),
                     progress=True)
    assert "corruptions" in capsys.readouterr().err


def test_summarize_reports_clean_mean_corruption_accuracy_and_gap():
    table = pd.DataFrame({"corruption": ["clean", "jpeg", "jpeg", "contrast"], "severity": [0, 1, 2, 1],
                          "accuracy": [0.9, 0.8, 0.6, 0.4], "images": [10] * 4})
    summary = summarize(table)
    assert summary["clean_accuracy"] == pytest.approx(0.9)
    assert summary["corruption_accuracy"] == pytest.approx(0.6)
    assert summary["gap"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="clean"):
        summarize(table.iloc[1:])


def test_summarize_of_a_real_table():
    images, labels = synthetic(10), np.arange(10)
    table = robustness_table(lambda x: labels[:len(x)], images, labels, names=("jpeg",), severities=(1, 5),
                             progress=False)
    assert summarize(table) == {"clean_accuracy": 1.0, "corruption_accuracy": 1.0, "gap": 0.0}
