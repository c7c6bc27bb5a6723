"""Every knob of the project in one dataclass, with the paper's recipe as the defaults, checked where it is built.

Design choices:
- One dataclass: the notebooks, the YAML profiles in `configs/` and the library all name the same fields, so a typo in
  a profile is an error, not a silently ignored setting. Each default is written once, here: a profile lists only what
  differs from it (with its reason), a notebook's `parameters` cell only the knobs a student turns.
- Validation happens in `__post_init__`, so every way of building a Config (a profile, a notebook's globals,
  `run.py -p`, a benchmark's overrides, `dataclasses.replace`, a checkpoint's saved config) is checked the same way,
  before any data is read. It is pydantic's, not a checker of our own: each field's rule is a pydantic type
  (`integer(ge=1)`, `one_of(...)`, ...) checked in strict mode, and cross-field rules are in `_cross_field_problems`;
  what they refuse is formatted into one `ConfigError` listing every problem: the field, the value, what is allowed.
- Values are coerced where that loses nothing: an int for a float field (`lr 1`), a numeric string for a float
  (`-p lr 1e-3`, which YAML reads as a string), a tuple for a list, `tta: true/false` (the first checkpoint format)
  for `flip`/`none`. Anything else is refused, never guessed.
- Whether `device` exists is not checked here but when a run starts (`utils.runtime.device.resolve_device`): a
  checkpoint's config must still load on another machine.
- Relative output paths (`run_dir`, `figures_dir`, `submission_path`) resolve under the platform's output root
  (`utils.runtime.platforms`: the repository locally, Google Drive on Colab, /kaggle/working on Kaggle); a relative
  `data_dir` resolves against the repository root.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError

from .runtime import platforms
from .runtime.locate import MEMBER_PREFIX
from .runtime.platforms import resolve_output

CONFIG_DIR = platforms.REPO_ROOT / "configs"
IMAGE_SIDE = 32                     # CIFAR-10 images are 32 x 32
IMAGES_PER_CLASS = 5000             # training images per class in CIFAR-10
NUM_CLASSES = 10
STUDENT_FOLDER = "self-training"    # the self-training round's folder inside a run folder (utils.self_training)
TTA_VIEWS = {"none": 1, "flip": 2, "flip_shift": 6, "flip_translate": 6}   # views per `tta` mode (utils.evaluate)


class ConfigError(ValueError):
    """One or more fields are invalid; the message lists each with the value given and what is allowed."""

    def __init__(self, problems: list[str], source: str = "Config"):
        self.problems, self.source = list(problems), source
        super().__init__(f"{source}: {len(self.problems)} invalid setting(s):\n  - " + "\n  - ".join(self.problems))


# --------------------------------------------------------------------------------------------
# The configuration: each field's rule (a pydantic type and what it allows, in words), then the dataclass
# --------------------------------------------------------------------------------------------
def _bounded(kind: type, ge=None, gt=None, le=None, lt=None) -> tuple[Any, str]:
    """An int, or a finite float, within pydantic's bounds; in words 'an integer in [0, 5000]', 'a number > 0', ..."""
    what, lo, hi = "an integer" if kind is int else "a number", (ge if gt is None else gt), (le if lt is None else lt)
    if lo is not None and hi is not None:
        what += f" in {'[' if gt is None else '('}{lo:g}, {hi:g}{']' if lt is None else ')'}"
    elif lo is not None:
        what += f" {'>=' if gt is None else '>'} {lo:g}"
    if kind is int:
        return Annotated[int, Field(ge=ge, gt=gt, le=le, lt=lt)], what
    from_text = BeforeValidator(lambda v: _FLOAT.validate_strings(v) if isinstance(v, str) else v)   # `-p lr 1e-3`
    return Annotated[float, Field(ge=ge, gt=gt, le=le, lt=lt, allow_inf_nan=False), from_text], what


def optional(kind: tuple[Any, str], word: str = "") -> tuple[Any, str]:      # `word`, if any, means null too
    rule = Annotated[kind[0] | None, BeforeValidator(lambda v: None if word and v == word else v)]
    return rule, f"{kind[1]} or null" + (f" ({word!r})" if word else "")


def one_of(*options: str) -> tuple[Any, str]:
    """One of `options`; true/false read as 'flip'/'none' where those are options (tta: the first checkpoint format)."""
    words = {value: word for value, word in ((True, "flip"), (False, "none")) if word in options}
    rule = Annotated[Literal[options], BeforeValidator(lambda v: words.get(v, v) if isinstance(v, bool) else v)]
    return rule, "one of " + ", ".join(map(repr, options))


def matching(regex: str, allowed: str) -> tuple[Any, str]:     # Python's re.search, as the strings were always read
    return Annotated[str, Field(pattern=re.compile(regex))], allowed


def listed(kind: tuple[Any, str], what: str) -> tuple[Any, str]:        # a tuple is read as a list
    as_list = BeforeValidator(lambda v: list(v) if isinstance(v, tuple) else v)
    return Annotated[list[kind[0]], Field(min_length=1), as_list], f"a non-empty list of {what}"


_FLOAT = TypeAdapter(float)                                    # pydantic's reading of a number's text
integer, number = partial(_bounded, int), partial(_bounded, float)
FLAG = bool, "true or false"
TEXT = matching(r"\S", "a non-empty string")
PROFILE = matching(r"^[A-Za-z0-9_.-]+$", "a non-empty string of letters, digits, '_', '-' or '.' (it names a folder)")
CSV_FILE = matching(r"\.csv\Z", "a non-empty string, a file name ending in .csv")
DEVICE = matching(r"^(auto|cpu|mps|cuda(:\d+)?)$", "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
PATH = (Annotated[TEXT[0] | None, BeforeValidator(lambda v: str(v) if isinstance(v, Path) else v)],
        "a path (string) or null")
POSITIVE_INTS = listed(integer(gt=0), "integers > 0")


def rule(default: Any, kind: tuple[Any, str], note: str = "") -> Any:
    """A Config field: its default; its metadata: its rule (a strict pydantic TypeAdapter) and what it allows."""
    how = {"default_factory": default.copy} if isinstance(default, list) else {"default": default}
    return field(**how, metadata={"rule": TypeAdapter(kind[0], config=ConfigDict(strict=True)),
                                  "allowed": kind[1] + (f" ({note})" if note else "")})


@dataclass
class Config:
    profile: str = rule("paper", PROFILE)
    # --- paths: outputs under the platform's output root, data_dir under the repository ---
    data_dir: str | None = rule(None, PATH)      # None: $CIFAR10_DIR, ./data, Kaggle's input, or download
    run_dir: str | None = rule(None, PATH)       # checkpoints + history; None: runs/<profile>/checkpoints
    figures_dir: str = rule("figures", TEXT)
    submission_path: str = rule("submissions/submission.csv", CSV_FILE)
    nolabel_path: str | None = rule(None, PATH)  # None: found beside the data (utils.dataset.find_nolabel)
    # --- data ---
    subset_per_class: int = rule(0, integer(ge=0, le=IMAGES_PER_CLASS), "0: all 5,000 per class")
    val_fraction: float = rule(0.1, number(ge=0, lt=1), "0: no validation split, train on every image")
    test_limit: int = rule(0, integer(ge=0), "0: the whole labeled test set")
    # --- model (the paper's CustomResNet) ---
    channels: list[int] = rule([48, 96, 128, 364], POSITIVE_INTS)
    blocks: list[int] = rule([2, 2, 2, 2], POSITIVE_INTS)
    dropout: float = rule(0.1, number(ge=0, lt=1))
    zero_init_residual: bool = rule(False, FLAG)  # each block's last BatchNorm starts at 0 (Goyal et al. 2017)
    stem_init: str = rule("default", one_of("default", "patch_pca"))  # patch_pca: from 3x3 patches (utils.model)
    # --- optimisation (the paper's recipe) ---
    epochs: int = rule(100, integer(ge=1))
    batch_size: int = rule(128, integer(ge=1))
    lr: float = rule(0.1, number(gt=0), "the schedule's peak (OneCycleLR's max_lr)")
    schedule: str = rule("onecycle", one_of("onecycle", "linear"))  # linear: up over pct_start, down to 0 (recipe)
    momentum: float = rule(0.9, number(ge=0, lt=1), "SGD's momentum where cycle_momentum is false")
    cycle_momentum: bool = rule(True, FLAG)      # OneCycleLR cycles SGD's momentum 0.95 -> 0.85 -> 0.95 (PyTorch's
    #   default, which the paper's code ran): `momentum` is then not used. False, or schedule linear: SGD keeps it.
    nesterov: bool = rule(False, FLAG)
    weight_decay: float = rule(5e-4, number(ge=0))
    decay_norm_and_bias: bool = rule(True, FLAG)  # the paper's; false: no decay on BatchNorm weights, nor any bias
    pct_start: float = rule(0.1, number(gt=0, lt=1), "the warm-up share of the schedule")
    patience: int = rule(10, integer(ge=0), "epochs without a better val accuracy before stopping; 0: never stop")
    # --- beyond the paper (all off in `paper`) ---
    label_smoothing: float = rule(0.0, number(ge=0, lt=1))
    ema_decay: float = rule(0.0, number(ge=0, lt=1), "0: no weight averaging")
    ema_window: float = rule(0.0, number(ge=0, le=1), "share of the run's steps: decay 1 - 1/(ema_window x steps)")
    crop_padding: int = rule(4, integer(ge=0, le=8), "the random crop's padding per side, the paper's 4; 0: no shift")
    padding_mode: str = rule("zeros", one_of("zeros", "reflect"))   # what the crop's padding holds
    alternating_flip: bool = rule(False, FLAG)   # true: each image's mirroring alternates by epoch (airbench)
    cutout: int = rule(0, integer(ge=0, le=IMAGE_SIDE - 1), "side of the erased square, smaller than the image")
    auto_augment: str = rule("none", one_of("none", "trivialaugment"))  # one random op and magnitude per image
    mixup_alpha: float = rule(0.0, number(ge=0), "Beta(alpha, alpha) for MixUp; 0: off")
    cutmix_alpha: float = rule(0.0, number(ge=0), "Beta(alpha, alpha) for CutMix; 0: off")
    tta: str = rule("none", one_of(*TTA_VIEWS))  # test-time augmentation at evaluation and submission (utils.evaluate)
    tta_weights: list[float] | None = rule(None, optional(listed(number(ge=0), "numbers >= 0")), "one per view of "
                                           "`tta`, the probabilities averaged in proportion; null: equal weights")
    self_training: float = rule(0.0, number(ge=0, le=1), "share of the unlabeled images the members' ensemble "
                                "labels, the most confident per class, for a second training (utils.self_training); "
                                "0: off")
    corruption_images: int = rule(1000, integer(ge=0), "test images per corruption and severity; 0: all")
    # --- runtime ---
    seed: int = rule(0, integer(ge=0))
    device: str = rule("auto", DEVICE)           # auto: cuda, then mps, then cpu
    deterministic: bool = rule(False, FLAG)
    amp: bool = rule(True, FLAG)                 # mixed precision where the device gains from it (utils.runtime.device)
    channels_last: bool = rule(True, FLAG)       # where the device gains from it
    compile: bool = rule(False, FLAG)            # torch.compile, where the device allows it
    eval_batch_size: int = rule(500, integer(ge=1))
    resume: bool = rule(True, FLAG)              # continue from run_dir/last.pt when it exists
    # --- members and sessions (run-time fields: changing them never blocks a resume) ---
    members: int = rule(1, integer(ge=1), "models of this recipe, each with its own training seed, averaged by 04 "
                                          "and 05")
    member: int | None = rule(None, optional(integer(ge=0), "all"), "which member notebook 03 / run.py trains; "
                                                                    "null: all of them")
    max_epochs_this_call: int | None = rule(None, optional(integer(ge=0)), "0 or null: no limit; N: train at most N "
                                                                           "epochs now, the next call resumes")
    monitor_every: int = rule(5, integer(ge=0), "with val_fraction 0: evaluate the labeled test batch every N epochs "
                                                "and at the last, as a monitor that chooses nothing")
    allow_unfinished: bool = rule(False, FLAG)   # 04 / 05 use a member whose run has not finished, saying so

    def __post_init__(self) -> None:
        problems, invalid = [], set()
        for f in fields(self):                   # each field on its own, so the valid ones are coerced for the
            value = getattr(self, f.name)         # cross-field rules even where another field is invalid
            try:
                setattr(self, f.name, f.metadata["rule"].validate_python(value))
            except ValidationError:              # pydantic's verdict, said in this project's words
                problems.append(f"{f.name} = {value!r}: expected {f.metadata['allowed']}")
                invalid.add(f.name)
        problems += _cross_field_problems(self, invalid)
        if problems:
            raise ConfigError(problems)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_params(cls, params: Mapping[str, Any], **overrides: Any) -> Config:
        """Build from a mapping (a notebook's globals(), a saved config), ignoring names that are not fields."""
        names = set(cls.field_names())
        return cls(**{k: v for k, v in {**params, **overrides}.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    # Derived settings -------------------------------------------------------------------------
    @property
    def has_validation(self) -> bool:
        return self.val_fraction > 0

    @property
    def early_stopping(self) -> bool:
        """Early stopping needs a validation split: with val_fraction 0 it is off whatever `patience` says."""
        return self.has_validation and self.patience > 0

    @property
    def member_indices(self) -> list[int]:
        """The members notebook 03 / `run.py` trains: `member` alone where it is set, else all of them."""
        return [self.member] if self.member is not None else list(range(self.members))

    @property
    def epoch_limit(self) -> int | None:
        """`max_epochs_this_call` as a number of epochs, None for no limit (0 and None both mean none)."""
        return self.max_epochs_this_call or None

    def training_seed(self, member: int | None = None) -> int:
        """The seed of member `member`'s training randomness (initialisation, batch order, augmentation, dropout,
        MixUp); default: `self.member`, else 0. Member 0's is `seed` itself (a one-member run is exactly the run
        from before members existed); member k >= 1 gets a 31-bit number hashed from (seed, k), so no member of
        one seed repeats a member of another. The data (subset, split, normalisation, corruptions) always uses
        `seed`, the same for every member."""
        k = (self.member or 0) if member is None else member
        if k == 0:
            return self.seed
        digest = hashlib.sha256(f"cifar10-member/{self.seed}/{k}".encode()).digest()
        return int.from_bytes(digest[:4], "big") >> 1

    def member_path(self, member: int | None = None) -> Path:
        """Member `member`'s run folder (default: `self.member`, else 0): member 0 = run_path, member k = run_path /
        "member-k". Each resumes on its own."""
        k = (self.member or 0) if member is None else member
        return self.run_path if k == 0 else self.run_path / f"{MEMBER_PREFIX}{k}"

    @property
    def student_path(self) -> Path:
        """The self-training round's folder (utils.self_training): its labels table and the student's run."""
        return self.run_path / STUDENT_FOLDER

    def notes(self, members: bool = True) -> list[str]:
        """Settings that are accepted but change meaning, said once where a run starts (`members`: also the line on
        members, which a single member's training leaves out)."""
        out = []
        if not self.has_validation:
            out.append("val_fraction 0: no validation split; training uses every training image, best.pt holds the "
                       "final weights" + (" (EMA)" if self.ema_decay or self.ema_window else "")
                       + (f", and early stopping (patience {self.patience}) is off" if self.patience else "")
                       + f"; the labeled test batch is evaluated every {self.monitor_every} epoch(s) and at the last "
                       "as a monitor only: it chooses nothing")
        if members and (self.members > 1 or self.member is not None):
            which = (f"this run trains member {self.member} alone ({self.member_path()})" if self.member is not None
                     else f"notebook 03 trains all {self.members}")
            out.append(f"members {self.members}: models of this recipe on the same data (seed {self.seed}), each "
                       f"with its own training seed; {which}; 04 and 05 average every finished member they find")
        return out

    # Resolved paths -------------------------------------------------------------------------
    @property
    def run_path(self) -> Path:
        return resolve_output(self.run_dir or f"runs/{self.profile}/checkpoints")

    @property
    def figures_path(self) -> Path:
        return resolve_output(self.figures_dir)

    @property
    def submission_file(self) -> Path:
        return resolve_output(self.submission_path)

    @property
    def data_path(self) -> Path | None:
        if self.data_dir is None:
            return None
        p = Path(self.data_dir).expanduser()
        return p if p.is_absolute() else platforms.REPO_ROOT / p

    def model_kwargs(self) -> dict[str, Any]:
        return {"channels": list(self.channels), "blocks": list(self.blocks), "dropout": self.dropout}


def _cross_field_problems(cfg: Config, invalid: set[str]) -> list[str]:
    """Rules between fields, checked where the fields involved are valid on their own."""
    def valid(*names: str) -> bool:
        return not invalid.intersection(names)

    problems = []
    if valid("channels", "blocks") and len(cfg.channels) != len(cfg.blocks):
        problems.append(f"channels = {cfg.channels} and blocks = {cfg.blocks}: expected one entry per stage in each "
                        "(equal lengths)")
    if valid("member", "members") and cfg.member is not None and cfg.member >= cfg.members:
        problems.append(f"member = {cfg.member} with members = {cfg.members}: expected a member index from 0 to "
                        f"{cfg.members - 1}, or null for all of them")
    if valid("monitor_every", "val_fraction") and cfg.monitor_every == 0 and not cfg.has_validation:
        problems.append("monitor_every = 0 with val_fraction = 0.0: without a validation split the test-batch monitor "
                        "is the only view of training; expected monitor_every >= 1")
    if valid("nesterov", "momentum") and cfg.nesterov and cfg.momentum == 0:
        problems.append("nesterov = True with momentum = 0.0: Nesterov momentum needs momentum > 0")
    if valid("tta", "tta_weights") and cfg.tta_weights is not None and (
            len(cfg.tta_weights) != TTA_VIEWS[cfg.tta] or not sum(cfg.tta_weights) > 0):
        problems.append(f"tta_weights = {cfg.tta_weights} with tta = {cfg.tta!r}: expected {TTA_VIEWS[cfg.tta]} "
                        "weight(s), one per view, with a sum > 0, or null for equal weights")
    if valid("ema_decay", "ema_window") and cfg.ema_decay and cfg.ema_window:
        problems.append(f"ema_decay = {cfg.ema_decay} with ema_window = {cfg.ema_window}: two settings of one decay; "
                        "expected ema_decay 0 (the decay is then 1 - 1/(ema_window x steps)) or ema_window 0")
    if valid("subset_per_class", "val_fraction") and cfg.has_validation:
        n = (cfg.subset_per_class or IMAGES_PER_CLASS) * NUM_CLASSES
        n_val = math.ceil(n * cfg.val_fraction)
        if n_val < NUM_CLASSES or n - n_val < NUM_CLASSES:
            problems.append(f"subset_per_class = {cfg.subset_per_class} with val_fraction = {cfg.val_fraction}: "
                            f"{n_val} validation and {n - n_val} training images cannot hold every class; expected "
                            "at least one image per class on each side (raise subset_per_class, or use val_fraction 0 "
                            "for no validation split)")
    return problems


# --------------------------------------------------------------------------------------------
# What defines a run (the recipe) and what may change between its sessions (run-time fields)
# --------------------------------------------------------------------------------------------
# Fields that may change between a run and its resumption (or between the run that saved a checkpoint and the
# notebook that reads it); every other field is the recipe. Resume (utils.train) and checkpoint discovery for
# inference (utils.checkpoint) apply the same rule, so it lives here, below both.
RUNTIME_FIELDS = {"data_dir", "run_dir", "figures_dir", "submission_path", "nolabel_path", "test_limit", "device",
                  "amp", "channels_last", "compile", "eval_batch_size", "resume", "tta", "tta_weights", "profile",
                  "corruption_images", "members", "member", "max_epochs_this_call", "monitor_every", "allow_unfinished",
                  "self_training"}
# `self_training` changes nothing in how the members train (it is a step after them, so it may be turned on for a
# trained run); the round's own folder guards its data (utils.self_training.labels_for_round).


def recipe_differences(saved: dict[str, Any], cfg: Config) -> list[str]:
    """Each recipe field whose value in a saved config (a checkpoint's) differs from `cfg`'s, as a readable line."""
    now = cfg.to_dict()
    return [f"{k}: checkpoint {saved.get(k)!r} vs now {now[k]!r}" for k in now
            if k not in RUNTIME_FIELDS and k in saved and saved[k] != now[k]]


# --------------------------------------------------------------------------------------------
# Profiles
# --------------------------------------------------------------------------------------------
def profile_path(name: str) -> Path:
    return CONFIG_DIR / f"{name}.yaml"


def available_profiles() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def unknown_names(names) -> list[str]:
    return sorted(set(names) - set(Config.field_names()))


def read_profile(name: str, below: tuple[str, ...] = ()) -> dict[str, Any]:
    """The parameters of `configs/<name>.yaml` (only what differs from Config), checked against its fields, over the
    values of the profile it builds on, if any (`base: quick`): a recipe is written once. `below`: the profiles that
    build on this one (a circle is refused)."""
    path = profile_path(name)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such profile; available: {', '.join(available_profiles())}")
    params = yaml.safe_load(path.read_text()) or {}
    if not isinstance(params, dict):
        raise ConfigError([f"expected a mapping of Config fields, found a {type(params).__name__}"], str(path))
    base = params.pop("base", None)
    unknown = unknown_names(params)
    if unknown:
        raise ValueError(f"{path}: unknown parameter(s) {unknown}; valid names are the fields of utils.config.Config")
    if base is not None and (not isinstance(base, str) or base in (*below, name) or not profile_path(base).is_file()):
        raise ValueError(f"{path}: base = {base!r}: expected the name of a profile that does not build on "
                         f"{' -> '.join((*below, name))}; available: {', '.join(available_profiles())}")
    return {**(read_profile(base, (*below, name)) if base else {}), **params}


def load_config(profile: str = "paper", **overrides: Any) -> Config:
    """Config's defaults, then configs/<profile>.yaml, then `overrides`; every problem reported at once."""
    params = {**read_profile(profile), "profile": profile, **overrides}
    try:
        return Config.from_params(params)
    except ConfigError as err:
        source = f"profile '{profile}' ({profile_path(profile)})"
        if overrides:
            source += f" with {', '.join(sorted(overrides))} set"
        raise ConfigError(err.problems, source) from None

