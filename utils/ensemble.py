"""The trained members, for inference: find them, refuse an unfinished one, predict each once, average.

Design choices:
- The members of a run are its folder (member 0: `utils.checkpoint.find_run_folder`, which also finds an
  attached Kaggle output) and its `member-k` subfolders; every one that holds a best.pt is used, whatever
  `members` or `member` say (those choose what notebook 03 trains). Where member 0 is absent (a machine that
  trained `-p member 1` alone), `cfg.run_path`'s member folders are used.
- No unfinished model passes as finished: best.pt records how far its run got (utils.checkpoint.Progress);
  a member that has not reached its schedule's end (nor stopped early) is refused with a sentence naming the
  run, the epochs done and planned and how to continue. `allow_unfinished=True` uses it anyway and says so.
- Members must be one recipe on one data split (utils.config.recipe_differences against the first member
  found; the member index and training seed are run-time): a folder of another recipe is refused.
- The ensemble's probabilities are the mean of the members' probabilities, each with the profile's TTA
  (itself a mean of softmaxes): a confident member does not outvote the others through its logits' scale.
  Each member predicts a set once (`predict_members`); member and ensemble numbers come from those arrays.
- This module imports the model, the checkpoints and the evaluation, never the trainer (utils.train,
  utils.members).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import checkpoint as checkpoints
from .checkpoint import CheckpointError, Progress, load_checkpoint, load_trained_model, read_progress
from .config import STUDENT_FOLDER, Config, recipe_differences
from .corruptions import robustness_table
from .evaluate import classification_table, corruption_images, predict_with_checkpoint, uint8_log_probs
from .runtime.device import ExecutionPlan
from .runtime.locate import MEMBER_PREFIX, TRAIN_LOG
from .runtime.progress import progress_bars

ENSEMBLE = "ensemble"
STUDENT = "self-trained"      # the model of the self-training round (utils.self_training), beside the members


class UnfinishedError(CheckpointError):
    """A member's run has not reached the end of its schedule (nor stopped early)."""


@dataclass
class Member:
    index: int
    folder: Path
    progress: Progress
    model: nn.Module = field(repr=False)
    checkpoint: dict = field(repr=False)
    name: str = ""               # "" for a member; the self-training round's student is named (STUDENT)

    @property
    def label(self) -> str:
        return self.name or f"member {self.index}"

    @property
    def best_path(self) -> Path:
        return self.folder / "best.pt"

    @property
    def training_seed(self) -> int | None:
        return self.progress.training_seed


# --------------------------------------------------------------------------------------------
# Finding the members
# --------------------------------------------------------------------------------------------
def member_folders(base: Path, members: int = 1) -> dict[int, Path]:
    """Member index -> folder: 0 -> base, k -> base / "member-k" for k < members and for every such folder there."""
    found = {k: base / f"{MEMBER_PREFIX}{k}" for k in range(1, members)}
    if base.is_dir():
        for d in base.glob(f"{MEMBER_PREFIX}*"):
            suffix = d.name[len(MEMBER_PREFIX):]
            if d.is_dir() and suffix.isdigit() and int(suffix) > 0:
                found[int(suffix)] = d
    return {0: base, **dict(sorted(found.items()))}


def run_folder(cfg: Config, log: Callable[[str], object] = print) -> Path:
    """The folder of member 0's best.pt (utils.checkpoint.find_run_folder); without one, cfg.run_path when it
    holds other members' folders (members trained apart with `member`)."""
    try:
        return checkpoints.find_run_folder(cfg, log)
    except CheckpointError:
        others = [f for k, f in member_folders(cfg.run_path).items() if k and (f / "best.pt").is_file()]
        if not others:
            raise
        log(f"run folder: {cfg.run_path} (no member 0 there; its member folders hold best.pt)")
        return cfg.run_path


def unfinished_sentence(index: int, folder: Path, progress: Progress, cfg: Config) -> str:
    """Why member `index` is refused, and how to continue it."""
    alone = (f"; `python run.py --profile {cfg.profile} -p member {index}` trains this member alone"
             if cfg.members > 1 or index else "")
    how = (f"To continue it, run notebook 03 again with the same profile and run_dir: it resumes from last.pt"
           f"{alone}. To use it as it is, set allow_unfinished = True.")
    if progress.finished is None:
        return (f"member {index}: {folder / 'best.pt'} does not record how far its run got (a checkpoint from "
                "before that was recorded) and there is no last.pt beside it, so it may be unfinished. " + how)
    return (f"member {index}: the run in {folder} has trained {progress.epochs_done} of its "
            f"{progress.epochs_planned} epochs: it is not finished (nor stopped early), so its best.pt is not a "
            "finished model. " + how)


def find_members(cfg: Config, device: torch.device | str = "cpu",
                 log: Callable[[str], object] = print) -> list[Member]:
    """Every trained member of this run, loaded on `device`, in member order, each logged with its best.pt, training
    seed and epochs. An unfinished member is refused (UnfinishedError, every such member named) unless
    cfg.allow_unfinished; a member of another recipe is refused (CheckpointError)."""
    base = run_folder(cfg, log)
    members: list[Member] = []
    problems, absent = [], []
    reference: Config | None = None
    for k, folder in member_folders(base, cfg.members).items():
        best, last = folder / "best.pt", folder / "last.pt"
        if not best.is_file():
            if not (last.is_file() or (folder / TRAIN_LOG).is_file()):     # never started here
                absent.append(k)
                continue
            progress = (read_progress(load_checkpoint(last), last) if last.is_file()
                        else Progress(0, None, False, False, k, None, "no checkpoint"))
            sentence = (f"member {k}: {folder} holds no best.pt yet ({progress.epochs_done or 0} epoch(s) done); "
                        "run notebook 03 again with the same profile and run_dir: it resumes.")
            if cfg.allow_unfinished:
                log(f"allow_unfinished=True, but {sentence} Left out: there are no weights to use.")
            else:
                problems.append(sentence)
            continue
        model, ckpt = load_trained_model(best, device, cfg)
        progress = read_progress(ckpt, best)
        if progress.member != k and progress.source == "recorded":
            raise CheckpointError(f"{best}: holds member {progress.member}'s weights, but its folder is member "
                                  f"{k}'s; each member's folder must hold its own run.")
        saved = Config.from_params(ckpt["config"])
        if reference is None:
            reference = saved
        else:
            diffs = recipe_differences(ckpt["config"], reference)
            if diffs:
                raise CheckpointError(f"{best}: member {k} was trained with another recipe than member "
                                      f"{members[0].index} ({members[0].best_path}):\n  " + "\n  ".join(diffs) +
                                      "\nAn ensemble averages members of one recipe; move that folder away.")
        if not progress.finished:
            sentence = unfinished_sentence(k, folder, progress, cfg)
            if not cfg.allow_unfinished:
                problems.append(sentence)
                continue
            log(f"allow_unfinished=True: using member {k} although it is unfinished. {sentence}")
        seed = progress.training_seed if progress.training_seed is not None else saved.training_seed(k)
        progress = Progress(progress.epochs_done, progress.epochs_planned, progress.finished, progress.stopped_early,
                            k, seed, progress.source)
        members.append(Member(k, folder, progress, model, ckpt))
    if problems:
        raise UnfinishedError("Refused: a model that has not finished training does not pass as finished.\n"
                              + "\n".join(problems))
    if not members:
        raise CheckpointError(f"{base}: no member holds a best.pt. Train first (notebook 03 with the same profile "
                              "and run_dir).")
    missing = [k for k in absent if k < cfg.members]
    if missing:
        log(f"members {missing} of {cfg.members}: not trained in {base} (no folder); using the {len(members)} found.")
    for m in members:
        log(f"{m.label}: {m.best_path} (training seed {m.training_seed}; {m.progress.describe()}; weights of "
            f"epoch {m.checkpoint['epoch']})")
    return members


def find_student(cfg: Config, device: torch.device | str = "cpu",
                 log: Callable[[str], object] = print) -> Member | None:
    """The self-training round's student (its folder in the members' run folder), loaded on `device`; None when the
    round is off (`self_training` 0). Refused like a member when it is missing or unfinished (unless
    cfg.allow_unfinished)."""
    if not cfg.self_training:
        return None
    try:
        base = run_folder(cfg, log=lambda line: None)       # the members' folder find_members uses (an attached one)
    except CheckpointError:
        base = cfg.run_path
    folder = base / STUDENT_FOLDER
    best = folder / "best.pt"
    how = ("run notebook 03 again with the same profile and run_dir: it trains the round once every member has "
           "finished, and resumes it")
    if not best.is_file():
        raise UnfinishedError(f"self_training {cfg.self_training:g}: {best} does not exist, the round has not "
                              f"trained its model yet; {how}. Or set self_training = 0 to use the members alone.")
    model, ckpt = load_trained_model(best, device, cfg)
    progress = read_progress(ckpt, best)
    if not progress.finished:
        sentence = (f"self_training: the round's run in {folder} has trained {progress.epochs_done} of its "
                    f"{progress.epochs_planned} epochs; {how}.")
        if not cfg.allow_unfinished:
            raise UnfinishedError(sentence + " To use it as it is, set allow_unfinished = True.")
        log(f"allow_unfinished=True: using the unfinished self-trained model. {sentence}")
    student = Member(0, folder, progress, model, ckpt, name=STUDENT)
    log(f"{STUDENT}: {best} (trained on the training images and the round's labels; {progress.describe()}; "
        f"weights of epoch {ckpt['epoch']})")
    return student


def members_table(members: Sequence[Member]) -> pd.DataFrame:
    """One row per member used: its best.pt, training seed, epochs done / planned, state, weights' epoch, val acc."""
    rows = [{"member": m.index, "best.pt": str(m.best_path), "training seed": m.training_seed,
             "epochs done": m.progress.epochs_done, "epochs planned": m.progress.epochs_planned,
             "state": m.progress.state, "weights of epoch": m.checkpoint["epoch"],
             "val acc (training)": m.checkpoint.get("val_acc")} for m in members]
    return pd.DataFrame(rows).set_index("member")


# --------------------------------------------------------------------------------------------
# Predicting
# --------------------------------------------------------------------------------------------
def predict_members(members: Sequence[Member], images: np.ndarray, cfg: Config,
                    plan: ExecutionPlan | None = None) -> np.ndarray:
    """Each member's probabilities (M, N, 10) for uint8 NHWC images, with the profile's TTA (and its view weights):
    one pass per member."""
    device = plan.device if plan is not None else torch.device("cpu")
    return np.stack([predict_with_checkpoint(m.model, m.checkpoint, images, device, cfg.eval_batch_size, cfg.tta,
                                             plan, cfg.tta_weights) for m in members])


def ensemble_probabilities(member_probs: np.ndarray) -> np.ndarray:
    """The ensemble's probabilities (N, 10): the mean of the members' probabilities (M, N, 10)."""
    return np.asarray(member_probs).mean(axis=0)


def by_model(members: Sequence[Member], member_probs: np.ndarray) -> dict[str, np.ndarray]:
    """{"member k": its probabilities, ..., "ensemble": their mean}, from one `predict_members` result."""
    return {**{m.label: p for m, p in zip(members, member_probs)}, ENSEMBLE: ensemble_probabilities(member_probs)}


def robustness_members(members: Sequence[Member], images: np.ndarray, labels: np.ndarray, cfg: Config,
                       plan: ExecutionPlan | None = None, progress: bool = True) -> dict[str, pd.DataFrame]:
    """utils.corruptions' table for each member and the ensemble: every corruption set made once, every member
    predicting it once; the ensemble's predictions are the argmax of the mean of the members' probabilities."""
    device = plan.device if plan is not None else torch.device("cpu")
    uint8 = corruption_images(images, cfg, device)
    y = np.asarray(labels[:len(uint8)])
    per_set: list[np.ndarray] = []

    def predict(batch: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([uint8_log_probs(m.model, m.checkpoint, batch, cfg, plan).exp() for m in members])
        per_set.append(probs.argmax(2).cpu().numpy())
        return probs.mean(0).argmax(1)

    ensemble = robustness_table(predict, uint8, y, seed=cfg.seed, limit=0, progress=progress_bars(progress))
    tables = {}
    for i, m in enumerate(members):
        table = ensemble.copy()
        table["accuracy"] = [float((pred[i] == y).mean()) if len(y) else float("nan") for pred in per_set]
        tables[m.label] = table
    tables[ENSEMBLE] = ensemble
    return tables


def comparison_table(y_true: np.ndarray, probs: Mapping[str, np.ndarray], classes: Sequence[str],
                     corruption_tables: Mapping[str, pd.DataFrame], members: Sequence[Member] = ()) -> pd.DataFrame:
    """One row per member and the ensemble: training seed, clean test accuracy, mean corruption accuracy, and the
    recall of every class (utils.evaluate.classification_table)."""
    from .corruptions import summarize
    seeds = {m.label: m.training_seed for m in members}
    rows = []
    for label, p in probs.items():
        report = classification_table(y_true, p.argmax(1), list(classes))
        seed = seeds.get(label)
        rows.append({"model": label, "training seed": "" if seed is None else str(seed),
                     "test acc": float(report.loc["accuracy", "precision"]),
                     "mean corruption acc": summarize(corruption_tables[label])["corruption_accuracy"],
                     **{f"recall {c}": float(report.loc[c, "recall"]) for c in classes}})
    return pd.DataFrame(rows).set_index("model")
