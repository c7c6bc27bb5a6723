"""Every knob of the project in one dataclass, with the paper's recipe as the defaults, checked where it is built.

Design choices:
- One dataclass: the notebooks, the YAML profiles in `configs/` and the library all name the same fields,
  so a typo in a profile is an error, not a silently ignored setting. Each default is written once, here:
  a profile lists only what differs from it (with its reason), a notebook's `parameters` cell only the
  knobs a student turns.
- Validation happens in `__post_init__`, so every way of building a Config (a profile, a notebook's
  globals, `run.py -p`, a benchmark's overrides, `dataclasses.replace`, a checkpoint's saved config) is
  checked the same way, before any data is read. Each field carries its rule (`integer(...)`,
  `number(...)`, ...); cross-field rules are in `_cross_field_problems`. One `ConfigError` lists every
  problem, each naming the field, the value given and what is allowed.
- Values are coerced where that loses nothing: an int for a float field (`lr 1`), a numeric string for a
  float (`-p lr 1e-3`, which YAML reads as a string), a tuple for a list, `tta: true/false` (the first
  checkpoint format) for `flip`/`none`. Anything else is refused, never guessed.
- Whether `device` exists is not checked here but when a run starts (`utils.runtime.device.resolve_device`):
  a checkpoint's config must still load on another machine.
- Relative output paths (`run_dir`, `figures_dir`, `submission_path`) resolve under the platform's output
  root (`utils.runtime.platforms`: the repository locally, Google Drive on Colab, /kaggle/working on Kaggle);
  a relative `data_dir` resolves against the repository root.
- Members: `members` models of one recipe, each with its own TRAINING seed (`Config.training_seed`:
  initialisation, batch order, augmentation, dropout, MixUp), all on the same DATA (`seed`: the subset, the
  validation split, the normalisation, the corruption draws). Member 0's training seed is `seed` itself and
  its folder is `run_path`, so `members 1` is exactly the run from before members existed; member k >= 1
  lives in `run_path / "member-k"` (`Config.member_path`). `member` (None: all) only chooses what notebook 03
  / `run.py` trains; notebooks 04 and 05 use every finished member they find.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .runtime import platforms
from .runtime.locate import MEMBER_PREFIX
from .runtime.platforms import resolve_output

CONFIG_DIR = platforms.REPO_ROOT / "configs"
IMAGE_SIDE = 32                     # CIFAR-10 images are 32 x 32
IMAGES_PER_CLASS = 5000             # training images per class in CIFAR-10
NUM_CLASSES = 10
TTA_MODES = ("none", "flip", "flip_shift")
AUTO_AUGMENT = ("none", "trivialaugment")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
PROFILE_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")
STUDENT_FOLDER = "self-training"    # the self-training round's folder inside a run folder (utils.self_training)


def __getattr__(name: str) -> Any:
    """`utils.config.REPO_ROOT` (scripts and tests import it from here) is read from utils.runtime.platforms, its only
    home, when it is asked for, so a test that patches platforms.REPO_ROOT is seen here too."""
    if name == "REPO_ROOT":
        return platforms.REPO_ROOT
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ConfigError(ValueError):
    """One or more fields are invalid; the message lists each with the value given and what is allowed."""

    def __init__(self, problems: list[str], source: str = "Config"):
        self.problems, self.source = list(problems), source
        super().__init__(f"{source}: {len(self.problems)} invalid setting(s):\n  - " + "\n  - ".join(self.problems))


# --------------------------------------------------------------------------------------------
# Field rules
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """What a field accepts; `check(value)` returns (coerced value, None) or (value, what is allowed)."""
    kind: str                                   # int | optint | float | bool | str | path | ints | choice | device
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[str, ...] = ()
    note: str = ""
    none_alias: str = ""                        # optint: a word read as None (member: "all")

    def allowed(self) -> str:
        if self.kind in ("int", "optint", "float"):
            what = "an integer" if self.kind in ("int", "optint") else "a number"
            if self.lo is not None and self.hi is not None:
                left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
                text = f"{what} in {left}{self.lo:g}, {self.hi:g}{right}"
            elif self.lo is not None:
                text = f"{what} {'>' if self.lo_open else '>='} {self.lo:g}"
            else:
                text = what
            if self.kind == "optint":
                text += f" or null{f' ({self.none_alias!r})' if self.none_alias else ''}"
        elif self.kind == "bool":
            text = "true or false"
        elif self.kind == "str":
            text = "a non-empty string"
        elif self.kind == "path":
            text = "a path (string) or null"
        elif self.kind == "ints":
            text = "a non-empty list of integers > 0"
        elif self.kind == "device":
            text = "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        else:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        return f"{text}{f' ({self.note})' if self.note else ''}"

    def _in_range(self, x: float) -> bool:
        if self.lo is not None and (x <= self.lo if self.lo_open else x < self.lo):
            return False
        return not (self.hi is not None and (x >= self.hi if self.hi_open else x > self.hi))

    def check(self, value: Any) -> tuple[Any, str | None]:
        bad = (value, self.allowed())
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                return bad
            return (value, None) if self._in_range(value) else bad
        if self.kind == "optint":
            if value is None or (self.none_alias and value == self.none_alias):
                return None, None
            if isinstance(value, bool) or not isinstance(value, int):
                return bad
            return (value, None) if self._in_range(value) else bad
        if self.kind == "float":
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    return bad
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return bad
            value = float(value)
            return (value, None) if math.isfinite(value) and self._in_range(value) else bad
        if self.kind == "bool":
            return (value, None) if isinstance(value, bool) else bad
        if self.kind == "str":
            return (value, None) if isinstance(value, str) and value.strip() else bad
        if self.kind == "path":
            if value is None:
                return None, None
            if isinstance(value, Path):
                value = str(value)
            return (value, None) if isinstance(value, str) and value.strip() else bad
        if self.kind == "ints":
            if not isinstance(value, (list, tuple)) or not value:
                return bad
            if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
                return bad
            return list(value), None
        if self.kind == "device":
            return (value, None) if isinstance(value, str) and DEVICE_PATTERN.match(value) else bad
        if self.kind == "choice":
            if value is True and "flip" in self.choices:      # tta: true/false, the first checkpoint format
                value = "flip"
            elif value is False and "none" in self.choices:
                value = "none"
            return (value, None) if value in self.choices else bad
        raise AssertionError(f"unknown rule kind {self.kind}")


def _field(default: Any, rule: Rule) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"rule": rule})
    return field(default=default, metadata={"rule": rule})


def integer(default: int, min: int | None = None, max: int | None = None, note: str = "") -> Any:
    return _field(default, Rule("int", min, max, note=note))


def optional_integer(default: int | None, min: int | None = None, none_alias: str = "", note: str = "") -> Any:
    return _field(default, Rule("optint", min, None, note=note, none_alias=none_alias))


def number(default: float, min: float | None = None, above: float | None = None, max: float | None = None,
           below: float | None = None, note: str = "") -> Any:
    return _field(default, Rule("float", min if above is None else above, max if below is None else below,
                                lo_open=above is not None, hi_open=below is not None, note=note))


def flag(default: bool) -> Any:
    return _field(default, Rule("bool"))


def text(default: str) -> Any:
    return _field(default, Rule("str"))


def path(default: str | None) -> Any:
    return _field(default, Rule("path"))


def positive_ints(default: list[int]) -> Any:
    return _field(default, Rule("ints"))


def choice(default: str, options: tuple[str, ...]) -> Any:
    return _field(default, Rule("choice", choices=options))


def device_name_field(default: str) -> Any:
    return _field(default, Rule("device"))


# --------------------------------------------------------------------------------------------
# The configuration
# --------------------------------------------------------------------------------------------
@dataclass
class Config:
    profile: str = text("paper")
    # --- paths: outputs under the platform's output root, data_dir under the repository ---
    data_dir: str | None = path(None)            # None: $CIFAR10_DIR, ./data, Kaggle's input, or download
    run_dir: str | None = path(None)             # checkpoints + history; None: runs/<profile>/checkpoints
    figures_dir: str = text("figures")
    submission_path: str = text("submissions/submission.csv")
    nolabel_path: str | None = path(None)        # None: found beside the data (utils.dataset.find_nolabel)
    # --- data ---
    subset_per_class: int = integer(0, min=0, max=IMAGES_PER_CLASS, note="0: all 5,000 per class")
    val_fraction: float = number(0.1, min=0.0, below=1.0, note="0: no validation split, train on every image")
    test_limit: int = integer(0, min=0, note="0: the whole labeled test set")
    # --- model (the paper's CustomResNet) ---
    channels: list[int] = positive_ints([48, 96, 128, 364])
    blocks: list[int] = positive_ints([2, 2, 2, 2])
    dropout: float = number(0.1, min=0.0, below=1.0)
    # --- optimisation (the paper's recipe) ---
    epochs: int = integer(100, min=1)
    batch_size: int = integer(128, min=1)
    lr: float = number(0.1, above=0.0, note="OneCycleLR's max_lr")
    momentum: float = number(0.9, min=0.0, below=1.0, note="SGD's momentum where cycle_momentum is false")
    cycle_momentum: bool = flag(True)            # OneCycleLR cycles SGD's momentum 0.95 -> 0.85 -> 0.95 (PyTorch's
    #   default, which the paper's code ran): `momentum` is then not used. False: SGD keeps `momentum` throughout.
    nesterov: bool = flag(False)
    weight_decay: float = number(5e-4, min=0.0)
    pct_start: float = number(0.1, above=0.0, below=1.0, note="the warm-up share of the schedule")
    patience: int = integer(10, min=0, note="epochs without a better val accuracy before stopping; 0: never stop")
    # --- beyond the paper (all off in `paper`) ---
    label_smoothing: float = number(0.0, min=0.0, below=1.0)
    ema_decay: float = number(0.0, min=0.0, below=1.0, note="0: no weight averaging")
    cutout: int = integer(0, min=0, max=IMAGE_SIDE - 1, note="side of the erased square, smaller than the image")
    auto_augment: str = choice("none", AUTO_AUGMENT)     # trivialaugment: one random op and magnitude per image
    mixup_alpha: float = number(0.0, min=0.0, note="Beta(alpha, alpha) for MixUp; 0: off")
    cutmix_alpha: float = number(0.0, min=0.0, note="Beta(alpha, alpha) for CutMix; 0: off")
    tta: str = choice("none", TTA_MODES)                 # test-time augmentation at evaluation and submission
    self_training: float = number(0.0, min=0.0, max=1.0,
                                  note="share of the unlabeled images the members' ensemble labels, the most "
                                       "confident per class, for a second training (utils.self_training); 0: off")
    corruption_images: int = integer(1000, min=0, note="test images per corruption and severity; 0: all")
    # --- runtime ---
    seed: int = integer(0, min=0)
    device: str = device_name_field("auto")      # auto: cuda, then mps, then cpu
    deterministic: bool = flag(False)
    amp: bool = flag(True)                       # mixed precision where the device gains from it (utils.runtime.device)
    channels_last: bool = flag(True)             # where the device gains from it
    compile: bool = flag(False)                  # torch.compile, where the device allows it
    eval_batch_size: int = integer(500, min=1)
    resume: bool = flag(True)                    # continue from run_dir/last.pt when it exists
    # --- members and sessions (run-time fields: changing them never blocks a resume) ---
    members: int = integer(1, min=1, note="models of this recipe, each with its own training seed, averaged by "
                                          "04 and 05")
    member: int | None = optional_integer(None, min=0, none_alias="all",
                                          note="which member notebook 03 / run.py trains; null: all of them")
    max_epochs_this_call: int | None = optional_integer(None, min=0, note="0 or null: no limit; N: train at most "
                                                                           "N epochs now, the next call resumes")
    monitor_every: int = integer(5, min=0, note="with val_fraction 0: evaluate the labeled test batch every N "
                                                "epochs and at the last, as a monitor that chooses nothing")
    allow_unfinished: bool = flag(False)         # 04 / 05 use a member whose run has not finished, saying so

    def __post_init__(self) -> None:
        problems, invalid = [], set()
        for f in fields(self):
            value, allowed = f.metadata["rule"].check(getattr(self, f.name))
            if allowed is None:
                setattr(self, f.name, value)
            else:
                problems.append(f"{f.name} = {value!r}: expected {allowed}")
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
                       "final weights" + (" (EMA)" if self.ema_decay else "")
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
    if valid("profile") and not PROFILE_PATTERN.match(cfg.profile):
        problems.append(f"profile = {cfg.profile!r}: expected letters, digits, '_', '-' or '.' (it names a folder)")
    if valid("submission_path") and not cfg.submission_path.endswith(".csv"):
        problems.append(f"submission_path = {cfg.submission_path!r}: expected a file name ending in .csv")
    if valid("subset_per_class", "val_fraction") and cfg.has_validation:
        per_class = cfg.subset_per_class or IMAGES_PER_CLASS
        n = per_class * NUM_CLASSES
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
                  "amp", "channels_last", "compile", "eval_batch_size", "resume", "tta", "profile",
                  "corruption_images", "members", "member", "max_epochs_this_call", "monitor_every",
                  "allow_unfinished", "self_training"}
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


def read_profile(name: str) -> dict[str, Any]:
    """The raw parameters of `configs/<name>.yaml` (only what differs from Config), checked against its fields."""
    path = profile_path(name)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such profile; available: {', '.join(available_profiles())}")
    params = yaml.safe_load(path.read_text()) or {}
    if not isinstance(params, dict):
        raise ConfigError([f"expected a mapping of Config fields, found a {type(params).__name__}"], str(path))
    unknown = unknown_names(params)
    if unknown:
        raise ValueError(f"{path}: unknown parameter(s) {unknown}; valid names are the fields of "
                         "utils.config.Config")
    return params


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


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """A profile with overrides, as the benchmarks take it: 'fast:ema_decay=0,cutout=0' -> ('fast', {...})."""
    name, _, rest = spec.partition(":")
    overrides: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in Config.field_names():
            raise ValueError(f"bad override {item!r} in {spec!r}: use FIELD=VALUE with a field of utils.config.Config")
        overrides[key] = yaml.safe_load(value)
    return name, overrides


def config_from_namespace(namespace: Mapping[str, Any]) -> Config:
    """A notebook's Config: its `profile`, with every Config field the notebook defines (its `parameters` cell,
    or what papermill injected) set over the profile's values."""
    profile = namespace.get("profile", "paper")
    overrides = {k: namespace[k] for k in Config.field_names() if k in namespace and k != "profile"}
    return load_config(profile, **overrides)
