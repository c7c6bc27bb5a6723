"""Outputs that cannot be written: a clear OutputError naming the path, the previous file whole, no temp left.

CI runs as root, so permissions do not bite: the failures are a parent that is a file and a full disk
(OSError ENOSPC, patched in where the bytes are written or flushed to disk)."""
import errno
import os

import numpy as np
import pandas as pd
import pytest
import torch

from utils import plots
from utils.checkpoint import save_checkpoint
from utils.config import Config
from utils.dataset import load_cifar10, prepare_splits
from utils.runtime import files
from utils.runtime.files import atomic_write
from utils.runtime.platforms import OutputError
from utils.submission import write_submission
from utils.train import fit


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def temporaries(folder):
    return sorted(p.name for p in folder.rglob("*.tmp"))


@pytest.fixture
def blocker(tmp_path):
    """A file where a folder should be."""
    path = tmp_path / "not-a-folder"
    path.write_bytes(b"I am a file")
    return path


@pytest.fixture
def disk_full(monkeypatch):
    """Every fsync fails as on a full disk (the write itself went to the page cache)."""
    monkeypatch.setattr(files.os, "fsync", no_space)


def assert_names(err, path, reason):
    assert err.path == path and str(path) in str(err) and reason in str(err)


# --- atomic_write itself ------------------------------------------------------------------------------
def test_atomic_write_under_a_file_raises_output_error_naming_the_path(tmp_path, blocker):
    target = blocker / "out.txt"
    with pytest.raises(OutputError) as err:
        atomic_write(target, lambda f: f.write(b"data"), what="table", setting="figures_dir")
    assert_names(err.value, target, "is a file, not a folder")
    assert "figures_dir" in str(err.value)
    assert blocker.read_bytes() == b"I am a file" and sorted(p.name for p in tmp_path.iterdir()) == [blocker.name]


def test_a_full_disk_while_writing_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.bin"
    atomic_write(target, lambda f: f.write(b"previous"))

    def half_then_full(f):
        f.write(b"half of the new")
        no_space()

    with pytest.raises(OutputError) as err:
        atomic_write(target, half_then_full, what="checkpoint", setting="run_dir")
    assert_names(err.value, target, "no space left on the device")
    assert isinstance(err.value.__cause__, OSError) and err.value.__cause__.errno == errno.ENOSPC
    assert target.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_a_full_disk_at_fsync_leaves_the_previous_file_and_no_temporary(tmp_path, disk_full):
    target = tmp_path / "out.bin"
    target.write_bytes(b"previous")
    with pytest.raises(OutputError) as err:
        atomic_write(target, lambda f: f.write(b"new"))
    assert_names(err.value, target, "no space left on the device")
    assert target.read_bytes() == b"previous" and temporaries(tmp_path) == []


def read(path):
    return torch.load(path, map_location="cpu", weights_only=True)


# --- the rename itself, by behaviour --------------------------------------------------------------------
# "Every file the project writes goes to a temporary file first and is renamed into place": a save must put a NEW
# file at the path and leave the old one untouched for whoever still has it open, never rewrite it in place.
def test_a_reader_of_the_old_best_pt_still_reads_its_old_bytes_whole_after_a_save(tmp_path):
    path = tmp_path / "checkpoints" / "best.pt"
    save_checkpoint({"epoch": 1, "weights": torch.arange(50_000, dtype=torch.float32)}, path)
    old = path.read_bytes()
    with open(path, "rb") as reader:                 # notebook 04 reading best.pt while 03 saves a better one
        head = reader.read(1000)
        save_checkpoint({"epoch": 2, "weights": torch.zeros(80_000)}, path)
        rest = reader.read()
        reader.seek(0)
        seen = torch.load(reader, map_location="cpu", weights_only=True)
    assert head + rest == old, "the open file changed under its reader: the save rewrote it in place"
    assert seen["epoch"] == 1 and torch.equal(seen["weights"], torch.arange(50_000, dtype=torch.float32))
    assert read(path)["epoch"] == 2 and temporaries(tmp_path) == []


def test_a_save_puts_a_new_file_at_the_path_and_leaves_the_old_one_untouched(tmp_path):
    path = tmp_path / "best.pt"
    save_checkpoint({"epoch": 1}, path)
    old_name = tmp_path / "old-best.pt"
    os.link(path, old_name)                          # a second name keeps the old inode alive (so it is not reused)
    old, before = old_name.read_bytes(), os.stat(path)
    save_checkpoint({"epoch": 2}, path)
    after = os.stat(path)
    assert (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino), "the destination is the old file rewritten"
    assert os.stat(old_name).st_nlink == 1           # the path no longer names the old file
    assert old_name.read_bytes() == old and read(old_name)["epoch"] == 1
    assert read(path)["epoch"] == 2


# --- through the writers that use it ------------------------------------------------------------------
def table():
    return pd.DataFrame({"model": ["a", "b"], "acc": [0.5, 0.75]})


def test_save_table_under_a_file_or_on_a_full_disk_raises_and_keeps_the_previous_tables(tmp_path, blocker,
                                                                                      monkeypatch):
    with pytest.raises(OutputError) as err:
        plots.save_table(table(), blocker / "results")
    assert_names(err.value, blocker / "results.csv", "is a file, not a folder")

    csv, md = plots.save_table(table(), tmp_path / "results")
    before = csv.read_bytes(), md.read_bytes()
    monkeypatch.setattr(files.os, "fsync", no_space)
    with pytest.raises(OutputError) as err:
        plots.save_table(table().assign(acc=[0.1, 0.2]), tmp_path / "results")
    assert_names(err.value, csv, "no space left")
    assert (csv.read_bytes(), md.read_bytes()) == before and temporaries(tmp_path) == []


def figure():
    fig = plots.new_figure((2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    return fig


def test_a_figure_under_a_file_or_on_a_full_disk_raises_and_keeps_the_previous_png(tmp_path, blocker, monkeypatch):
    with pytest.raises(OutputError) as err:
        plots.finish(figure(), blocker / "curve.png")
    assert_names(err.value, blocker / "curve.png", "is a file, not a folder")

    path = tmp_path / "figures" / "curve.png"
    plots.finish(figure(), path)
    before = path.read_bytes()
    assert before.startswith(b"\x89PNG")
    monkeypatch.setattr(files.os, "fsync", no_space)
    with pytest.raises(OutputError) as err:
        plots.finish(figure(), path)
    assert_names(err.value, path, "no space left")
    assert path.read_bytes() == before and temporaries(tmp_path) == []


def test_a_submission_under_a_file_or_on_a_full_disk_raises_and_keeps_the_previous_csv(tmp_path, blocker,
                                                                                     monkeypatch):
    ids = np.arange(20)
    with pytest.raises(OutputError) as err:
        write_submission(ids, ids % 10, blocker / "submission.csv")
    assert_names(err.value, blocker / "submission.csv", "is a file, not a folder")
    assert "submission_path" in str(err.value)

    path = write_submission(ids, ids % 10, tmp_path / "submission.csv")
    before = path.read_bytes()
    monkeypatch.setattr(files.os, "fsync", no_space)
    with pytest.raises(OutputError) as err:
        write_submission(ids, np.zeros(20, int), path)
    assert_names(err.value, path, "no space left")
    assert path.read_bytes() == before and temporaries(tmp_path) == []


# --- through fit ---------------------------------------------------------------------------------------
TINY = dict(subset_per_class=20, epochs=2, batch_size=32, test_limit=100, deterministic=True, seed=1,
            channels=[8, 16, 16, 32], val_fraction=0.0)   # no val split: every epoch saves best.pt, then last.pt


def test_fit_on_a_full_disk_names_the_checkpoint_and_keeps_the_previous_last_pt(tmp_path, cifar_dir, monkeypatch):
    cfg = Config(**TINY, run_dir=str(tmp_path / "run"))
    splits = prepare_splits(cfg, load_cifar10(cifar_dir))
    fit(cfg, splits, progress=False, max_epochs_this_call=1)
    last, history = cfg.run_path / "last.pt", cfg.run_path / "history.csv"
    before = last.read_bytes(), history.read_bytes()
    real_save = torch.save
    saves = []

    def second_save_fails(obj, f, *args, **kwargs):
        saves.append(obj["epoch"])
        if len(saves) < 2:
            return real_save(obj, f, *args, **kwargs)
        f.write(b"the first bytes of a checkpoint")
        no_space()

    monkeypatch.setattr(torch, "save", second_save_fails)
    with pytest.raises(OutputError) as err:
        fit(cfg, splits, progress=False)
    assert saves == [2, 2]   # epoch 2's best.pt went through, its last.pt hit the full disk
    assert_names(err.value, last, "no space left")
    assert (last.read_bytes(), history.read_bytes()) == before and temporaries(tmp_path) == []

    monkeypatch.setattr(torch, "save", real_save)   # space again: the run resumes from the intact last.pt
    resumed = fit(cfg, splits, progress=False)
    assert resumed.finished and resumed.history["epoch"].tolist() == [1, 2]
