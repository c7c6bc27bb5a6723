"""Inference over ensemble members (utils.ensemble, notebooks 04 and 05): which members are used, the refusal of an
unfinished one (and allow_unfinished), and the ensemble as the mean of the members' probabilities.

The members here are written by hand (a tiny CustomResNet per folder, best.pt as training writes it), so these tests
need no training; tests/test_members.py trains real members in processes of their own."""
from __future__ import annotations

import os
import subprocess
import sys

import nbformat
import numpy as np
import pytest
import torch
from layouts import make_layout

from utils.checkpoint import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint, read_progress, save_checkpoint
from utils.config import Config
from utils.dataset import NOLABEL_FILE, load_unlabeled, prepare_splits
from utils.ensemble import (
    ENSEMBLE,
    UnfinishedError,
    by_model,
    comparison_table,
    ensemble_probabilities,
    find_members,
    predict_members,
    robustness_members,
)
from utils.evaluate import predict_proba, robustness
from utils.model import build_model
from utils.runtime.device import decide
from utils.runtime.platforms import REPO_ROOT
from utils.submission import predict_unlabeled_ensemble, validate_submission

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
RECIPE = dict(channels=[8, 16], blocks=[1, 1], epochs=4, test_limit=40, corruption_images=12)
CPU = decide(torch.device("cpu"), amp=False, channels_last=False)


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    return make_layout(tmp_path_factory.mktemp("cifar"), per_batch=20, n_test=40, n_unlabeled=30)


def recipe(tmp_path, layout, **kw) -> Config:
    return Config(**{**RECIPE, "run_dir": str(tmp_path / "run"), "data_dir": str(layout), **kw})


def write_member(cfg: Config, k: int, done: int | None = None, progress: bool = True, **config) -> None:
    """Member k's best.pt as training writes it: a confident random model (large logits, so that averaging
    probabilities and averaging logits disagree), the config, the data's normalisation, how far the run got."""
    saved = cfg.replace(member=k, members=max(cfg.members, k + 1), **config)
    torch.manual_seed(100 + k)
    model = build_model(saved)
    with torch.no_grad():
        model.fc.weight.mul_(30)
    done = saved.epochs if done is None else done
    ckpt = {"format": CHECKPOINT_FORMAT, "config": saved.to_dict(), "epoch": done,
            "normalization": {"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]}, "classes": CLASSES,
            "model": model.state_dict(), "val_acc": 0.5}
    if progress:
        ckpt["progress"] = {"epochs_done": done, "epochs_planned": saved.epochs, "finished": done >= saved.epochs,
                            "stopped_early": False, "member": k, "training_seed": saved.training_seed(k)}
    save_checkpoint(ckpt, cfg.member_path(k) / "best.pt")


def images(n: int = 16, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# Which members
# --------------------------------------------------------------------------------------------
def test_every_finished_member_found_is_used_in_order_and_each_is_named_with_seed_and_epochs(tmp_path, layout):
    cfg = recipe(tmp_path, layout, members=2)
    for k in (2, 0, 1):                     # three on disk, though the config says 2: all three are used
        write_member(cfg, k)
    logged = []
    members = find_members(cfg, log=logged.append)
    assert [m.index for m in members] == [0, 1, 2]
    assert [m.training_seed for m in members] == [cfg.training_seed(k) for k in range(3)]
    for m in members:
        assert any(line.startswith(f"member {m.index}: {m.best_path} (training seed {m.training_seed}; 4/4 epochs, "
                                   "finished") for line in logged), logged
    # `member` chooses what 03 trains, not what 04 / 05 use
    assert [m.index for m in find_members(cfg.replace(member=1), log=lambda line: None)] == [0, 1, 2]


def test_members_trained_alone_elsewhere_are_found_without_member_0(tmp_path, layout):
    cfg = recipe(tmp_path, layout, members=2)
    write_member(cfg, 1)
    logged = []
    assert [m.index for m in find_members(cfg, log=logged.append)] == [1]
    assert any("members [0] of 2: not trained" in line for line in logged), logged


def test_an_unfinished_member_is_refused_naming_its_run_epochs_and_how_to_continue(tmp_path, layout):
    cfg = recipe(tmp_path, layout, members=2, epochs=10)
    write_member(cfg, 0)
    write_member(cfg, 1, done=3)                # its run planned 10 epochs and has trained 3
    with pytest.raises(UnfinishedError) as err:
        find_members(cfg, log=lambda line: None)
    message = str(err.value)
    assert f"member 1: the run in {cfg.member_path(1)} has trained 3 of its 10 epochs" in message
    assert "run notebook 03 again with the same profile and run_dir: it resumes from last.pt" in message
    assert "-p member 1" in message and "allow_unfinished = True" in message
    assert "member 0" not in message.replace("member 0:", "")            # the finished one is not blamed


def test_allow_unfinished_uses_the_unfinished_member_and_says_so(tmp_path, layout):
    cfg = recipe(tmp_path, layout, members=2, allow_unfinished=True)
    write_member(cfg, 0)
    write_member(cfg, 1, done=3)
    logged = []
    members = find_members(cfg, log=logged.append)
    assert [m.index for m in members] == [0, 1] and members[1].progress.finished is False
    said = [line for line in logged if line.startswith("allow_unfinished=True: using member 1 although it is "
                                                        "unfinished")]
    assert len(said) == 1 and "3 of its 4 epochs" in said[0]


def test_an_older_best_pt_is_judged_by_the_last_pt_beside_it_else_refused_as_unknown(tmp_path, layout):
    cfg = recipe(tmp_path, layout)
    write_member(cfg, 0, progress=False)          # a best.pt from before the record existed
    best = cfg.run_path / "best.pt"
    assert read_progress(load_checkpoint(best), best).finished is None
    with pytest.raises(UnfinishedError, match="does not record how far its run got"):
        find_members(cfg, log=lambda line: None)
    last = {"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "history": [{"epoch": 1}, {"epoch": 2}],
            "stopped_early": False}
    save_checkpoint(last, cfg.run_path / "last.pt")
    with pytest.raises(UnfinishedError, match="has trained 2 of its 4 epochs"):
        find_members(cfg, log=lambda line: None)
    save_checkpoint({**last, "stopped_early": True}, cfg.run_path / "last.pt")    # stopped early: finished
    (member,) = find_members(cfg, log=lambda line: None)
    assert member.progress.source == "last.pt beside it" and member.progress.finished


def test_a_member_of_another_recipe_or_in_another_members_folder_is_refused(tmp_path, layout):
    cfg = recipe(tmp_path, layout, members=2)
    write_member(cfg, 0)
    write_member(cfg, 1, lr=0.05)
    with pytest.raises(CheckpointError, match=r"member 1 was trained with another recipe.*\n  lr: checkpoint 0.05"):
        find_members(cfg, log=lambda line: None)
    write_member(cfg, 1)
    ckpt = load_checkpoint(cfg.member_path(1) / "best.pt")
    ckpt["progress"]["member"] = 0
    save_checkpoint(ckpt, cfg.member_path(1) / "best.pt")
    with pytest.raises(CheckpointError, match="holds member 0's weights, but its folder is member 1's"):
        find_members(cfg, log=lambda line: None)


# --------------------------------------------------------------------------------------------
# The ensemble's prediction
# --------------------------------------------------------------------------------------------
@pytest.fixture
def three(tmp_path, layout):
    cfg = recipe(tmp_path, layout, members=3)
    for k in range(3):
        write_member(cfg, k)
    return cfg, find_members(cfg, log=lambda line: None)


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_the_ensemble_is_the_mean_of_the_members_probabilities_not_of_their_logits(three, tta):
    cfg, members = three
    cfg = cfg.replace(tta=tta)
    x = images()
    norm = members[0].checkpoint["normalization"]
    alone = np.stack([predict_proba(m.model, x, norm["mean"], norm["std"], torch.device("cpu"), tta=tta)
                      for m in members])
    member_probs = predict_members(members, x, cfg, CPU)
    np.testing.assert_array_equal(member_probs, alone)          # each member as it predicts alone
    probs = by_model(members, member_probs)
    assert list(probs) == ["member 0", "member 1", "member 2", ENSEMBLE]
    np.testing.assert_allclose(probs[ENSEMBLE], alone.mean(0), rtol=0, atol=1e-7)
    np.testing.assert_allclose(ensemble_probabilities(member_probs).sum(1), 1, atol=1e-5)
    mean = torch.tensor(norm["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(norm["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        batch = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - mean) / std
        logits = torch.stack([m.model(batch) for m in members]).mean(0)
    assert not np.allclose(probs[ENSEMBLE], torch.softmax(logits, 1).numpy(), atol=1e-3)


def test_robustness_makes_each_set_once_and_each_member_row_is_that_members_own(three):
    cfg, members = three
    splits = prepare_splits(cfg)
    calls = {m.index: 0 for m in members}
    for m in members:
        forward = m.model.forward

        def counted(x, forward=forward, k=m.index):
            calls[k] += 1
            return forward(x)
        m.model.forward = counted
    tables = robustness_members(members, splits.test_images, splits.test_labels, cfg, CPU, progress=False)
    sets = len(tables[ENSEMBLE])
    assert all(n == sets for n in calls.values()), calls          # one batch per set: each member predicts it once
    for m in members:
        alone = robustness(m.model, m.checkpoint, splits.test_images, splits.test_labels, cfg, CPU, progress=False)
        np.testing.assert_array_equal(tables[m.label]["accuracy"], alone["accuracy"])
    table = comparison_table(splits.test_labels, by_model(members, predict_members(members, splits.test_images, cfg,
                                                                                   CPU)), CLASSES, tables, members)
    assert list(table.index) == ["member 0", "member 1", "member 2", ENSEMBLE]
    assert table.loc["member 1", "training seed"] == str(cfg.training_seed(1))
    assert table.loc[ENSEMBLE, "training seed"] == ""
    assert table.loc[ENSEMBLE, "mean corruption acc"] == pytest.approx(tables[ENSEMBLE]["accuracy"][1:].mean())


def test_the_submission_is_the_ensembles(three, layout, tmp_path):
    from utils.submission import write_submission
    cfg, members = three
    nolabel = layout / NOLABEL_FILE
    ids, labels, probs = predict_unlabeled_ensemble(members, nolabel, cfg, CPU)
    unlabeled, expected_ids = load_unlabeled(nolabel)
    mean = predict_members(members, unlabeled, cfg, CPU).mean(0)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(probs, mean, atol=1e-7)
    assert (labels == mean.argmax(1)).all()
    assert any((labels != p.argmax(1)).any() for p in predict_members(members, unlabeled, cfg, CPU))   # not a member's
    path = write_submission(ids, labels, tmp_path / "submission.csv", nolabel)
    assert validate_submission(path, nolabel)["Labels"].tolist() == labels.tolist()


def test_inference_never_imports_the_trainer():
    code = ("import sys, utils.ensemble, utils.submission, utils.evaluate, utils.plots; "
            "print(sorted(m for m in sys.modules if m in ('utils.train', 'utils.members')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


# --------------------------------------------------------------------------------------------
# Notebooks 04 and 05 on hand-written members
# --------------------------------------------------------------------------------------------
def run_notebook(name: str, tmp_path, layout, **parameters):
    """Execute notebooks/<name> with papermill (a real kernel), as run.py does; returns its outputs' text."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError
    params = {"profile": "tiny", "data_dir": str(layout), "run_dir": str(tmp_path / "run"), "device": "cpu",
              "figures_dir": str(tmp_path / "figures"), "submission_path": str(tmp_path / "submission.csv"),
              "nolabel_path": str(layout / NOLABEL_FILE), **RECIPE, **parameters}
    out = tmp_path / f"executed-{name}"
    error = None
    try:
        pm.execute_notebook(str(REPO_ROOT / "notebooks" / name), str(out), parameters=params, kernel_name="python3",
                            cwd=str(REPO_ROOT / "notebooks"), progress_bar=False)
    except PapermillExecutionError as err:
        error = err
    nb = nbformat.read(out, as_version=4)
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for c in nb.cells
                   if c.cell_type == "code" for o in c.get("outputs", []))
    return text, error


@pytest.mark.notebooks
def test_notebook_05_refuses_an_unfinished_member_and_with_allow_unfinished_submits_saying_so(tmp_path, layout):
    cfg = recipe(tmp_path, layout, members=2)
    write_member(cfg, 0)
    write_member(cfg, 1, done=2)
    text, error = run_notebook("05_kaggle_submit.ipynb", tmp_path, layout, members=2)
    assert error is not None and error.ename == "UnfinishedError", text
    assert "has trained 2 of its 4 epochs" in error.evalue and not (tmp_path / "submission.csv").exists()
    text, error = run_notebook("05_kaggle_submit.ipynb", tmp_path, layout, members=2, allow_unfinished=True)
    assert error is None, error
    assert "allow_unfinished=True: using member 1 although it is unfinished" in text
    assert "with the ensemble of 2 member(s)" in text and "submission.csv: 30 rows, columns ID,Labels" in text
    validate_submission(tmp_path / "submission.csv", layout / NOLABEL_FILE)


@pytest.mark.notebooks
def test_notebook_04_reports_each_member_and_the_ensemble_in_one_table_and_figure(tmp_path, layout):
    cfg = recipe(tmp_path, layout, members=2)
    write_member(cfg, 0)
    write_member(cfg, 1)
    text, error = run_notebook("04_analysis.ipynb", tmp_path, layout, members=2)
    assert error is None, error
    assert "Test accuracy (labeled CIFAR-10 test_batch, 40 images, TTA none, ensemble of 2 members)" in text
    assert "  member 0: " in text and "  member 1: " in text
    table = (tmp_path / "figures" / "members.csv").read_text().splitlines()
    assert table[0].startswith("model,training seed,test acc,mean corruption acc,recall airplane")
    assert [row.split(",")[0] for row in table[1:]] == ["member 0", "member 1", ENSEMBLE]
    for figure in ("members.png", "confusion_matrix.png", "robustness.png"):
        assert (tmp_path / "figures" / figure).is_file()
