"""Predictions and metrics: deterministic, in order, matching scikit-learn."""
import numpy as np
import pytest
import torch

from benchmarks.self_training import adapt_batchnorm
from utils.evaluate import (
    TTA_SHIFT,
    classification_table,
    confusion,
    most_confident_mistakes,
    predict_proba,
)
from utils.model import CustomResNet

MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]


def test_predict_proba_is_deterministic_ordered_and_tta_is_flip_invariant():
    torch.manual_seed(0)
    model = CustomResNet(channels=(8, 16), blocks=(1, 1)).eval()
    images = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    args = ([0.5] * 3, [0.25] * 3, torch.device("cpu"))
    p = predict_proba(model, images, *args, batch_size=5)
    assert p.shape == (12, 10) and np.allclose(p.sum(1), 1, atol=1e-5)
    assert np.array_equal(p, predict_proba(model, images, *args, batch_size=5))
    np.testing.assert_allclose(p[3:4], predict_proba(model, images[3:4], *args), atol=1e-6)
    tta = predict_proba(model, images, *args, tta=True)
    tta_mirrored = predict_proba(model, images[:, :, ::-1].copy(), *args, tta=True)
    np.testing.assert_allclose(tta, tta_mirrored, atol=1e-5)
    assert not np.allclose(tta, p, atol=1e-5)


def test_report_and_confusion_match_the_labels():
    classes = [f"c{i}" for i in range(10)]
    y_true = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    y_pred = np.array([0, 1, 1, 1, 2, 0, 3, 3, 4, 4])
    table = classification_table(y_true, y_pred, classes)
    assert table.loc["c0", "precision"] == 0.5 and table.loc["c1", "recall"] == 1.0
    assert table.loc["c5", "support"] == 0 and table.loc["accuracy", "precision"] == 0.8
    cm = confusion(y_true, y_pred)
    assert cm.shape == (10, 10) and cm.sum() == 10 and cm[0, 1] == 1 and cm[2, 0] == 1
    assert np.allclose(confusion(y_true, y_pred, normalize="true")[:5].sum(1), 1)


def test_most_confident_mistakes_are_wrong_and_sorted():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3]])
    y = np.array([1, 1, 0, 1])
    assert most_confident_mistakes(probs, y, k=5).tolist() == [0, 3, 2]


# --- test-time augmentation: the mean of the views' softmaxes ---------------------------------------
def confident_model():
    """A tiny random model with large logits, so that averaging softmaxes and averaging logits differ clearly."""
    torch.manual_seed(1)
    model = CustomResNet(channels=(8, 16), blocks=(1, 1)).eval()
    with torch.no_grad():
        model.fc.weight.mul_(40)
    return model


def shifted(images: np.ndarray, d: int) -> np.ndarray:
    """uint8 NHWC images moved d pixels down and right (up and left for d < 0), the border filled with black."""
    out = np.zeros_like(images)
    if d >= 0:
        out[:, d:, d:] = images[:, :images.shape[1] - d, :images.shape[2] - d]
    else:
        out[:, :d, :d] = images[:, -d:, -d:]
    return out


def by_hand(model, views: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(mean of the views' softmaxes, softmax of the mean logits) for uint8 NHWC views."""
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = [model((torch.from_numpy(v.copy()).permute(0, 3, 1, 2).float() / 255 - mean) / std) for v in views]
    probs = torch.stack([torch.softmax(z, 1) for z in logits]).mean(0)
    return probs.numpy(), torch.softmax(torch.stack(logits).mean(0), 1).numpy()


@pytest.mark.parametrize("mode", ["flip", "flip_shift"])
def test_tta_is_the_mean_of_the_views_softmaxes_not_of_their_logits(mode):
    model = confident_model()
    images = np.random.default_rng(2).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    mirrored = images[:, :, ::-1]
    views = [images, mirrored]
    if mode == "flip_shift":   # x and flip(x), each also translated by (-2, -2) and (+2, +2) with black fill
        assert TTA_SHIFT == 2
        views += [shifted(images, -2), shifted(images, 2), shifted(mirrored, -2), shifted(mirrored, 2)]
    expected, logit_mean = by_hand(model, views)
    got = predict_proba(model, images, MEAN, STD, torch.device("cpu"), batch_size=4, tta=mode)
    assert not np.allclose(expected, logit_mean, atol=1e-3)   # the two averages are told apart here
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    plain, _ = by_hand(model, views[:1])
    assert not np.allclose(got, plain, atol=1e-3)


def test_batchnorm_adaptation_takes_the_statistics_of_the_new_images_and_keeps_every_weight():
    torch.manual_seed(0)
    model = CustomResNet(channels=(8, 16), blocks=(1, 1)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = np.random.default_rng(1).integers(0, 120, (20, 32, 32, 3), dtype=np.uint8)    # darker than training
    checkpoint = {"normalization": {"mean": MEAN, "std": STD}}
    adapted = adapt_batchnorm(model, checkpoint, images, torch.device("cpu"), batch_size=5)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - torch.tensor(MEAN)[:, None, None]) \
        / torch.tensor(STD)[:, None, None]
    conv_out = model.stem[0][0](x)                        # what the first BatchNorm sees, for all 20 images
    bn = adapted.stem[0][1]
    torch.testing.assert_close(bn.running_mean, conv_out.mean((0, 2, 3)), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(bn.running_mean, model.stem[0][1].running_mean)
    assert not adapted.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    weights = [k for k in before if "running" not in k and "num_batches" not in k]
    assert all(torch.equal(adapted.state_dict()[k], before[k]) for k in weights)
