"""Where the project's inputs are looked for: the CIFAR-10 batches, the unlabeled pickle, and run folders (best.pt).

The one home for finding inputs: `utils.dataset` and `utils.checkpoint` take the first candidate that holds what
they need, and name every candidate (and every folder tree searched, `searched`) in their error. Paths come from
`utils.runtime.platforms`, read at call time, so tests that patch them there reach this module too.

Decisions, and why:
- One rule for every input: an explicit setting beats the environment ($CIFAR10_DIR), which beats the places
  searched. An explicit path is a promise: when one is given it is the only candidate, so a typo is an error rather
  than a silent fallback to other data. An explicit data folder (data_dir) replaces $CIFAR10_DIR for the unlabeled
  pickle too: the pickle is looked for there first, then in the searched places (it comes from the competition,
  not with the batches, so it is often elsewhere), and never in $CIFAR10_DIR, which is another data folder.
- Kaggle mounts every input read-only under /kaggle/input, in one of two layouts (tests/platform_facts.py, KAGGLE
  and KAGGLE_OLD_LAYOUT): competition data at /kaggle/input/competitions/<slug>/ (older sessions:
  /kaggle/input/<slug>/), an attached notebook's output at /kaggle/input/notebooks/<user>/<slug>/ (older:
  /kaggle/input/<slug>/), holding that notebook's whole /kaggle/working (its clone of this repository, its runs/).
  So /kaggle/input is searched by content, not by name, breadth first (shallowest first, then by name), with margin
  in the depth: "searched to depth N" means the folders 0..N levels below it are looked into.
  - the batches and the unlabeled pickle: DATA_SEARCH_DEPTH / NOLABEL_SEARCH_DEPTH = 5. The competition's files
    sit 1 (older layout) or 2 (current) levels down; a copy inside an attached notebook's clone
    (notebooks/<user>/<slug>/<repo>/data/) 5 levels down.
  - run folders: RUN_SEARCH_DEPTH = 9. An ensemble member k >= 1 lives in cfg.run_path / f"member-{k}" (the agreed
    layout), so in the current layout member 1's best.pt sits in notebooks/<user>/<slug>/runs/<profile>/
    checkpoints/member-1/, 7 levels down; member 0's folder 6 levels down (older layout: 3 and 4 fewer).
- kagglehub's cache: `kagglehub.competition_download(slug)` (the way to get the competition's files on Colab)
  extracts into <cache>/competitions/<slug>/ (platforms.kagglehub_cache()); that folder is searched too
  (KAGGLEHUB_SEARCH_DEPTH = 3), on every platform where it exists, and named in the error on Colab.
- Run folders are looked for in attached outputs only on Kaggle (nowhere else is there anything attached); which
  of them may be used (the recipe must match) is `utils.checkpoint.find_run_folder`'s decision.
"""
from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from . import platforms

KAGGLE_COMPETITION = "deep-learning-spring-2025-project-1"
MEMBER_PREFIX = "member-"           # member k >= 1 of an ensemble: run_path / f"member-{k}" (Config.member_path)
DATA_ENV = "CIFAR10_DIR"
BATCHES_SUBDIR = Path("cifar-10-python") / "cifar-10-batches-py"
NOLABEL_FILE = "cifar_test_nolabel.pkl"
BEST = "best.pt"
LAST = "last.pt"                   # what training resumes from (utils.train writes it beside best.pt)
TRAIN_LOG = "train.log"            # a member trained in a process of its own keeps its lines here (utils.members)
DATA_SEARCH_DEPTH = 5
NOLABEL_SEARCH_DEPTH = 5
RUN_SEARCH_DEPTH = 9
KAGGLEHUB_SEARCH_DEPTH = 3


# --------------------------------------------------------------------------------------------
# Walking a folder tree
# --------------------------------------------------------------------------------------------
def walk_dirs(root: Path, max_depth: int, descend: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """`root` and the folders 1..max_depth levels below it, shallowest first, sorted by name; hidden folders
    and unreadable ones are skipped, and so is what lies below a folder for which `descend` says False.
    Nothing when `root` is not a folder."""
    if not root.is_dir():
        return
    queue: deque[tuple[Path, int]] = deque([(root, 0)])
    while queue:
        folder, depth = queue.popleft()
        yield folder
        if depth == max_depth or (descend is not None and depth and not descend(folder)):
            continue
        try:
            with os.scandir(folder) as entries:
                subdirs = sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())
        except OSError:
            continue
        queue.extend((folder / name, depth + 1) for name in subdirs)


def _unique(paths: Iterable[Path]) -> list[Path]:
    """Absolute, in order, without repeats (two spellings of one folder count once)."""
    seen: set[str] = set()
    out: list[Path] = []
    for path in paths:
        path = Path(os.path.abspath(path))
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            out.append(path)
    return out


def _env_dir() -> Path | None:
    value = os.environ.get(DATA_ENV, "").strip()
    return Path(value).expanduser() if value else None


def _repo_path(value: str | Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else platforms.REPO_ROOT / path


def kagglehub_competition() -> Path:
    """Where `kagglehub.competition_download(KAGGLE_COMPETITION)` puts the competition's files."""
    return platforms.kagglehub_cache() / "competitions" / KAGGLE_COMPETITION


def _trees(depth: int) -> list[tuple[Path, int]]:
    """The folder trees searched by content, with their depth: Kaggle's input, kagglehub's competition folder."""
    return [(platforms.KAGGLE_INPUT, depth), (kagglehub_competition(), KAGGLEHUB_SEARCH_DEPTH)]


# --------------------------------------------------------------------------------------------
# The data
# --------------------------------------------------------------------------------------------
def data_dirs(explicit: str | Path | None = None) -> list[Path]:
    """Folders that may hold `cifar-10-python/cifar-10-batches-py/`, in order: an explicit folder only
    (relative to REPO_ROOT), else $CIFAR10_DIR, REPO_ROOT/data, ./data, then every folder under KAGGLE_INPUT
    (to depth DATA_SEARCH_DEPTH, both mount layouts) and under kagglehub's competition folder that holds the
    batches, whatever the folder is called."""
    if explicit:
        return [Path(os.path.abspath(_repo_path(explicit)))]
    env = _env_dir()
    found = ([env] if env else []) + [platforms.REPO_ROOT / "data", Path.cwd() / "data"]
    for root, depth in _trees(DATA_SEARCH_DEPTH):
        found += [d for d in walk_dirs(root, depth) if (d / BATCHES_SUBDIR).is_dir()]
    return _unique(found)


def nolabel_candidates(explicit: str | Path | None = None, data_dir: str | Path | None = None,
                       filename: str = NOLABEL_FILE) -> list[Path]:
    """Where the unlabeled test pickle may be, in order: an explicit file only (relative to REPO_ROOT); else the
    data folder, data_dir/filename when data_dir is given (relative to REPO_ROOT), else $CIFAR10_DIR/filename; then
    the places searched: REPO_ROOT/data/filename, on Colab the Drive output folder (and its data/) and kagglehub's
    competition folder, then every match under KAGGLE_INPUT (to depth NOLABEL_SEARCH_DEPTH, both mount layouts) and
    under kagglehub's competition folder.

    A given data_dir replaces $CIFAR10_DIR, as in `data_dirs`: the pickle comes from data_dir or, when it is not
    there, from the places searched, never from $CIFAR10_DIR. Unlike the batches, the searched places still follow
    an explicit data folder: the pickle comes from the competition (Kaggle's input, Drive), not with the batches."""
    if explicit:
        return [Path(os.path.abspath(_repo_path(explicit)))]
    folder = _repo_path(data_dir) if data_dir else _env_dir()
    found = [folder / filename] if folder else []
    found.append(platforms.REPO_ROOT / "data" / filename)
    if platforms.detect() == "colab":   # uploaded to the Drive folder the notebooks share (the clone is per machine)
        root = platforms.output_root("colab")
        found += [root / filename, root / "data" / filename, kagglehub_competition() / filename]
    for tree, depth in _trees(NOLABEL_SEARCH_DEPTH):
        found += [d / filename for d in walk_dirs(tree, depth) if (d / filename).is_file()]
    return _unique(found)


def searched(kind: str, explicit: str | Path | None = None) -> list[str]:
    """The folder trees `data_dirs` ("data") or `nolabel_candidates` ("nolabel") searched by content, one line
    each, for an error's list of where it looked: on Kaggle the input folder with both of its mount layouts named,
    and kagglehub's competition folder where it exists (on Colab always). Empty for an explicit path."""
    if explicit:
        return []
    depth, target = {"data": (DATA_SEARCH_DEPTH, f"{BATCHES_SUBDIR}/"),
                     "nolabel": (NOLABEL_SEARCH_DEPTH, NOLABEL_FILE)}[kind]
    platform = platforms.detect()
    lines = []
    if platform == "kaggle" or platforms.KAGGLE_INPUT.is_dir():
        slug, root = KAGGLE_COMPETITION, platforms.KAGGLE_INPUT
        lines.append(f"  - every folder under {root} to depth {depth}, for {target}: Kaggle mounts the competition's "
                     f"data at {root / 'competitions' / slug}/ (current layout) or at {root / slug}/ (older "
                     f"sessions); attach it with Add Input > Competitions > {slug}")
    cache = kagglehub_competition()
    if platform == "colab" or cache.is_dir():
        lines.append(f"  - every folder under {cache} to depth {KAGGLEHUB_SEARCH_DEPTH}, for {target} (where "
                     f"kagglehub.competition_download('{KAGGLE_COMPETITION}') puts the competition's files)")
    return lines


# --------------------------------------------------------------------------------------------
# Run folders (where best.pt and last.pt are)
# --------------------------------------------------------------------------------------------
def is_member_folder(folder: Path) -> bool:
    """An ensemble member's own folder (member k >= 1: run_path / f"member-{k}"), not a run folder of its own."""
    return folder.name.startswith(MEMBER_PREFIX)


def run_folder_candidates(run_path: str | Path, profile: str | None = None, name: str = BEST,
                          platform: str | None = None) -> list[Path]:
    """Folders that may hold a run's `name` (member 0's best.pt), in order: run_path itself; on Kaggle then every
    folder under KAGGLE_INPUT (attached notebook outputs, both mount layouts, to depth RUN_SEARCH_DEPTH) holding
    `name` that is not a `member-*` folder, those whose path names `profile` first (shallowest first within)."""
    found = [Path(run_path).expanduser()]
    if (platform or platforms.detect()) == "kaggle":
        root = platforms.KAGGLE_INPUT
        matches = [d for d in walk_dirs(root, RUN_SEARCH_DEPTH, descend=lambda d: not is_member_folder(d))
                   if (d / name).is_file() and not is_member_folder(d)]
        if profile:
            def rank(folder: Path) -> int:
                rel = folder.relative_to(root)
                return 0 if profile in rel.parts else 1 if profile in str(rel) else 2
            matches.sort(key=rank)  # stable: shallower first within a rank
        found += matches
    return _unique(found)
