"""The Kaggle CSV: right format, validated, and never half-written."""
import numpy as np
import pandas as pd
import pytest
import torch
from layouts import dump, make_layout

from utils.dataset import NOLABEL_FILE
from utils.submission import SubmissionError, kaggle_command, validate_submission, write_submission


@pytest.fixture
def nolabel(tmp_path):
    return make_layout(tmp_path / "cifar", n_unlabeled=30) / NOLABEL_FILE


def test_writes_id_labels_in_file_order_and_validates(tmp_path, nolabel):
    labels = np.arange(30) % 10
    path = write_submission(np.arange(30), labels, tmp_path / "sub" / "submission.csv", nolabel)
    lines = path.read_text().splitlines()
    assert lines[0] == "ID,Labels" and lines[1] == "0,0" and len(lines) == 31
    df = validate_submission(path, nolabel)
    assert df["Labels"].tolist() == labels.tolist()


@pytest.mark.parametrize("csv, problem", [
    ("id,label\n" + "".join(f"{i},1\n" for i in range(30)), "header is 'id,label'"),
    ("ID,Labels\n" + "".join(f"{i},1\n" for i in range(29)), "29 rows, expected 30"),
    ("ID,Labels\n" + "".join(f"{i},1\n" for i in range(29)) + "0,1\n", "duplicate ids"),
    ("ID,Labels\n" + "".join(f"{i},1\n" for i in range(29)) + "77,1\n", "unknown id"),
    ("ID,Labels\n" + "".join(f"{i},1\n" for i in range(29)) + "29,10\n", "not an integer 0-9"),
    ("ID,Labels\n" + "".join(f"{i},1\n" for i in range(29)) + "29,cat\n", "not an integer 0-9"),
    ("ID,Labels\n" + "".join(f"{i},1\n" for i in range(29)) + "29,2.5\n", "not an integer 0-9"),
])
def test_validator_names_each_problem(tmp_path, nolabel, csv, problem):
    path = tmp_path / "bad.csv"
    path.write_text(csv)
    with pytest.raises(SubmissionError, match=problem) as err:
        validate_submission(path, nolabel)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("ids, labels", [
    (np.arange(30), np.full(30, 12)),          # labels outside 0-9
    (np.arange(29), np.zeros(29, int)),        # an id missing
    (np.arange(30), np.zeros(28, int)),        # fewer predictions than ids
])
def test_a_failed_write_leaves_the_previous_submission_untouched(tmp_path, nolabel, ids, labels):
    path = write_submission(np.arange(30), np.ones(30, int), tmp_path / "submission.csv", nolabel)
    before = path.read_bytes()
    with pytest.raises(SubmissionError):
        write_submission(ids, labels, path, nolabel)
    # sorted(): iterdir() order is the file system's, not alphabetical
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["cifar", "submission.csv"]


def test_real_submission_shape(cifar_dir, tmp_path):
    from utils.dataset import load_unlabeled
    _, ids = load_unlabeled(cifar_dir / NOLABEL_FILE)
    path = write_submission(ids, np.zeros(len(ids), int), tmp_path / "submission.csv", cifar_dir / NOLABEL_FILE)
    assert len(pd.read_csv(path)) == 10000
    assert "deep-learning-spring-2025-project-1" in kaggle_command(path)


class PixelLinear(torch.nn.Module):
    """A fixed random linear map of the pixels: fast, and its predictions spread over the classes (a freshly
    initialised CustomResNet can give one class for every image, which would hide a wrong pairing)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(3 * 32 * 32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def test_each_row_is_the_prediction_for_that_ids_image_when_ids_are_shuffled_and_not_contiguous(cifar_dir, tmp_path):
    """The pairing, by behaviour: a pickle of known test images whose ids are neither 0..N-1 nor sorted (the
    competition's need not be); each row's label must be the model's prediction for the image that row's id names.
    Comparing id sets alone would pass with ids sorted apart from their images."""
    from utils.checkpoint import Progress
    from utils.config import Config
    from utils.dataset import load_cifar10
    from utils.ensemble import Member
    from utils.evaluate import predict_with_checkpoint
    from utils.submission import predict_unlabeled_ensemble

    test_images = load_cifar10(cifar_dir).test_images[:64]
    rng = np.random.default_rng(26)
    order = rng.permutation(len(test_images))                    # the pickle's k-th image is test image order[k]
    ids = rng.choice(1_000_000, size=len(test_images), replace=False).astype(np.int64)
    assert list(ids) != sorted(ids) and set(ids) != set(range(len(ids)))
    nolabel = dump({b"data": test_images[order], b"ids": ids}, tmp_path / NOLABEL_FILE)

    checkpoint = {"normalization": {"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]}}
    model = PixelLinear().eval()
    member = Member(0, tmp_path, Progress(1, 1, True, False, 0, 0), model, checkpoint)
    own = predict_with_checkpoint(model, checkpoint, test_images, torch.device("cpu")).argmax(1)  # in test order
    expected = {int(i): int(own[k]) for i, k in zip(ids, order)}
    assert len(set(expected.values())) >= 5, "the model predicts too few classes for the pairing to show"

    cfg = Config(tta="none")
    found_ids, labels, _ = predict_unlabeled_ensemble([member], nolabel, cfg)   # what notebook 05 calls
    path = write_submission(found_ids, labels, tmp_path / "submission.csv", nolabel)
    rows = pd.read_csv(path)
    assert rows["ID"].tolist() == ids.tolist()                   # the pickle's order
    wrong = {i: (got, expected[i]) for i, got in zip(rows["ID"], rows["Labels"]) if got != expected[i]}
    assert not wrong, f"{len(wrong)} of {len(rows)} rows carry another image's label, e.g. {list(wrong.items())[:3]}"
