"""Platform fact sheets: what Colab's and Kaggle's published images give a notebook, one sheet per platform.

Every platform test (tests/test_platform*.py) and the platform twins (.ci/twins/) read their facts from here,
so when a platform drifts the fix is one edit, with its source beside it. Nothing here is a belief: each
fact names the published file it comes from.

Sources:
- Colab: googlecolab/backend-info, `pip-freeze.gpu.txt` and `os-info-gpu.txt` (the runtime list of
  2026-08-19: Python 3.13.15; `google-colab` is an installed package of the image, so `google.colab` is
  importable). Colab's kernel is `google.colab._shell.Shell` (the class kagglehub's detection looks for in
  `str(get_ipython())`, Kaggle/kagglehub commit f81f26f).
- Kaggle: Kaggle/docker-python, `Dockerfile.tmpl` (`FROM .../colab-images/public/runtime:
  release-colab-external-images_20260514-...`: the GPU image is Colab's, so Colab's variables and the
  `google.colab` package are there too, kagglehub commit f81f26f: "Now that Kaggle uses the Colab as a base
  image, the `COLAB_RELEASE_TAG` environment variable is set in the Kaggle image") and
  `kaggle_requirements.txt`; the kernel's own variables (`KAGGLE_KERNEL_RUN_TYPE`, `KAGGLE_URL_BASE`) are read
  by the image's patches (`patches/kaggle_web_client.py`, `patches/kaggle_secrets.py`) and by kagglehub.
  Mounts: competition data at `/kaggle/input/competitions/<slug>/` (older sessions: `/kaggle/input/<slug>/`),
  an attached notebook's output at `/kaggle/input/notebooks/<user>/<slug>/` (older: `/kaggle/input/<slug>/`),
  holding that notebook's whole `/kaggle/working` (with its clone of this repository); everything under
  `/kaggle/input` is read-only; notebooks run in `/kaggle/working`. Kaggle's kernel is a plain ipykernel shell
  (`ipykernel.zmqshell.ZMQInteractiveShell`): kagglehub f81f26f tells Colab from Kaggle by the shell alone.
- Packages: `packaging` 26.3 in Colab's runtime list (googlecolab/backend-info, pip-freeze.gpu.txt), hence in
  Kaggle's image built FROM it (.ci/twins/colab.txt and kaggle.txt pin it from those lists).
- Widgets: Kaggle's front end shows a tqdm.auto bar as "Loading widget..." (Kaggle/docker-python#1443, open since
  2024-11-23); Colab's image pins ipywidgets 7.7.1 (googlecolab/backend-info, pip-freeze.gpu.txt).
- kagglehub's cache (Kaggle/kagglehub, src/kagglehub/config.py: DEFAULT_CACHE_FOLDER = ~/.cache/kagglehub,
  overridden by $KAGGLEHUB_CACHE; src/kagglehub/cache.py, _get_competition_path: <cache>/competitions/<slug>):
  where `kagglehub.competition_download(slug)` puts the competition's files on Colab.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

COMPETITION = "deep-learning-spring-2025-project-1"
COLAB_RELEASE_TAG = "release-colab-external-images_20260514"   # the tag Kaggle's FROM line names (Dockerfile.tmpl)
COLAB_SHELL = "google.colab._shell.Shell"                      # Colab's kernel class (kagglehub f81f26f)
PLAIN_SHELL = "ipykernel.zmqshell.ZMQInteractiveShell"         # ipykernel's shell: Kaggle, papermill, local Jupyter
KAGGLEHUB_COMPETITION_CACHE = "~/.cache/kagglehub/competitions/{slug}"   # kagglehub config.py + cache.py


@dataclass(frozen=True)
class Platform:
    name: str                         # what utils' detection must say
    environ: dict[str, str]           # the variables the image and the kernel set
    modules: tuple[str, ...]          # importable (not necessarily imported) modules that detection may look at
    colab_kernel: bool                # the kernel is google.colab._shell.Shell
    cwd: str                          # where a notebook runs
    output_root: str                  # where our relative outputs must go
    read_only: tuple[str, ...] = ()   # folders nothing may be written under
    competition_dir: str | None = None   # where the competition's files are mounted (Kaggle)
    notebook_output_dir: str | None = None   # where an attached notebook's output is mounted (Kaggle)
    drive: str | None = None          # Colab: Drive's mount point
    notes: tuple[str, ...] = field(default=())
    # An attached training notebook's output holds its whole /kaggle/working, so its clone of this repository
    # (Kaggle) sits here; {user}, {slug} and {repo} are placeholders.
    repo_copy_dir: str | None = None
    packages: dict[str, str] = field(default_factory=dict)   # published versions this project relies on
    kagglehub_cache: str | None = None   # where kagglehub.competition_download(slug) extracts (Colab)
    # The notebook front end renders ipywidgets (tqdm.auto's widget bars). Kaggle's does not: it shows "Loading
    # widget..." (Kaggle/docker-python#1443, "tqdm is completely broken", open since 2024-11-23).
    widgets_render: bool = True

    @property
    def shell(self) -> str:
        """The kernel's shell class, as `str(get_ipython())` shows it."""
        return COLAB_SHELL if self.colab_kernel else PLAIN_SHELL


COLAB = Platform(
    name="colab",
    environ={"COLAB_RELEASE_TAG": "release-colab-external-images_20260819"},
    modules=("google.colab",),
    colab_kernel=True,
    cwd="/content",
    output_root="/content/drive/MyDrive/{repo}",
    drive="/content/drive",
    packages={"packaging": "26.3"},
    kagglehub_cache=KAGGLEHUB_COMPETITION_CACHE,
)

# A papermill child kernel on Colab (`!python run.py` in a notebook cell): Colab's variables are inherited, the
# package is importable, but the kernel is a plain ipykernel one.
COLAB_CHILD = Platform(
    name="colab",
    environ=dict(COLAB.environ),
    modules=("google.colab",),
    colab_kernel=False,
    cwd="/content/{repo}",
    output_root="/content/drive/MyDrive/{repo}",
    drive="/content/drive",
    packages=dict(COLAB.packages),
    kagglehub_cache=KAGGLEHUB_COMPETITION_CACHE,
)

_KAGGLE_ENV = {**COLAB.environ, "COLAB_RELEASE_TAG": COLAB_RELEASE_TAG,
               "KAGGLE_KERNEL_RUN_TYPE": "Interactive", "KAGGLE_URL_BASE": "https://www.kaggle.com"}

KAGGLE = Platform(
    name="kaggle",
    environ=dict(_KAGGLE_ENV),
    modules=("google.colab",),
    colab_kernel=False,
    cwd="/kaggle/working",
    output_root="/kaggle/working",
    read_only=("/kaggle/input",),
    competition_dir=f"/kaggle/input/competitions/{COMPETITION}",
    notebook_output_dir="/kaggle/input/notebooks/{user}/{slug}",
    repo_copy_dir="/kaggle/input/notebooks/{user}/{slug}/{repo}",
    packages=dict(COLAB.packages),   # the image is Colab's
    widgets_render=False,            # Kaggle/docker-python#1443: widget bars show "Loading widget..."
)

KAGGLE_OLD_LAYOUT = dataclasses.replace(   # the same image; only the mount layout of older sessions differs
    KAGGLE,
    competition_dir=f"/kaggle/input/{COMPETITION}",
    notebook_output_dir="/kaggle/input/{slug}",
    repo_copy_dir="/kaggle/input/{slug}/{repo}",
)

# Kaggle's batch run ("Save Version" runs the notebook top to bottom with this run type).
KAGGLE_BATCH = dataclasses.replace(KAGGLE, environ={**_KAGGLE_ENV, "KAGGLE_KERNEL_RUN_TYPE": "Batch"})

LOCAL = Platform(name="local", environ={}, modules=(), colab_kernel=False, cwd="{repo}", output_root="{repo}")

SHEETS = {"colab": COLAB, "colab_child": COLAB_CHILD, "kaggle": KAGGLE, "kaggle_old_layout": KAGGLE_OLD_LAYOUT,
          "kaggle_batch": KAGGLE_BATCH, "local": LOCAL}
