"""The Kaggle submission: `ID,Labels`, one row per id of the unlabeled pickle, in file order.

Design choices: the CSV is written to a temporary file beside the target, validated against the
pickle it answers, and only then renamed over `submission.csv`; a failure at any point leaves the
previous submission untouched and no partial file behind. The validator is public so a CSV made
elsewhere can be checked before the upload too. The labels submitted are the ensemble's
(`predict_unlabeled_ensemble`: the mean of every finished member's probabilities, utils.ensemble); with one
member that is the member itself.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .config import NUM_CLASSES, Config
from .dataset import load_unlabeled
from .ensemble import Member, ensemble_probabilities, predict_members
from .runtime import platforms
from .runtime.files import atomic_write
from .runtime.locate import KAGGLE_COMPETITION

HEADER = ["ID", "Labels"]


class SubmissionError(ValueError):
    pass


def validate_submission(csv_path: str | Path, nolabel_path: str | Path | None = None,
                        ids: np.ndarray | None = None) -> pd.DataFrame:
    """Check a submission against the unlabeled pickle (or its ids); return it as a DataFrame.

    Checks: exact header `ID,Labels`; one row per id; every id exactly once and no other; integer
    labels in 0-9. Raises SubmissionError listing every problem found."""
    csv_path = Path(csv_path)
    if ids is None:
        if nolabel_path is None:
            raise ValueError("give nolabel_path or ids to validate against")
        ids = load_unlabeled(nolabel_path)[1]
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise SubmissionError(f"{csv_path}: cannot be read as CSV ({exc}).") from exc
    problems = []
    if list(df.columns) != HEADER:
        problems.append(f"header is {','.join(map(str, df.columns))!r}, expected 'ID,Labels'")
    else:
        expected = pd.Index(np.asarray(ids).astype(str))
        got = pd.Index(df["ID"].str.strip())
        if len(df) != len(expected):
            problems.append(f"{len(df)} rows, expected {len(expected)} (one per id)")
        dup = got[got.duplicated()].unique()
        if len(dup):
            problems.append(f"duplicate ids: {list(dup[:5])}")
        missing, extra = expected.difference(got), got.difference(expected)
        if len(missing):
            problems.append(f"{len(missing)} id(s) missing, e.g. {list(missing[:5])}")
        if len(extra):
            problems.append(f"{len(extra)} unknown id(s), e.g. {list(extra[:5])}")
        labels = pd.to_numeric(df["Labels"], errors="coerce")
        bad = df["Labels"][labels.isna() | (labels % 1 != 0) | (labels < 0) | (labels >= NUM_CLASSES)]
        if len(bad):
            problems.append(f"{len(bad)} label(s) not an integer 0-{NUM_CLASSES - 1}, e.g. {list(bad[:5])}")
    if problems:
        raise SubmissionError(f"{csv_path}: invalid submission:\n  - " + "\n  - ".join(problems))
    return df.astype({"Labels": int})


def write_submission(ids: np.ndarray, labels: np.ndarray, path: str | Path,
                     nolabel_path: str | Path | None = None) -> Path:
    """Write `ID,Labels` atomically; validated against the pickle (or `ids`) before it replaces `path`."""
    path = Path(path)
    ids, labels = np.asarray(ids).reshape(-1), np.asarray(labels).reshape(-1)
    if len(ids) != len(labels):
        raise SubmissionError(f"{path}: {len(ids)} ids but {len(labels)} predictions; nothing written.")
    table = pd.DataFrame({"ID": ids, "Labels": labels})

    def check(tmp: Path) -> None:
        if nolabel_path is not None:
            validate_submission(tmp, nolabel_path)
        else:
            validate_submission(tmp, ids=ids)

    return atomic_write(path, lambda f: f.write(table.to_csv(index=False).encode()), what="submission",
                        setting="submission_path", check=check)


def copy_for_kaggle(path: str | Path) -> Path | None:
    """On Kaggle, also put the submission at /kaggle/working/submission.csv (where Kaggle users and its
    "Submit" button look); returns that path, or None elsewhere or when `path` already is it."""
    target = platforms.kaggle_submission()
    path = Path(path)
    if platforms.detect() != "kaggle" or path.resolve() == target.resolve():
        return None
    return atomic_write(target, lambda f: f.write(path.read_bytes()), what="submission copy")


def kaggle_command(path: str | Path, message: str = "CustomResNet") -> str:
    return f'kaggle competitions submit -c {KAGGLE_COMPETITION} -f {path} -m "{message}"'


def predict_unlabeled_ensemble(members: list[Member], nolabel_path: str | Path, cfg: Config,
                               plan=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, predicted labels, probabilities) for the unlabeled pickle from the ensemble of `members`: the mean of
    their probabilities, each with the profile's TTA and its own checkpoint's normalisation."""
    images, ids = load_unlabeled(nolabel_path)
    probs = ensemble_probabilities(predict_members(members, images, cfg, plan))
    return ids, probs.argmax(1), probs
