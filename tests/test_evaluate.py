"""Predictions and metrics: deterministic, in order, matching scikit-learn."""
import numpy as np
import torch

from utils.evaluate import classification_table, confusion, most_confident_mistakes, predict_proba
from utils.model import CustomResNet


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
