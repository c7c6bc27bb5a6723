"""Config: every field validated where it is built, one error naming every bad field; profiles list only
what differs from the defaults; run.py refuses bad values in seconds, before notebook 01."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import time

import pytest
import yaml

from utils.config import (
    CONFIG_DIR,
    Config,
    ConfigError,
    available_profiles,
    load_config,
    read_profile,
)
from utils.notebook import config_from_namespace
from utils.runtime import platforms
from utils.runtime.device import DeviceError, resolve_device

# (field, bad value, what the message must say about what is allowed)
BAD_VALUES = [
    ("profile", "", "non-empty string"),
    ("profile", "my profile/1", "names a folder"),
    ("data_dir", 3, "path"),
    ("run_dir", ["a"], "path"),
    ("figures_dir", None, "non-empty string"),
    ("submission_path", "out/submission.txt", ".csv"),
    ("submission_path", 7, "non-empty string"),
    ("nolabel_path", 1.5, "path"),
    ("subset_per_class", -1, "integer in [0, 5000]"),
    ("subset_per_class", 5001, "integer in [0, 5000]"),
    ("subset_per_class", 2.5, "integer"),
    ("val_fraction", 1.0, "[0, 1)"),
    ("val_fraction", -0.1, "[0, 1)"),
    ("val_fraction", "half", "number"),
    ("test_limit", -5, ">= 0"),
    ("channels", [48, 0, 128, 364], "integers > 0"),
    ("channels", [], "non-empty list"),
    ("channels", "48,96", "list of integers"),
    ("blocks", [2, True, 2, 2], "integers > 0"),
    ("dropout", 1.5, "[0, 1)"),
    ("dropout", -0.1, "[0, 1)"),
    ("zero_init_residual", "yes", "true or false"),
    ("stem_init", "pca", "'patch_pca'"),
    ("epochs", "abc", "integer >= 1"),
    ("epochs", 0, "integer >= 1"),
    ("epochs", 3.0, "integer"),
    ("batch_size", 0, "integer >= 1"),
    ("batch_size", True, "integer"),
    ("lr", -1, "> 0"),
    ("lr", 0, "> 0"),
    ("lr", float("nan"), "> 0"),
    ("schedule", "cosine", "one of 'onecycle', 'linear'"),
    ("schedule", None, "'linear'"),
    ("momentum", 1.0, "[0, 1)"),
    ("nesterov", "yes", "true or false"),
    ("cycle_momentum", "no", "true or false"),
    ("weight_decay", -1e-4, ">= 0"),
    ("decay_norm_and_bias", 0, "true or false"),
    ("pct_start", 0.0, "(0, 1)"),
    ("pct_start", -0.1, "(0, 1)"),
    ("pct_start", 1.0, "(0, 1)"),
    ("patience", -1, ">= 0"),
    ("label_smoothing", 1.0, "[0, 1)"),
    ("ema_decay", 1.0, "[0, 1)"),
    ("ema_decay", -0.5, "[0, 1)"),
    ("ema_window", 1.5, "[0, 1]"),
    ("ema_window", -0.1, "[0, 1]"),
    ("crop_padding", 9, "integer in [0, 8]"),
    ("crop_padding", -1, "integer in [0, 8]"),
    ("crop_padding", 2.0, "integer"),
    ("padding_mode", "edge", "one of 'zeros', 'reflect'"),
    ("alternating_flip", "on", "true or false"),
    ("cutout", 32, "smaller than the image"),
    ("cutout", -2, "[0, 31]"),
    ("auto_augment", "randaugment", "'trivialaugment'"),
    ("mixup_alpha", -0.2, ">= 0"),
    ("cutmix_alpha", "x", "number"),
    ("tta", "tencrop", "'flip_shift'"),
    ("tta", "translate", "'flip_translate'"),
    ("tta_weights", [1, -1], "list of numbers >= 0 or null"),
    ("tta_weights", [], "non-empty list"),
    ("tta_weights", "1,1", "list of numbers"),
    ("tta_weights", [float("inf")], "numbers >= 0"),
    ("self_training", 1.5, "[0, 1]"),
    ("self_training", "most", "number"),
    ("corruption_images", -1, ">= 0"),
    ("seed", -3, ">= 0"),
    ("seed", "0", "integer"),
    ("device", "gpu", "'cuda:N'"),
    ("device", "cuda:x", "'cuda:N'"),
    ("deterministic", 1, "true or false"),
    ("amp", "true", "true or false"),
    ("channels_last", None, "true or false"),
    ("compile", 0, "true or false"),
    ("eval_batch_size", 0, "integer >= 1"),
    ("resume", "no", "true or false"),
    ("members", 0, "integer >= 1"),
    ("members", 1.5, "integer >= 1"),
    ("member", -1, "integer >= 0 or null"),
    ("member", "two", "integer >= 0 or null ('all')"),
    ("max_epochs_this_call", -1, "integer >= 0 or null"),
    ("monitor_every", -1, "integer >= 0"),
    ("allow_unfinished", "yes", "true or false"),
]


@pytest.mark.parametrize("name, value, allowed", BAD_VALUES, ids=[f"{n}={v!r}" for n, v, _ in BAD_VALUES])
def test_a_bad_value_is_refused_naming_the_field_the_value_and_what_is_allowed(name, value, allowed):
    with pytest.raises(ConfigError) as err:
        Config(**{name: value})
    message = str(err.value)
    assert f"{name} = {value!r}" in message or f"{name} = " in message, message
    assert allowed in message, message
    assert len(err.value.problems) == 1, err.value.problems


def test_every_field_has_a_rule_and_a_bad_value_in_the_table():
    tested = {name for name, _, _ in BAD_VALUES}
    assert set(Config.field_names()) <= tested, sorted(set(Config.field_names()) - tested)
    assert all("rule" in f.metadata for f in dataclasses.fields(Config))


@pytest.mark.parametrize("changes, message", [
    ({"channels": [48, 96, 128], "blocks": [2, 2, 2, 2]}, "one entry per stage"),
    ({"nesterov": True, "momentum": 0.0}, "Nesterov momentum needs momentum > 0"),
    ({"subset_per_class": 5, "val_fraction": 0.1}, "at least one image per class"),
    ({"subset_per_class": 20, "val_fraction": 0.99}, "at least one image per class"),
    ({"members": 2, "member": 2}, r"member = 2 with members = 2: expected a member index from 0 to 1"),
    ({"member": 1}, r"member = 1 with members = 1"),
    ({"monitor_every": 0, "val_fraction": 0.0}, r"monitor_every = 0 with val_fraction = 0.0"),
    ({"tta_weights": [1, 1]}, r"tta_weights = \[1.0, 1.0\] with tta = 'none': expected 1 weight"),
    ({"tta": "flip", "tta_weights": [1, 1, 1]}, r"with tta = 'flip': expected 2 weight\(s\), one per view"),
    ({"tta": "flip_translate", "tta_weights": [1] * 4}, r"with tta = 'flip_translate': expected 6 weight"),
    ({"tta": "flip", "tta_weights": [0, 0]}, r"tta_weights = \[0.0, 0.0\] .*with a sum > 0"),
    ({"ema_window": 0.2, "ema_decay": 0.99}, r"ema_decay = 0.99 with ema_window = 0.2: .* expected ema_decay 0"),
])
def test_cross_field_rules(changes, message):
    with pytest.raises(ConfigError, match=message):
        Config(**changes)


def test_one_error_lists_every_problem_at_once():
    with pytest.raises(ConfigError) as err:
        Config(epochs="abc", batch_size=0, dropout=1.5, lr=-1, channels=[1, 2])
    fields = [p.split(" ")[0] for p in err.value.problems]
    assert fields == ["dropout", "epochs", "batch_size", "lr", "channels"]


def test_values_are_coerced_only_where_nothing_is_lost():
    cfg = Config(lr=1, weight_decay="1e-3", channels=(8, 16), blocks=(1, 1), tta=True, data_dir=platforms.REPO_ROOT)
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.weight_decay == 0.001
    assert cfg.channels == [8, 16] and cfg.tta == "flip" and cfg.data_dir == str(platforms.REPO_ROOT)
    assert Config(tta=False).tta == "none"
    with pytest.raises(ConfigError):
        Config().replace(epochs=0)                 # dataclasses.replace goes through the same check


def test_defaults_are_the_papers_recipe():
    cfg = Config()
    assert (cfg.channels, cfg.blocks, cfg.dropout) == ([48, 96, 128, 364], [2, 2, 2, 2], 0.1)
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.nesterov) == (0.1, 0.9, 5e-4, False)
    assert (cfg.pct_start, cfg.batch_size, cfg.epochs, cfg.patience, cfg.val_fraction) == (0.1, 128, 100, 10, 0.1)
    assert (cfg.label_smoothing, cfg.ema_decay, cfg.cutout, cfg.auto_augment, cfg.tta) == (0.0, 0.0, 0, "none", "none")
    assert (cfg.mixup_alpha, cfg.cutmix_alpha, cfg.subset_per_class) == (0.0, 0.0, 0)
    assert (cfg.schedule, cfg.decay_norm_and_bias, cfg.zero_init_residual, cfg.stem_init) == ("onecycle", True, False,
                                                                                              "default")
    assert (cfg.crop_padding, cfg.padding_mode, cfg.alternating_flip) == (4, "zeros", False)
    assert (cfg.ema_window, cfg.tta_weights) == (0.0, None)
    assert load_config("paper") == Config(profile="paper")


@pytest.mark.parametrize("name", available_profiles())
def test_every_profile_loads_and_lists_only_what_differs_from_the_defaults(name):
    cfg = load_config(name)
    assert cfg.profile == name
    defaults = Config().to_dict()
    same = {k: v for k, v in read_profile(name).items() if defaults.get(k) == v}
    assert not same, f"configs/{name}.yaml repeats defaults: {same}"
    own = yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text()) or {}
    base = own.pop("base", None)
    inherited = read_profile(base) if base else {}
    repeated = {k: v for k, v in own.items() if k in inherited and inherited[k] == v}
    assert not repeated, f"configs/{name}.yaml repeats what its base profile '{base}' sets: {repeated}"
    text = (CONFIG_DIR / f"{name}.yaml").read_text().splitlines()
    settings = [line for line in text if line and not line.startswith("#")]
    assert all("#" in line for line in settings), f"configs/{name}.yaml: every setting needs its reason"


def test_a_profile_builds_on_its_base_and_overrides_it():
    """leaderboard lists only what it adds to quick; quick's recipe reaches it (and follows quick when it changes)."""
    own = yaml.safe_load((CONFIG_DIR / "leaderboard.yaml").read_text())
    assert own.pop("base") == "quick" and "nesterov" not in own and "label_smoothing" not in own
    board, quick = load_config("leaderboard"), load_config("quick")
    for name, value in read_profile("quick").items():
        assert getattr(board, name) == own.get(name, value), name
    assert (board.val_fraction, quick.val_fraction) == (0.0, 0.1)     # its own line wins over the base's default
    assert board.nesterov and board.label_smoothing == 0.1 and board.ema_decay == 0.999


@pytest.mark.parametrize("lines, message", [
    ({"base": "no-such-profile", "epochs": 3}, r"base = 'no-such-profile': expected the name of a profile"),
    ({"base": 3}, r"base = 3: expected the name of a profile"),
    ({"base": "broken-test-profile"}, r"base = 'broken-test-profile': .* not build on broken-test-profile; "),
    ({"base": "broken-test-other"}, r"base = 'broken-test-profile': .* not build on broken-test-profile -> "
                                    r"broken-test-other; "),
    ({"base": "quick", "epoch": 3}, r"unknown parameter\(s\) \['epoch'\]"),
])
def test_a_bad_base_names_the_file(lines, message):
    path, other = CONFIG_DIR / "broken-test-profile.yaml", CONFIG_DIR / "broken-test-other.yaml"
    path.write_text(yaml.safe_dump(lines))
    other.write_text(yaml.safe_dump({"base": "broken-test-profile"}))     # a circle of two, where lines name it
    try:
        with pytest.raises(ValueError, match=r"broken-test-(profile|other)\.yaml: .*" + message):
            load_config("broken-test-profile")
    finally:
        path.unlink()
        other.unlink()


def test_a_bad_profile_names_the_file():
    path = CONFIG_DIR / "broken-test-profile.yaml"
    path.write_text(yaml.safe_dump({"epochs": 0}))
    try:
        with pytest.raises(ConfigError, match=r"broken-test-profile\.yaml.*\n.*epochs = 0"):
            load_config("broken-test-profile")
        path.write_text(yaml.safe_dump({"epoch": 3}))
        with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['epoch'\]"):
            load_config("broken-test-profile")
    finally:
        path.unlink()


def test_a_notebooks_globals_override_its_profile():
    cfg = config_from_namespace({"profile": "smoke", "epochs": 3, "REPO_URL": "x", "In": [], "seed": 0})
    assert (cfg.profile, cfg.epochs, cfg.subset_per_class) == ("smoke", 3, 500)
    with pytest.raises(ConfigError, match="epochs = 'three'"):
        config_from_namespace({"profile": "smoke", "epochs": "three"})


def test_val_fraction_zero_is_accepted_and_turns_early_stopping_off():
    cfg = Config(val_fraction=0.0, patience=10, subset_per_class=3)
    assert not cfg.has_validation and not cfg.early_stopping
    assert any("early stopping (patience 10) is off" in note for note in cfg.notes())
    assert Config().early_stopping and not Config(patience=0).early_stopping


def test_the_device_is_checked_when_a_run_starts_not_when_a_config_is_built():
    cfg = Config(device="cuda:3")               # a checkpoint's config must load on any machine
    with pytest.raises(DeviceError, match='device="cuda:3"'):
        resolve_device(cfg.device)


# --- files and environment ---------------------------------------------------------------------------
def test_run_py_refuses_bad_values_in_seconds_before_notebook_01(tmp_path):
    started = time.perf_counter()
    args = ["-p", "epochs", "abc", "-p", "batch_size", "0", "-p", "dropout", "1.5", "-p", "lr", "-1",
            "--out", str(tmp_path / "executed")]
    done = subprocess.run([sys.executable, "run.py", "--profile", "smoke", *args], cwd=platforms.REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    for field in ("epochs = 'abc'", "batch_size = 0", "dropout = 1.5", "lr = -1"):
        assert field in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "executed").exists()
    assert time.perf_counter() - started < 60


@pytest.mark.parametrize("args, message", [
    (["-p", "device", "cuda"], 'device="cuda" was requested'),
    (["-p", "run_dir", "/proc/cannot-write-here"], "run_dir"),
    (["-p", "figures_dir", "{blocker}/figures"], "is a file, not a folder"),
    (["-p", "epoch", "3"], "unknown parameter(s) ['epoch']"),
    (["-p", "profile", "fast"], "choose the profile with --profile"),
])
def test_run_py_refuses_a_missing_device_unwritable_outputs_and_unknown_names(tmp_path, args, message):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = [a.format(blocker=blocker) for a in args]
    done = subprocess.run([sys.executable, "run.py", "--profile", "smoke", *args, "--out", str(tmp_path / "x")],
                          cwd=platforms.REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


# --- members ------------------------------------------------------------------------------------------------
def test_members_share_the_data_seed_and_each_has_its_own_training_seed_and_folder(tmp_path):
    cfg = Config(members=3, seed=7, run_dir=str(tmp_path / "run"))
    seeds = [cfg.training_seed(k) for k in range(3)]
    assert seeds[0] == 7 and len(set(seeds)) == 3 and all(0 <= s < 2**31 for s in seeds)
    assert Config(members=3, seed=8).training_seed(1) not in seeds          # no member repeats another seed's
    assert [cfg.member_path(k) for k in range(3)] == [tmp_path / "run", tmp_path / "run" / "member-1",
                                                      tmp_path / "run" / "member-2"]
    one = cfg.replace(member=2)
    assert one.member_indices == [2] and cfg.member_indices == [0, 1, 2]
    assert one.training_seed() == seeds[2] and one.member_path() == tmp_path / "run" / "member-2"
    assert one.seed == 7                                                     # the data seed stays shared
    assert Config(member="all").member is None and Config(members=2, member=1).member == 1


def test_member_fields_are_run_time_so_changing_them_never_blocks_a_resume():
    from utils.config import RUNTIME_FIELDS, recipe_differences
    assert {"members", "member", "max_epochs_this_call", "monitor_every", "allow_unfinished"} <= RUNTIME_FIELDS
    saved = Config(members=1).to_dict()
    assert recipe_differences(saved, Config(members=3, member=2, max_epochs_this_call=5, monitor_every=2,
                                            allow_unfinished=True)) == []
    assert Config(max_epochs_this_call=0).epoch_limit is None and Config(max_epochs_this_call=4).epoch_limit == 4


def test_run_py_refuses_bad_member_settings_before_notebook_01(tmp_path):
    args = ["-p", "members", "0", "-p", "member", "-1", "-p", "monitor_every", "0", "-p", "val_fraction", "0"]
    done = subprocess.run([sys.executable, "run.py", "--profile", "smoke", *args, "--out", str(tmp_path / "x")],
                          cwd=platforms.REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    for message in ("members = 0", "member = -1", "monitor_every = 0 with val_fraction = 0.0"):
        assert message in done.stderr, done.stderr
    assert not (tmp_path / "x").exists()


def test_tta_weights_are_read_as_numbers_and_both_tta_fields_are_run_time():
    from utils.config import RUNTIME_FIELDS, recipe_differences
    cfg = Config(tta="flip_translate", tta_weights=(2, 2, 1, 1, 1, "1e0"))
    assert cfg.tta_weights == [2.0, 2.0, 1.0, 1.0, 1.0, 1.0] and all(isinstance(w, float) for w in cfg.tta_weights)
    assert Config(tta="flip", tta_weights=[0, 3]).tta_weights == [0.0, 3.0]      # a view may weigh nothing
    assert {"tta", "tta_weights"} <= RUNTIME_FIELDS
    assert recipe_differences(Config().to_dict(), cfg) == []
    knobs = dict(schedule="linear", decay_norm_and_bias=False, zero_init_residual=True, stem_init="patch_pca",
                 alternating_flip=True, crop_padding=2, padding_mode="reflect", ema_window=0.1)
    assert not set(knobs) & RUNTIME_FIELDS
    assert len(recipe_differences(Config().to_dict(), Config(**knobs))) == len(knobs)   # each one blocks a resume
