"""The Kaggle CSV: right format, validated, and never half-written."""
import numpy as np
import pandas as pd
import pytest
from layouts import make_layout

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
