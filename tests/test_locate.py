"""utils.runtime.locate (and the finders built on it: utils.dataset.find_data_dir / find_nolabel, utils.checkpoint.
find_run_folder / find_checkpoint): inputs found where each platform's sheet (tests/platform_facts.py) says they
are, in both of Kaggle's mount layouts, with margin in the search depth; errors name every place searched.
"""
from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch
from layouts import make_layout
from platform_facts import COLAB, COMPETITION, SHEETS
from platform_sandbox import SLUG, USER, competition_cache, enter, fake_google_colab, isolate, real

from utils import checkpoint
from utils.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    continue_attached_run,
    find_checkpoint,
    find_run_folder,
    load_checkpoint,
    progress_record,
)
from utils.config import load_config
from utils.dataset import DataNotFoundError, find_data_dir, find_nolabel, load_cifar10, load_unlabeled
from utils.runtime import locate, platforms

KAGGLE_SHEETS = {name: sheet for name, sheet in SHEETS.items() if sheet.name == "kaggle"}
LAYOUTS = {sheet.competition_dir for sheet in KAGGLE_SHEETS.values()}


@pytest.fixture(autouse=True)
def sandbox(monkeypatch, tmp_path):
    """Also the repository: a folder of its own (this checkout's data/ may hold the real CIFAR-10)."""
    isolate(monkeypatch, tmp_path)
    monkeypatch.setattr(platforms, "REPO_ROOT", tmp_path / "repo")
    platforms.REPO_ROOT.mkdir()
    return tmp_path


@pytest.fixture(params=sorted(KAGGLE_SHEETS))
def kaggle(request, monkeypatch):
    """Each of Kaggle's sheets: both mount layouts, interactive and batch (Colab's signals present in all)."""
    sheet = KAGGLE_SHEETS[request.param]
    enter(monkeypatch, sheet)
    return sheet


@pytest.fixture
def colab(monkeypatch):
    fake_google_colab(monkeypatch)
    enter(monkeypatch, COLAB)
    return COLAB


def lay_out_batches(folder: Path) -> Path:
    (folder / locate.BATCHES_SUBDIR).mkdir(parents=True)
    return folder


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_the_sheets_cover_both_kaggle_mount_layouts():
    assert LAYOUTS == {f"/kaggle/input/competitions/{COMPETITION}", f"/kaggle/input/{COMPETITION}"}


# --------------------------------------------------------------------------------------------
# The data
# --------------------------------------------------------------------------------------------
def test_local_data_dirs_default_order(monkeypatch, tmp_path):
    assert locate.data_dirs() == [platforms.REPO_ROOT / "data", tmp_path / "cwd" / "data"]
    monkeypatch.setenv("CIFAR10_DIR", str(tmp_path / "mine"))
    assert locate.data_dirs() == [tmp_path / "mine", platforms.REPO_ROOT / "data", tmp_path / "cwd" / "data"]
    monkeypatch.chdir(platforms.REPO_ROOT)   # ./data is platforms.REPO_ROOT/data: listed once
    assert locate.data_dirs() == [tmp_path / "mine", platforms.REPO_ROOT / "data"]


def test_explicit_data_dir_is_the_only_candidate(monkeypatch, tmp_path, kaggle):
    monkeypatch.setenv("CIFAR10_DIR", str(tmp_path / "mine"))
    lay_out_batches(real(kaggle.competition_dir))
    assert locate.data_dirs(tmp_path / "given") == [tmp_path / "given"]
    assert locate.data_dirs("somewhere/data") == [platforms.REPO_ROOT / "somewhere" / "data"]
    assert locate.searched("data", tmp_path / "given") == []


def test_kaggle_competition_data_found_in_its_mount_layout(kaggle):
    mounted = lay_out_batches(real(kaggle.competition_dir))
    assert locate.data_dirs()[2:] == [mounted]
    assert find_data_dir() == mounted


def test_kaggle_data_found_in_both_layouts_whatever_the_folders_are_called(kaggle):
    kaggle_input = platforms.KAGGLE_INPUT
    found = [lay_out_batches(real(fact)) for fact in sorted(LAYOUTS, key=len)]    # older (depth 1), current (2)
    weird = lay_out_batches(kaggle_input / "Some Weird Name_v3")
    deepest = lay_out_batches(kaggle_input / "a" / "b" / "c" / "d" / "e")          # depth 5: found
    lay_out_batches(kaggle_input / "a" / "b" / "c" / "d" / "e" / "f")              # depth 6: not searched
    (kaggle_input / "empty-dataset").mkdir()
    assert locate.DATA_SEARCH_DEPTH == 5
    assert locate.data_dirs()[2:] == [weird, found[0], found[1], deepest]


def test_data_inside_an_attached_notebooks_clone_is_found_in_both_layouts(kaggle):
    """The deepest place data is expected: the clone (with its data/) in an attached notebook's output, 5 levels
    down in the current layout (notebooks/<user>/<slug>/<repo>/data), 3 in the older one."""
    inside = lay_out_batches(real(kaggle.repo_copy_dir) / "data")
    assert find_data_dir() == inside


def test_kaggle_data_at_the_input_root_itself(kaggle):
    lay_out_batches(platforms.KAGGLE_INPUT)
    assert locate.data_dirs()[-1] == platforms.KAGGLE_INPUT


def test_no_kaggle_input_folder_means_no_kaggle_candidates():
    assert not platforms.KAGGLE_INPUT.exists()
    assert len(locate.data_dirs()) == 2 and locate.searched("data") == []


def test_kaggle_without_competition_data_names_both_mount_layouts(kaggle, tmp_path):
    root = platforms.KAGGLE_INPUT
    lay_out_batches(real(kaggle.repo_copy_dir) / "x" / "y" / "z" / "data")        # too deep to count
    for find, what in ((find_data_dir, "cifar-10-python/cifar-10-batches-py/"), (find_nolabel, "cifar_test_nolabel")):
        with pytest.raises(DataNotFoundError) as err:
            find()
        message = str(err.value)
        assert f"{root}/competitions/{COMPETITION}/ (current layout)" in message, message
        assert f"{root}/{COMPETITION}/ (older sessions)" in message
        assert f"every folder under {root} to depth 5, for {what}" in message
        assert f"Add Input > Competitions > {COMPETITION}" in message


def test_kagglehub_cache_holds_the_data_on_any_platform():
    cached = lay_out_batches(competition_cache(COLAB))
    assert find_data_dir() == cached


# --------------------------------------------------------------------------------------------
# The unlabeled pickle
# --------------------------------------------------------------------------------------------
def test_nolabel_found_in_each_place(monkeypatch, tmp_path, kaggle):
    name = locate.NOLABEL_FILE
    kaggle_input = platforms.KAGGLE_INPUT
    mine = tmp_path / "mine"
    monkeypatch.setenv("CIFAR10_DIR", str(mine))
    mounted = touch(real(kaggle.competition_dir) / name)
    in_kaggle = touch(kaggle_input / "any-dataset-name" / name)
    deeper = touch(kaggle_input / "x" / "slug" / "y" / "z" / name)                 # depth 4
    deepest = touch(kaggle_input / "a" / "b" / "c" / "d" / "e" / name)             # depth 5: found
    touch(kaggle_input / "a" / "b" / "c" / "d" / "e" / "f" / name)                 # depth 6: too deep
    walked = sorted([mounted, in_kaggle], key=lambda p: (len(p.relative_to(kaggle_input).parts), str(p)))
    repo_data = platforms.REPO_ROOT / "data" / name
    searched = [repo_data, *walked, deeper, deepest]
    assert locate.nolabel_candidates() == [mine / name, *searched]
    # a data folder given replaces $CIFAR10_DIR (as for the batches); the searched places still follow
    assert locate.nolabel_candidates(data_dir=tmp_path / "data") == [tmp_path / "data" / name, *searched]
    assert locate.nolabel_candidates(data_dir="data")[0] == platforms.REPO_ROOT / "data" / name   # relative: repo
    assert locate.nolabel_candidates(tmp_path / "given.pkl") == [tmp_path / "given.pkl"]
    assert locate.nolabel_candidates(data_dir=tmp_path, filename="other.pkl")[0] == tmp_path / "other.pkl"
    monkeypatch.delenv("CIFAR10_DIR")
    assert find_nolabel() == walked[0]


def test_a_given_data_folder_beats_cifar10_dir_for_the_batches_and_the_pickle_alike(monkeypatch, tmp_path):
    """One rule for every input: explicit, then the environment, then the searched places. $CIFAR10_DIR names
    another complete layout; with data_dir given, nothing is read from it, and without, it is used."""
    given = make_layout(tmp_path / "given", per_batch=10, n_test=10, n_unlabeled=20)
    other = make_layout(tmp_path / "other", per_batch=20, n_test=20, n_unlabeled=40)
    monkeypatch.setenv("CIFAR10_DIR", str(other))
    for data_dir in (given, str(given)):
        assert find_data_dir(data_dir) == given
        assert find_nolabel(None, data_dir) == given / locate.NOLABEL_FILE
        assert not any(platforms.is_under(p, other) for p in locate.data_dirs(data_dir)
                       + locate.nolabel_candidates(None, data_dir))
    assert load_cifar10(given, download=False).train_images.shape[0] == 5 * 10
    assert len(load_unlabeled(find_nolabel(None, given))[1]) == 20
    (given / locate.NOLABEL_FILE).unlink()          # absent from the given folder: the searched places, not the env
    assert find_nolabel(None, given, required=False) is None
    repo_copy = make_layout(platforms.REPO_ROOT / "data", per_batch=5, n_test=5, n_unlabeled=10) / locate.NOLABEL_FILE
    assert find_nolabel(None, given) == repo_copy
    assert find_data_dir() == other and find_nolabel() == other / locate.NOLABEL_FILE    # nothing given: the env


def test_nolabel_in_each_kaggle_mount_layout(kaggle):
    assert find_nolabel(required=False) is None
    mounted = touch(real(kaggle.competition_dir) / locate.NOLABEL_FILE)
    assert find_nolabel() == mounted


def test_colab_finds_the_unlabeled_pickle_on_drive_and_in_kagglehubs_cache(colab):
    root = platforms.COLAB_MYDRIVE / platforms.REPO_ROOT.name
    cache = competition_cache(colab)
    name = locate.NOLABEL_FILE
    assert locate.nolabel_candidates()[-3:] == [root / name, root / "data" / name, cache / name]
    with pytest.raises(DataNotFoundError) as err:
        find_nolabel()
    assert f"every folder under {cache} to depth 3" in str(err.value)
    assert f"kagglehub.competition_download('{COMPETITION}')" in str(err.value)
    nested = touch(cache / "extracted" / name)        # however the download unpacked it
    assert find_nolabel() == nested
    direct = touch(cache / name)
    assert find_nolabel() == direct
    assert root / name not in locate.nolabel_candidates(root / "elsewhere.pkl")   # explicit: only it


def test_walk_dirs_depth_order_and_pruning(tmp_path):
    for rel in ("b/x", "a/y/z", ".hidden/q", "member-1/deep"):
        (tmp_path / "w" / rel).mkdir(parents=True)
    root = tmp_path / "w"

    def rels(paths):
        return [p.relative_to(root).as_posix() for p in paths]

    assert rels(locate.walk_dirs(root, 1)) == [".", "a", "b", "member-1"]
    assert rels(locate.walk_dirs(root, 5)) == [".", "a", "b", "member-1", "a/y", "b/x", "member-1/deep", "a/y/z"]
    pruned = locate.walk_dirs(root, 5, descend=lambda d: not locate.is_member_folder(d))
    assert rels(pruned) == [".", "a", "b", "member-1", "a/y", "b/x", "a/y/z"]
    assert list(locate.walk_dirs(tmp_path / "missing", 3)) == []


# --------------------------------------------------------------------------------------------
# Run folders: best.pt in this run, or in an attached notebook's output (Kaggle)
# --------------------------------------------------------------------------------------------
def save_best(folder: Path, profile: str = "smoke", **overrides) -> Path:
    """A best.pt whose saved recipe is `profile`'s (with `overrides`), as training writes it."""
    cfg = load_config(profile, **overrides)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "model": {}}, folder / locate.BEST)
    return folder


def attached_run(sheet, profile: str = "smoke", slug: str = SLUG, **overrides) -> Path:
    """The run folder of `profile` in an attached training notebook's output (its whole /kaggle/working)."""
    return save_best(real(sheet.notebook_output_dir, slug=slug) / "runs" / profile / "checkpoints", profile,
                     **overrides)


def test_member_one_of_the_current_layout_sits_seven_levels_down_within_the_search_depth(kaggle):
    cfg = load_config("smoke")
    member = save_best(real(kaggle.notebook_output_dir) / "runs" / "smoke" / "checkpoints" / "member-1")
    depth = len(member.relative_to(platforms.KAGGLE_INPUT).parts)
    assert depth == (7 if "notebooks" in kaggle.notebook_output_dir else 5)
    assert locate.RUN_SEARCH_DEPTH == 9 >= depth + 2
    assert locate.run_folder_candidates(cfg.run_path, "smoke") == [cfg.run_path]   # a member is not a run folder
    with pytest.raises(CheckpointError, match="best.pt not found"):
        find_run_folder(cfg, log=lambda line: None)


def test_run_folder_candidates_in_both_layouts_the_profiles_first(kaggle):
    run_path = load_config("smoke").run_path
    other = attached_run(kaggle, "fast")
    mine = attached_run(kaggle, "smoke")
    save_best(mine / "member-1")
    deep = save_best(platforms.KAGGLE_INPUT / "a" / "b" / "c" / "d" / "e" / "f" / "g" / "h" / "i")   # depth 9
    save_best(platforms.KAGGLE_INPUT / "a" / "b" / "c" / "d" / "e" / "f" / "g" / "h" / "i" / "j")    # 10: not
    assert locate.run_folder_candidates(run_path, "smoke") == [run_path, mine, other, deep]
    assert locate.run_folder_candidates(run_path, "fast")[1:] == [other, mine, deep]
    assert locate.run_folder_candidates(run_path, "smoke", platform="local") == [run_path]


def test_find_run_folder_uses_this_runs_best_pt_first_and_says_so(kaggle):
    cfg = load_config("smoke")
    attached_run(kaggle, "smoke")
    save_best(cfg.run_path)
    lines = []
    assert find_run_folder(cfg, log=lines.append) == cfg.run_path
    assert lines == [f"run folder: {cfg.run_path} (best.pt of this run)"]


def test_find_run_folder_uses_an_attached_output_of_the_same_recipe_in_both_layouts(kaggle, capsys):
    cfg = load_config("smoke")
    mine = attached_run(kaggle, "smoke")
    lines = []
    assert find_run_folder(cfg, log=lines.append) == mine
    assert lines == [f"run folder: {mine} (best.pt from an attached notebook's output, read-only; trained with the "
                     "recipe of profile 'smoke')"]
    assert find_checkpoint(cfg) == mine / "best.pt"              # today's callers: notebooks 04 and 05
    assert str(mine) in capsys.readouterr().out                  # printed by default


def test_another_profiles_checkpoint_in_an_attached_output_is_skipped_and_named(kaggle):
    cfg = load_config("smoke")
    fast = attached_run(kaggle, "fast", slug="fast-train")
    lines = []
    with pytest.raises(CheckpointError) as err:
        find_run_folder(cfg, log=lines.append)
    assert len(lines) == 1 and lines[0].startswith(f"skipped {fast / 'best.pt'}: trained with another recipe "
                                                   "than profile 'smoke' (")
    assert "epochs: checkpoint" in lines[0]                     # the differing fields, as resume names them
    message = str(err.value)
    assert lines[0] in message and str(cfg.run_path) in message
    root = platforms.KAGGLE_INPUT
    assert f"{root}/notebooks/<user>/<notebook>/ (current layout)" in message
    assert f"{root}/<notebook>/ (older sessions)" in message
    mine = attached_run(kaggle, "smoke")
    assert find_run_folder(cfg, log=lines.append) == mine


def test_the_same_profile_name_with_another_recipe_is_skipped_too(kaggle):
    """The recipe decides, not the folder's name: a smoke run trained with other epochs is not this smoke run."""
    cfg = load_config("smoke")
    changed = attached_run(kaggle, "smoke", epochs=cfg.epochs + 1)
    lines = []
    with pytest.raises(CheckpointError):
        find_run_folder(cfg, log=lines.append)
    assert lines == [f"skipped {changed / 'best.pt'}: trained with another recipe than profile 'smoke' "
                     f"(epochs: checkpoint {cfg.epochs + 1} vs now {cfg.epochs})"]
    # run-time fields (device, tta, run_dir, ...) may differ: the same rule resume applies to last.pt
    same = attached_run(kaggle, "smoke", slug="other-session", device="cpu", tta="none")
    assert find_run_folder(cfg, log=lines.append) == same


def test_an_unreadable_attached_checkpoint_is_skipped_saying_why(kaggle):
    cfg = load_config("smoke")
    broken = real(kaggle.notebook_output_dir) / "runs" / "smoke" / "checkpoints"
    touch(broken / "best.pt")
    lines = []
    with pytest.raises(CheckpointError, match="cannot be read as a checkpoint"):
        find_run_folder(cfg, log=lines.append)
    assert lines[0].startswith(f"skipped {broken / 'best.pt'}: cannot be read as a checkpoint")


def test_attached_outputs_are_looked_into_only_on_kaggle(monkeypatch, tmp_path):
    cfg = load_config("smoke", run_dir=str(tmp_path / "run"))
    save_best(platforms.KAGGLE_INPUT / "notebooks" / USER / SLUG / "runs" / "smoke" / "checkpoints")
    with pytest.raises(CheckpointError) as err:
        find_run_folder(cfg, log=lambda line: None)
    assert str(platforms.KAGGLE_INPUT) not in str(err.value)


def test_find_checkpoint_for_another_file_prefers_this_runs_copy(tmp_path):
    cfg = load_config("smoke", run_dir=str(tmp_path / "run"))
    touch(cfg.run_path / "last.pt")
    assert find_checkpoint(cfg, "last.pt", log=lambda line: None) == cfg.run_path / "last.pt"
    save_best(cfg.run_path)
    (cfg.run_path / "last.pt").unlink()
    with pytest.raises(CheckpointError, match="no last.pt beside the best.pt used"):
        find_checkpoint(cfg, "last.pt", log=lambda line: None)


# --------------------------------------------------------------------------------------------
# Kaggle's next session: the previous version's run folder, attached read-only, continued in /kaggle/working
# --------------------------------------------------------------------------------------------
def save_paused_run(folder: Path, profile: str = "smoke", done: int = 1, **overrides) -> Path:
    """What a session cut by max_epochs_this_call leaves: best.pt, last.pt (epoch `done`), history.csv, member-1, and
    a self-training round under way (its labels table and its own checkpoints)."""
    cfg = load_config(profile, **overrides)
    meta = {"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "model": {}, "epoch": done,
            "progress": progress_record(done, cfg.epochs, False, 0, cfg.training_seed(0))}
    (folder / "self-training").mkdir(parents=True, exist_ok=True)
    (folder / "self-training" / "pseudo_labels.csv").write_text("id,label,class,confidence,used\n7,3,cat,0.9,True\n")
    for sub in (folder, folder / "member-1", folder / "self-training"):
        sub.mkdir(parents=True, exist_ok=True)
        torch.save(meta, sub / locate.BEST)
        torch.save({**meta, "history": [{"epoch": e + 1} for e in range(done)]}, sub / locate.LAST)
    (folder / "history.csv").write_text("epoch\n1\n")
    return folder


def test_a_new_kaggle_session_continues_the_attached_run_copied_into_working(kaggle):
    cfg = load_config("smoke")
    other = save_paused_run(real(kaggle.notebook_output_dir, slug="a-first") / "runs" / "smoke" / "checkpoints",
                            epochs=cfg.epochs + 1)           # found first by name, but another recipe
    mine = save_paused_run(real(kaggle.notebook_output_dir) / "runs" / "smoke" / "checkpoints")
    lines = []
    assert continue_attached_run(cfg, log=lines.append) == mine
    copied = sorted(p.relative_to(cfg.run_path) for p in cfg.run_path.rglob("*") if p.is_file())
    assert copied == sorted(p.relative_to(mine) for p in mine.rglob("*") if p.is_file())
    assert all((cfg.run_path / rel).read_bytes() == (mine / rel).read_bytes() for rel in copied)
    assert lines == [f"not continued from {other / 'last.pt'}: trained with another recipe than profile 'smoke' "
                     f"(epochs: checkpoint {cfg.epochs + 1} vs now {cfg.epochs})",
                     f"run folder continued from an attached notebook's output: copied {mine} (read-only) into "
                     f"{cfg.run_path}; training resumes from its last.pt (1/{cfg.epochs} epochs, NOT finished)."]
    assert continue_attached_run(cfg, log=lines.append) is None and len(lines) == 2   # a run here: left alone


def test_a_run_already_in_working_or_another_platform_copies_nothing(kaggle, monkeypatch):
    cfg = load_config("smoke")
    save_paused_run(real(kaggle.notebook_output_dir) / "runs" / "smoke" / "checkpoints")
    save_paused_run(cfg.run_path / "member-1", done=2)       # only a member's last.pt here: still a run here
    assert continue_attached_run(cfg, log=print) is None
    assert not (cfg.run_path / "last.pt").exists()
    monkeypatch.setenv("CIFAR10_PLATFORM", "local")
    assert continue_attached_run(load_config("smoke", run_dir=str(platforms.REPO_ROOT / "run")), log=print) is None
    assert not (platforms.REPO_ROOT / "run").exists()


class Killed(BaseException):
    """The kernel dying mid-copy: not an Exception, so no handler of the code under test cleans up after it."""


def files_of(folder: Path) -> dict[Path, bytes]:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_copy_cut_short_shows_nothing_and_the_next_session_redoes_it_whole(kaggle, monkeypatch):
    """The copy is one step: a kernel that dies after member 1's last.pt was copied leaves the run folder without
    any copied file (so nothing looks like a run here), and the next session copies everything and continues from
    the epoch reached, member 0 included."""
    cfg = load_config("smoke")
    mine = save_paused_run(real(kaggle.notebook_output_dir) / "runs" / "smoke" / "checkpoints", done=2)
    platforms.ensure_writable(cfg.run_path, "run_dir")                       # what the setup cell does first
    copy_file = checkpoint.atomic_write

    def dies_after_member_one(path, write, **kwargs):
        copy_file(path, write, **kwargs)
        if Path(path).parent.name == "member-1" and Path(path).name == locate.LAST:
            raise Killed

    monkeypatch.setattr(checkpoint, "atomic_write", dies_after_member_one)
    with pytest.raises(Killed):
        continue_attached_run(cfg, log=print)
    assert cfg.run_path.is_dir() and files_of(cfg.run_path) == {}            # as setup left it: empty
    leftover = cfg.run_path.parent / f".{cfg.run_path.name}{checkpoint.COPYING}"
    assert (leftover / "member-1" / locate.LAST).is_file()
    (leftover / "from-the-copy-cut-short.txt").write_text("not in the attached run")
    monkeypatch.setattr(checkpoint, "atomic_write", copy_file)

    lines = []
    assert continue_attached_run(cfg, log=lines.append) == mine                # the next session
    assert files_of(cfg.run_path) == files_of(mine)                          # whole, and nothing else
    assert load_checkpoint(cfg.run_path / locate.LAST)["epoch"] == 2         # member 0 continues from epoch 2
    assert not leftover.exists()
    assert lines[-1].startswith(f"run folder continued from an attached notebook's output: copied {mine}")


def test_a_copy_that_fails_says_so_and_leaves_neither_the_run_folder_nor_a_half_copy(kaggle, monkeypatch):
    cfg = load_config("smoke")
    save_paused_run(real(kaggle.notebook_output_dir) / "runs" / "smoke" / "checkpoints")
    copy_file, copied = checkpoint.atomic_write, []

    def disk_full_at_the_third_file(path, write, **kwargs):
        if len(copied) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        copied.append(copy_file(path, write, **kwargs))

    monkeypatch.setattr(checkpoint, "atomic_write", disk_full_at_the_third_file)
    with pytest.raises(platforms.OutputError, match="the run folder was not replaced"):
        continue_attached_run(cfg, log=print)
    assert not cfg.run_path.exists() and not any(p.exists() for p in copied)
    assert not list(cfg.run_path.parent.glob(f"*{checkpoint.COPYING}"))


def test_the_copy_replaces_a_run_folder_of_empty_folders_and_stale_temporaries_only(kaggle):
    cfg = load_config("smoke")
    mine = save_paused_run(real(kaggle.notebook_output_dir) / "runs" / "smoke" / "checkpoints")
    (cfg.run_path / "member-1").mkdir(parents=True)
    touch(cfg.run_path / "member-1" / ".last.pt.abc123.tmp")                # a save killed mid-write
    touch(cfg.run_path / ".write-probe-xyz")
    assert continue_attached_run(cfg, log=print) == mine
    assert files_of(cfg.run_path) == files_of(mine)


def test_files_in_the_run_folder_without_a_last_pt_are_left_alone_saying_so(kaggle):
    cfg = load_config("smoke")
    mine = save_paused_run(real(kaggle.notebook_output_dir) / "runs" / "smoke" / "checkpoints")
    log = touch(cfg.run_path / "member-1" / locate.TRAIN_LOG)            # a member that died before its first epoch
    lines = []
    assert continue_attached_run(cfg, log=lines.append) is None
    assert files_of(cfg.run_path) == {log.relative_to(cfg.run_path): b"x"}
    assert lines == [f"not continued from {mine}: {cfg.run_path} holds files but no last.pt (member-1/train.log), "
                     f"left as they are. To continue the attached run, move them out of {cfg.run_path} and run the "
                     "setup cell again."]
