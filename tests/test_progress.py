"""Progress bars of the kind each platform's front end renders (utils.runtime.progress): text on Kaggle, widgets where
they render, none in a batch run."""
import pytest
import tqdm.auto
import tqdm.std
from platform_facts import SHEETS

from utils.runtime import progress
from utils.runtime.progress import PROGRESS_ENV
from utils.train import _bar


@pytest.mark.parametrize("sheet", sorted(SHEETS))
def test_the_bar_kind_follows_the_platforms_fact_sheet(sheet):
    expected = tqdm.auto.tqdm if SHEETS[sheet].widgets_render else tqdm.std.tqdm
    assert progress.bar_class(SHEETS[sheet].name) is expected


def test_a_live_kaggle_notebook_gets_a_text_bar_it_can_show(monkeypatch, capsys):
    monkeypatch.setenv("CIFAR10_PLATFORM", "kaggle")
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    assert list(_bar(range(3), True, desc="epoch 1")) == [0, 1, 2]
    shown = capsys.readouterr().err
    assert "epoch 1: 100%" in shown and "3/3" in shown, shown


def test_a_batch_run_draws_no_bar(monkeypatch, capsys):
    from utils.runtime.progress import progress_bars
    monkeypatch.setenv("CIFAR10_PLATFORM", "kaggle")
    monkeypatch.setenv(PROGRESS_ENV, "lines")            # what run.py sets for its kernels
    assert list(_bar(range(3), progress_bars(True), desc="epoch 1")) == [0, 1, 2]
    assert capsys.readouterr().err == ""
