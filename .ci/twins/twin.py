#!/usr/bin/env python
"""Platform twins: the five notebooks run as a student runs them on Colab or on Kaggle, on this machine.

    python .ci/twins/twin.py colab      # or: kaggle; any python: it re-runs itself with the twin's venv
    python .ci/twins/twin.py kaggle --keep

What a twin is (the facts come from tests/platform_facts.py, one sheet per platform, sources there):
- the platform's package versions: the venv .ci/twins/setup.sh built from colab.txt / kaggle.txt;
- its files: a private mount namespace (`unshare -m --propagation private`, needs root, as CI runs) with tmpfs
  at /content (Colab) or /kaggle (Kaggle), and the venv under an overlay whose upper layer is a tmpfs, so what
  the setup cell pip-installs (Colab lacks torchinfo) is installed for real and gone afterwards;
- its kernel: a kernelspec whose argv is the venv's ipykernel, with `--IPKernelApp.kernel_class=
  google.colab._kernel.Kernel` (whose shell is google.colab._shell.Shell) where the sheet says the kernel is
  Colab's, a plain ipykernel elsewhere; the kernel's environment is the sheet's
  variables (on Kaggle both families, Colab's and Kaggle's) with the stand-in google.colab package
  (tests/twins/site, not PyPI's google-colab) on PYTHONPATH, and nothing of this shell's environment;
- "Run all", not papermill: each notebook is read, its parameters cell edited as a student edits it (profile
  "tiny", REPO_URL, on Colab data_dir), and executed by nbclient top to bottom. REPO_URL is a bare git
  repository of this working tree (HEAD plus uncommitted changes) that the setup cell clones itself.

Colab: each notebook gets a machine of its own (README, "Run on Colab"), so before each one /content is a fresh
tmpfs and the venv's overlay is fresh; Google Drive is a folder that outlives them, which the stand-in
`drive.mount` bind-mounts at /content/drive when the setup cell asks. The student uploaded the data (a tiny
make_cifar10.py layout, real images; the unlabeled pickle cut to its first 1,000, see UNLABELED) to Drive once
and gives data_dir. Ends with a validated MyDrive/<repo>/submissions/submission.csv.
Kaggle: the competition's files are at the sheet's competition_dir, /kaggle/input is read-only (bind + remount
ro), no data_dir is given (it must be found in the input). The `kaggle` sheet (README_COMMAND) runs README's Kaggle
cell as written, in a notebook in /kaggle/working, with the profile made tiny (3 epochs) and the run cut by
`-p max_epochs_this_call 1`: session 1 runs it (epoch 1, paused, exit 0) and runs it again (the clone pulled, epoch
2, paused); then a new session: a fresh /kaggle with session 1's /kaggle/working attached read-only where Kaggle
mounts a notebook's output, the same cell, which continues at epoch 3 and ends the five notebooks. Every call's
cell must show its epoch line, the projected time and the Kaggle verdict. The other Kaggle sheets copy each
notebook into /kaggle/working and run it there (Run all), in one session. Both end with a validated
/kaggle/working/submission.csv. The unlabeled pickle's ids are shuffled and not contiguous (shuffled_ids).

Before the notebooks a probe kernel checks the twin itself against the sheet (cwd, variables, google.colab
importable, the kernel class, read-only folders refusing a write, tqdm.auto progress bars). Prints one summary
line; exit 0 when every check passed, 1 when one failed (what and where, the executed copies kept), 3 when the
twin cannot run here (no venv, not root, no unshare, no make_cifar10.py).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
STAND_INS = REPO_ROOT / "tests" / "twins" / "site"
MAKE_CIFAR10 = REPO_ROOT.parent / "shared" / "data" / "make_cifar10.py"
TWINS_HOME = Path(os.environ.get("TWINS_HOME", Path.home() / ".cache" / "cifar10-twins"))
NOTEBOOKS = ["01_data.ipynb", "02_model.ipynb", "03_train.ipynb", "04_analysis.ipynb", "05_kaggle_submit.ipynb"]
PROFILE = "tiny"
CELL_TIMEOUT_S = 900
CANNOT_RUN = 3
KERNEL_CLASS = "google.colab._kernel.Kernel"   # its shell is the sheet's COLAB_SHELL (tests/twins/site/google/colab)
# The sheets a twin can run under, and the venv each uses (colab_child, a papermill kernel started from a Colab
# cell, is not a student's Run all: no twin).
VENV_OF = {"colab": "colab", "kaggle": "kaggle", "kaggle_old_layout": "kaggle", "kaggle_batch": "kaggle"}
# The unlabeled images a twin labels: Kaggle's sheets the competition's whole file where the sheet mounts it, Colab's
# its first 1,000 (predicting 10,000 images takes minutes on a 2-core CPU without AVX-512; one twin is enough for
# the whole file's size, and the code path is the same).
UNLABELED = {"colab": 1000}
# The sheets whose twin runs README's one-cell command (as written, the profile made tiny and the run cut by
# max_epochs_this_call) over two sessions, instead of each notebook's Run all: see Twin.run_readme_command.
README_COMMAND = {"kaggle": "Run on Kaggle"}
README_PROFILE = f"--profile {PROFILE} -p epochs 3 -p max_epochs_this_call 1"   # 3 calls: pause, pause, finish
ATTACHED = {"user": "student", "slug": "cifar10-train"}    # the previous version's output, as Add Input mounts it
EPOCH_LINE = re.compile(r"^epoch +(\d+)  train loss ", re.M)
DEBUGPY_NOTE = re.compile(r"^0\.00s - (Debugger warning|make the debugger|to python to disable|Note: Debugging)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
PLATFORM_LINE = re.compile(r"platform: (\w+) \| outputs: (\S+)")

# jupyter_client imports ipykernel (hence debugpy) in this process to find the native kernel; debugpy's
# frozen-modules note is noise here (the kernels get an environment of their own: Twin.kernel_env).
os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
sys.path.insert(0, str(REPO_ROOT / "tests"))
import platform_facts  # noqa: E402  (the sheets: tests/platform_facts.py)

BREAKS = {   # `--break NAME`: break one thing on purpose; the twin must then fail
    "no-read-only": "Kaggle's /kaggle/input is left writable (no read-only remount)",
    "detect-colab": "the kernel's detection says colab, whatever the platform ($CIFAR10_PLATFORM=colab)",
}


class TwinFailure(Exception):
    """A check failed: the message says which, and what was seen instead."""


def run(*cmd: str | Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def cannot_run(twin: str, why: str) -> int:
    print(f"twin {twin}: CANNOT RUN here: {why}", flush=True)
    return CANNOT_RUN


# --------------------------------------------------------------------------------------------
# Outside the namespace: the venv, the repository snapshot, the data, then unshare
# --------------------------------------------------------------------------------------------
def snapshot(work: Path) -> tuple[str, str]:
    """A bare repository `<work>/<repo name>.git` holding HEAD plus the working tree (tracked and untracked files
    git does not ignore, deletions included); returns (its file:// URL, the commit)."""
    tree = work / "snapshot" / REPO_ROOT.name
    tree.mkdir(parents=True)
    listed = run("git", "-C", REPO_ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard",
                 capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        source = REPO_ROOT / rel
        if source.is_file() and not source.is_symlink():      # a deleted tracked file is listed but gone
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, tree / rel)
    git = ["git", "-c", "user.name=twin", "-c", "user.email=twin@localhost", "-c", "core.hooksPath=/dev/null"]
    run(*git, "init", "-q", tree)
    run(*git, "-C", tree, "add", "-A")
    run(*git, "-C", tree, "commit", "-q", "-m", "twin snapshot: HEAD plus the working tree")
    commit = run("git", "-C", tree, "rev-parse", "HEAD", capture_output=True, text=True).stdout.strip()
    bare = work / f"{REPO_ROOT.name}.git"
    run("git", "clone", "-q", "--bare", tree, bare)
    shutil.rmtree(tree.parent)
    return f"file://{bare}", commit


def shuffled_ids(count: int) -> list[int]:
    """Ids for the stand-in unlabeled pickle that are neither 0..N-1 nor sorted (the competition's need not be): a
    submission that wrote row numbers as ids would not pass the twin, which compares the set of ids; that each id
    keeps its own image's label is checked by tests/test_submission.py, not here."""
    import numpy as np
    return np.random.default_rng(26).choice(10 * count, size=count, replace=False).astype(np.int64)


def tiny_layout(unlabeled: int | None = None) -> Path:
    """make_cifar10.py's layout with as many training images per class as the profile uses (its subset_per_class;
    the full test set and unlabeled pickle, or that pickle's first `unlabeled` images), the pickle's ids shuffled
    and not contiguous (`shuffled_ids`), made once and kept in TWINS_HOME."""
    import yaml
    per_class = yaml.safe_load((REPO_ROOT / "configs" / f"{PROFILE}.yaml").read_text())["subset_per_class"]
    full = TWINS_HOME / f"cifar10-limit{per_class}-shuffled-ids"
    target = full if unlabeled is None else TWINS_HOME / f"{full.name}-unlabeled{unlabeled}"
    if (target / "cifar_test_nolabel.pkl").is_file():
        return target
    partial = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=TWINS_HOME))
    if unlabeled is None:
        run(sys.executable, MAKE_CIFAR10, partial, "--limit-per-class", per_class, capture_output=True)
        with open(partial / "cifar_test_nolabel.pkl", "rb") as f:
            whole = pickle.load(f)             # trusted: make_cifar10.py's, just written
        whole[b"ids"] = shuffled_ids(len(whole[b"ids"]))
        with open(partial / "cifar_test_nolabel.pkl", "wb") as f:
            pickle.dump(whole, f, protocol=4)
    else:                                  # the same files, the pickle cut in its own format (trusted: ours)
        shutil.copytree(tiny_layout(), partial, dirs_exist_ok=True)
        with open(partial / "cifar_test_nolabel.pkl", "rb") as f:
            whole = pickle.load(f)
        with open(partial / "cifar_test_nolabel.pkl", "wb") as f:
            pickle.dump({key: whole[key][:unlabeled] for key in (b"data", b"ids")}, f, protocol=4)
    try:
        partial.rename(target)             # whole or not at all: a folder is only ever renamed into place
    except OSError:                        # the other twin, started at the same time, was first: use its
        shutil.rmtree(partial)
    return target


def outer(args: argparse.Namespace) -> int:
    twin, sheet = VENV_OF[args.sheet], args.sheet
    venv = TWINS_HOME / twin
    python = venv / "bin" / "python"
    if not (venv / ".stamp").is_file() or not python.is_file():
        return cannot_run(sheet, f"no twin venv at {venv}: build it with `bash .ci/twins/setup.sh {twin}`")
    if Path(sys.prefix).resolve() != venv.resolve():     # nbclient, ipykernel: the twin's own versions
        return subprocess.call([str(python), __file__, *sys.argv[1:]])
    if os.geteuid() != 0:
        return cannot_run(sheet, "not root: the twin mounts tmpfs and overlays in a private mount namespace")
    if shutil.which("unshare") is None:
        return cannot_run(sheet, "no `unshare` (util-linux) on PATH")
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return cannot_run(sheet, f"`unshare -m` failed: {probe.stderr.strip()}")
    if not MAKE_CIFAR10.is_file():
        return cannot_run(sheet, f"{MAKE_CIFAR10} is missing (the offline CIFAR-10 beside the repository)")

    work = Path(tempfile.mkdtemp(prefix=f"cifar10-twin-{sheet}-"))
    # Empty folders for the namespace's tmpfs to cover, removed afterwards. Twins run side by side need them made
    # beforehand (tests/test_twins.py does): an rmdir here would unmount them in the other twin's namespace.
    made = [p for p in (Path("/content"), Path("/kaggle")) if not p.exists()]
    for mount_point in made:
        mount_point.mkdir()
    try:
        repo_url, commit = snapshot(work)
        data = tiny_layout(UNLABELED.get(sheet))
        spec = {"sheet": sheet, "work": str(work), "repo_url": repo_url, "commit": commit, "data": str(data),
                "venv": str(venv), "break": args.break_}
        code = subprocess.call(["unshare", "-m", "--propagation", "private", sys.executable, __file__,
                                "--inside", json.dumps(spec)])
    finally:
        for mount_point in made:
            with contextlib.suppress(OSError):       # not empty: someone else's, leave it
                mount_point.rmdir()
    if code == 0 and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"twin {sheet}: work folder kept: {work} (executed notebooks in {work / 'executed'})", flush=True)
    return code


# --------------------------------------------------------------------------------------------
# Inside the namespace
# --------------------------------------------------------------------------------------------
def mount_tmpfs(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    run("mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", path)


def umount(path: Path) -> None:
    subprocess.run(["umount", "-R", "-l", str(path)], capture_output=True)


def read_only(path: Path) -> None:
    """`path` (and everything under it) refuses writes from now on, root included: bind + remount ro."""
    run("mount", "--bind", path, path)
    run("mount", "-o", "remount,ro,bind", path)


class Twin:
    def __init__(self, spec: dict) -> None:
        self.sheet = platform_facts.SHEETS[spec["sheet"]]
        self.name = spec["sheet"]
        self.work = Path(spec["work"])
        self.repo_url, self.commit = spec["repo_url"], spec["commit"]
        self.repo_name = Path(self.repo_url).stem
        self.data = Path(spec["data"])
        self.venv = Path(spec["venv"])
        self.broken = spec.get("break")
        self.executed = self.work / "executed"
        self.executed.mkdir()
        self.home = TWINS_HOME / f"{VENV_OF[self.name]}-home"    # the image's HOME: caches kept, like /root's
        self.home.mkdir(parents=True, exist_ok=True)
        self.drive_store = self.work / "google-drive"             # Colab: what Drive holds across machines
        self.layers = self.work / "overlay"
        self.vm_count = 0
        self.checked: list[str] = []
        self.kernel_facts: dict = {}
        self.timings: list[tuple[str, float]] = []
        self.kernelspec()

    # ---- the kernel -----------------------------------------------------------------------
    def kernelspec(self) -> None:
        argv = [str(self.venv / "bin" / "python"), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        if self.sheet.colab_kernel:
            argv.append(f"--IPKernelApp.kernel_class={KERNEL_CLASS}")
        folder = self.work / "jupyter" / "kernels" / "python3"
        folder.mkdir(parents=True)
        (folder / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "Python 3",
                                                        "language": "python"}))
        os.environ["JUPYTER_PATH"] = str(self.work / "jupyter")      # first in jupyter_client's search
        os.environ["JUPYTER_RUNTIME_DIR"] = str(self.work / "runtime")

    def kernel_env(self) -> dict[str, str]:
        env = {"PATH": f"{self.venv / 'bin'}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME": str(self.home), "LANG": "C.UTF-8", "PYTHONPATH": str(STAND_INS),
               "JUPYTER_RUNTIME_DIR": str(self.work / "runtime"), **self.sheet.environ}
        if self.sheet.drive:
            env["TWIN_DRIVE_STORE"] = str(self.drive_store)
        if self.broken == "detect-colab":
            env["CIFAR10_PLATFORM"] = "colab"
        return env

    # ---- the machine ------------------------------------------------------------------------
    def new_machine(self, attached: Path | None = None) -> None:
        """A fresh disk where the sheet says the notebook runs, and the image's venv as built (an overlay); on
        Kaggle `attached` (a saved version's /kaggle/working) mounted read-only as an attached notebook output."""
        self.vm_count += 1
        umount(self.venv)
        root = Path("/content") if self.sheet.drive else Path("/kaggle")
        umount(root)
        mount_tmpfs(root)
        upper = self.layers / f"vm{self.vm_count}"
        (upper / "up").mkdir(parents=True)
        (upper / "work").mkdir()
        run("mount", "-t", "overlay", "overlay", "-o",
            f"lowerdir={self.venv},upperdir={upper / 'up'},workdir={upper / 'work'}", self.venv)
        if self.sheet.competition_dir:
            competition = Path(self.sheet.competition_dir)
            competition.mkdir(parents=True)
            shutil.copytree(self.data, competition, dirs_exist_ok=True)
            if attached is not None:
                shutil.copytree(attached, self.sheet.notebook_output_dir.format(**ATTACHED), symlinks=True)
            for folder in self.sheet.read_only:
                if self.broken != "no-read-only":
                    read_only(Path(folder))
        Path(self.sheet.cwd.format(repo=self.repo_name)).mkdir(parents=True, exist_ok=True)

    # ---- notebooks ----------------------------------------------------------------------------
    def execute(self, nb, label: str, cwd: Path):
        from nbclient import NotebookClient
        client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, startup_timeout=120, kernel_name="python3",
                                resources={"metadata": {"path": str(cwd)}},
                                kernel_manager_class=logged_kernels(self.work / "kernels.log"))
        started = time.perf_counter()
        try:
            client.execute(env=self.kernel_env())
        finally:
            self.timings.append((label, time.perf_counter() - started))
            import nbformat
            nbformat.write(nb, self.executed / label)
        return nb

    def probe(self) -> None:
        """The twin itself, seen from inside its kernel, against the sheet."""
        import nbformat
        facts_code = (
            "import errno, importlib.util, json, os, sys\n"
            "from IPython import get_ipython\n"
            "def refused(folder):\n"
            "    try:\n"
            "        open(os.path.join(folder, '.twin-write-probe'), 'w').close()\n"
            "    except OSError as err:\n"
            "        return errno.errorcode.get(err.errno, str(err.errno))\n"
            "    os.unlink(os.path.join(folder, '.twin-write-probe'))\n"
            "    return None\n"
            f"sheet_env = {sorted(self.sheet.environ)!r}\n"
            f"read_only = {list(self.sheet.read_only)!r}\n"
            "import torch\n"
            "print(json.dumps({'cwd': os.getcwd(), 'env': {k: os.environ.get(k) for k in sheet_env},\n"
            "    'modules': {m: importlib.util.find_spec(m) is not None for m in ['google.colab']},\n"
            "    'shell': type(get_ipython()).__module__ + '.' + type(get_ipython()).__name__,\n"
            "    'kagglehub_says_colab': 'google.colab' in str(get_ipython()),\n"
            "    'refused': {f: refused(f) for f in read_only},\n"
            "    'python': sys.version.split()[0], 'executable': sys.executable, 'torch': torch.__version__}))\n")
        widget_code = "from tqdm.auto import tqdm\nlist(tqdm(range(3)))"
        ours_code = (f"import sys; sys.path.insert(0, {str(REPO_ROOT)!r})\n"   # the tree under test
                     "from utils.runtime.progress import bar\nlist(bar(range(3)))")
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(facts_code),
                                             nbformat.v4.new_code_cell(widget_code),
                                             nbformat.v4.new_code_cell(ours_code)])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        self.execute(nb, "00_twin_probe.ipynb", Path(self.sheet.cwd.format(repo=self.repo_name)))
        facts = json.loads(nb.cells[0].outputs[0]["text"])
        self.kernel_facts = facts
        expect = {"cwd": self.sheet.cwd, "env": self.sheet.environ,
                  "modules": {m: m in self.sheet.modules for m in ["google.colab"]},
                  "kagglehub_says_colab": self.sheet.colab_kernel,
                  "refused": {f: "EROFS" for f in self.sheet.read_only}}
        wrong = {k: (facts[k], v) for k, v in expect.items() if facts[k] != v}
        if wrong:
            raise TwinFailure(f"the twin's kernel does not match the sheet (seen, sheet): {wrong}")
        if facts["shell"] != self.sheet.shell:
            raise TwinFailure(f"the kernel's shell is {facts['shell']}, the sheet's {self.sheet.shell}")
        if Path(facts["executable"]).parent != self.venv / "bin":
            raise TwinFailure(f"the kernel runs {facts['executable']}, not the twin venv {self.venv}")
        outputs = nb.cells[1].outputs
        widget = any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
        text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
        if not widget and "3/3" not in text:
            raise TwinFailure(f"tqdm.auto showed neither a widget nor a text bar: {outputs}")
        ours = nb.cells[2].outputs     # utils.runtime.progress.bar: a widget only where the sheet says widgets render
        ours_widget = any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in ours)
        if ours_widget != self.sheet.widgets_render or (not ours_widget and "3/3" not in str(ours)):
            raise TwinFailure(f"progress.bar drew {'a widget' if ours_widget else 'text'}, the sheet says "
                              f"widgets {'render' if self.sheet.widgets_render else 'do not render'}: {ours}")
        self.checked.append(f"kernel {facts['shell']}, cwd {facts['cwd']}, {len(facts['env'])} sheet variables, "
                            "google.colab importable"
                            + "".join(f", {f} write refused (EROFS)" for f in self.sheet.read_only)
                            + f", tqdm.auto {'widget' if widget else 'text'}"
                            + f", our bars {'widgets' if ours_widget else 'text'}")

    def nothing_upgraded(self) -> None:
        """What a student might install on the platform (requirements.txt, which the setup cell installs from when
        something is missing; requirements-dev.txt, which setup.sh and run.py's users install) changes none of the
        platform's pinned packages (its .txt: torch, the Jupyter stack, ...): `pip install --dry-run` in the venv."""
        pinned = {}
        for line in (HERE / f"{VENV_OF[self.name]}.txt").read_text().splitlines():
            name, _, version = line.split("#")[0].strip().partition("==")
            if version:
                pinned[canonical(name)] = version
        for requirements in ("requirements.txt", "requirements-dev.txt"):
            report = self.work / f"pip-report-{requirements}.json"
            done = subprocess.run([str(self.venv / "bin" / "python"), "-m", "pip", "install", "--dry-run", "--quiet",
                                   "--disable-pip-version-check", "--report", str(report), "-r",
                                   str(REPO_ROOT / requirements)], capture_output=True, text=True)
            if done.returncode != 0:
                raise TwinFailure(f"pip install --dry-run -r {requirements} failed: {done.stderr.strip()[-1500:]}")
            planned = {canonical(item["metadata"]["name"]): item["metadata"]["version"]
                       for item in json.loads(report.read_text())["install"]}
            changed = {n: f"{pinned[n]} -> {v}" for n, v in planned.items() if n in pinned}
            if changed:
                raise TwinFailure(f"`pip install -r {requirements}` would replace the platform's {changed}: keep "
                                  "lower bounds at or below the platform's versions")
        self.checked.append(f"pip install -r requirements(-dev).txt keeps all {len(pinned)} pinned packages")

    def edited(self, name: str) -> object:
        """The committed notebook with its parameters cell edited as a student edits it: values only."""
        import nbformat
        nb = nbformat.read(REPO_ROOT / "notebooks" / name, as_version=4)
        cell = next(c for c in nb.cells if c.cell_type == "code")
        if "parameters" not in cell.metadata.get("tags", []):
            raise TwinFailure(f"{name}: the first code cell is not the parameters cell")
        values = {"profile": PROFILE, "REPO_URL": self.repo_url}
        if self.sheet.drive:
            values["data_dir"] = f"{self.sheet.drive}/MyDrive/cifar10"
        for key, value in values.items():
            pattern = re.compile(rf"^({re.escape(key)}\s*=\s*)(\S.*?)(\s+#.*)?$", re.M)
            if len(pattern.findall(cell.source)) != 1:
                raise TwinFailure(f"{name}: the parameters cell has no single `{key} = ...` line to edit")
            cell.source = pattern.sub(lambda m, v=value: f"{m.group(1)}{v!r}{m.group(3) or ''}", cell.source)
        return nb

    def check_setup_cell(self, name: str, nb) -> None:
        setup = [c for c in nb.cells if c.cell_type == "code"][1]
        text = "".join(o.get("text", "") for o in setup.outputs)
        found = PLATFORM_LINE.search(text)
        expected = self.sheet.output_root.format(repo=self.repo_name)
        if not found or found.groups() != (self.sheet.name, expected):
            seen = found.group(0) if found else "no platform line"
            raise TwinFailure(f"{name}: setup cell said {seen!r}; the sheet says platform {self.sheet.name}, "
                              f"outputs {expected}")
        clone = Path(self.sheet.cwd.format(repo=self.repo_name)) / self.repo_name
        if not (clone / ".git").is_dir():
            raise TwinFailure(f"{name}: the setup cell did not clone REPO_URL into {clone}")
        head = run("git", "-C", clone, "rev-parse", "HEAD", capture_output=True, text=True).stdout.strip()
        if head != self.commit:
            raise TwinFailure(f"{name}: the clone is at {head}, REPO_URL at {self.commit}")

    def run_notebooks(self) -> None:
        cwd = Path(self.sheet.cwd.format(repo=self.repo_name))
        for i, name in enumerate(NOTEBOOKS):
            if self.sheet.drive and i:         # Colab: each notebook on a machine of its own
                self.new_machine()
            nb = self.edited(name)
            if not self.sheet.drive:           # Kaggle: the imported notebook lies in /kaggle/working
                import nbformat
                nbformat.write(nb, cwd / name)
            try:
                self.execute(nb, name, cwd)
            except Exception as err:
                raise TwinFailure(f"{name} failed: {describe_error(err)}{self.platform_said(nb)}"
                                  f"{self.diagnose(cwd)}") from None
            self.check_setup_cell(name, nb)
            if name == NOTEBOOKS[0]:
                self.check_data_folder(nb)
            if self.sheet.drive and "installed: torchinfo" not in outputs_text(nb, 1):
                raise TwinFailure(f"{name}: the setup cell did not install torchinfo, which Colab lacks")
        self.checked.append("clone of REPO_URL at the snapshot commit by every setup cell"
                            + (" (a fresh machine per notebook, torchinfo installed each time)" if self.sheet.drive
                               else ""))

    # ---- README's one-cell command, over two sessions ------------------------------------------
    def readme_cell(self) -> str:
        """The README section's python block as written, with the fork's URL, the repository's name and the
        tiny profile cut by max_epochs_this_call put in; a README that no longer has what is replaced fails."""
        title = README_COMMAND[self.name]
        text = (REPO_ROOT / "README.md").read_text()
        section = text.split(f"## {title}\n", 1)[-1].split("\n## ", 1)[0]
        block = re.search(r"```python\n(.*?)```", section, re.S)
        if not block:
            raise TwinFailure(f"README.md, section {title!r}: no ```python block")
        cell = textwrap.dedent(block.group(1))
        for placeholder, value in (("https://github.com/<you>/<repo>.git", self.repo_url),
                                   ("<repo>", self.repo_name), ("--profile leaderboard", README_PROFILE)):
            if placeholder not in cell:
                raise TwinFailure(f"README.md, section {title!r}: the command has no {placeholder!r}:\n{cell}")
            cell = cell.replace(placeholder, value)
        return cell

    def run_readme_cell(self, label: str) -> str:
        """README's cell in a notebook of its own in /kaggle/working, then `_exit_code` (IPython's, of the last
        `!` line): what the cell showed, and the exit code, which must be 0."""
        import nbformat
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(self.readme_cell()),
                                             nbformat.v4.new_code_cell("print(f'exit code {_exit_code}')")])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        try:
            self.execute(nb, label, Path(self.sheet.cwd.format(repo=self.repo_name)))
        except Exception as err:
            raise TwinFailure(f"{label}: README's cell failed: {describe_error(err)}") from None
        shown, code = outputs_text(nb, 0), outputs_text(nb, 1).strip()
        if code != "exit code 0":
            raise TwinFailure(f"{label}: run.py ended with {code}; the cell showed:\n{shown[-3000:]}")
        return shown

    def executed_copy(self, name: str):
        """run.py's executed copy of a notebook (in the clone's runs/<profile>/), papermill's injected cell out."""
        import nbformat
        path = Path(self.sheet.cwd.format(repo=self.repo_name)) / self.repo_name / "runs" / PROFILE / name
        if not path.is_file():
            raise TwinFailure(f"run.py left no executed copy {path}")
        nb = nbformat.read(path, as_version=4)
        nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
        return nb

    def run_readme_command(self) -> None:
        """As a student lives Kaggle with README's cell: session 1 runs it (epoch 1 of 3, paused, exit 0) and runs
        it again (the clone updated, epoch 2, paused); Save Version keeps /kaggle/working; session 2 starts on an
        empty /kaggle/working with that output attached read-only, runs the same cell, continues from epoch 2 and
        ends with the submission. Each call's cell must show its epoch lines and the projected time."""
        def expect(shown: str, label: str, epoch: int, *wanted: str) -> None:
            if "fatal:" in shown:           # git's: the first line neither updated nor made the clone
                raise TwinFailure(f"{label}: git failed in README's cell:\n{shown[-3000:]}")
            if [int(e) for e in EPOCH_LINE.findall(shown)] != [epoch]:
                raise TwinFailure(f"{label}: the cell did not show epoch {epoch}'s line alone:\n{shown[-3000:]}")
            missing = [w for w in ("Wall time on ", "Kaggle: this call fits the 12-hour session", *wanted)
                       if w not in shown]
            if missing:
                raise TwinFailure(f"{label}: the cell did not show {missing}:\n{shown[-3000:]}")

        paused = "run.py: paused after 03_train.ipynb: member 0 at epoch {} of 3 (max_epochs_this_call 1)"
        expect(self.run_readme_cell("s1-call1.ipynb"), "session 1, first call", 1, paused.format(1),
               "[1/5] 01_data.ipynb", "[3/5] 03_train.ipynb done in")
        for name in NOTEBOOKS[:3]:
            self.check_setup_cell(name, self.executed_copy(name))
        self.check_data_folder(self.executed_copy(NOTEBOOKS[0]))
        expect(self.run_readme_cell("s1-call2.ipynb"), "session 1, the same cell again", 2, paused.format(2))
        saved = self.work / "saved-version"
        shutil.copytree(self.sheet.cwd, saved, symlinks=True)          # Save Version: /kaggle/working is kept
        self.new_machine(attached=saved)                                 # the next session, output attached
        attached = self.sheet.notebook_output_dir.format(**ATTACHED)
        shown = self.run_readme_cell("s2-call1.ipynb")
        expect(shown, "session 2", 3, f"run folder continued from an attached notebook's output: copied {attached}",
               "Resumed ", "All 5 notebooks ran")
        self.checked.append("README's cell as written: epoch lines and projected time shown, paused with exit 0, run "
                            "again, continued in a new session from the attached output")

    def check_data_folder(self, nb) -> None:
        """Notebook 01 read the data where the student put it: the competition's input on Kaggle (found there, no
        data_dir given), the Drive folder given as data_dir on Colab."""
        expected = Path(self.sheet.competition_dir or f"{self.sheet.drive}/MyDrive/cifar10")
        text = "".join(outputs_text(nb, i) for i in range(len([c for c in nb.cells if c.cell_type == "code"])))
        found = re.search(r"^data folder: (\S+)$", text, re.M)
        if not found or not Path(found.group(1)).is_relative_to(expected):
            raise TwinFailure(f"01 read the data from {found.group(1) if found else '(not said)'}, not {expected}")
        self.checked.append(f"data read from {found.group(1)}")

    def diagnose(self, cwd: Path) -> str:
        """After a failure: where relative outputs resolve in a fresh kernel of this twin with the clone's utils,
        against the sheet (a wrong platform detection shows here even when the setup cell died before saying)."""
        import nbformat
        clone = cwd / self.repo_name
        if not (clone / "utils" / "config.py").is_file():
            return ""
        code = (f"import sys; sys.path.insert(0, {str(clone)!r})\n"
                "from utils.config import Config\n"
                "print(Config().figures_path.parent)")
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        try:
            self.execute(nb, "00_twin_diagnosis.ipynb", cwd)
        except Exception as err:
            return f"\n  diagnosis failed too: {describe_error(err).splitlines()[0]}"
        root = outputs_text(nb, 0).strip()
        expected = self.sheet.output_root.format(repo=self.repo_name)
        if root == expected:
            return f"\n  diagnosis: relative outputs resolve to {root}, as the sheet says"
        return (f"\n  diagnosis: in this twin's kernel relative outputs resolve to {root}; the sheet "
                f"({self.sheet.name}) says {expected}: the platform is detected wrongly")

    @staticmethod
    def platform_said(nb) -> str:
        cells = [c for c in nb.cells if c.cell_type == "code"]
        found = PLATFORM_LINE.search(outputs_text(nb, 1)) if len(cells) > 1 else None
        return f" (its setup cell had said {found.group(0)!r})" if found else ""

    # ---- what the run left ----------------------------------------------------------------
    def stored(self, path: str) -> Path:
        """Where a path on the platform is readable now: Drive's files are in the store."""
        if self.sheet.drive and Path(path).is_relative_to(self.sheet.drive):
            return self.drive_store / Path(path).relative_to(self.sheet.drive)
        return Path(path)

    def check_outputs(self) -> None:
        root = self.sheet.output_root.format(repo=self.repo_name)
        checkpoints = self.stored(f"{root}/runs/{PROFILE}/checkpoints")
        missing = [n for n in ("best.pt", "last.pt") if not (checkpoints / n).is_file()]
        if missing:
            raise TwinFailure(f"{missing} not in {root}/runs/{PROFILE}/checkpoints")
        figures = sorted(p.name for p in self.stored(f"{root}/figures").glob("*.png"))
        if not figures:
            raise TwinFailure(f"no figures in {root}/figures")
        submissions = [f"{root}/submissions/submission.csv"]
        if self.sheet.name == "kaggle":
            submissions.append(f"{self.sheet.output_root}/submission.csv")   # where Kaggle looks for it
        nolabel = self.data / "cifar_test_nolabel.pkl"
        for path in submissions:
            rows = check_submission(self.stored(path), nolabel)
            validate_with_clone(self.work, self.repo_url, self.stored(path), nolabel)
            self.checked.append(f"{path} valid ({rows:,} rows, utils.submission.validate_submission agrees)")
        self.checked.append(f"best.pt, last.pt and {len(figures)} figures under {root}")


def canonical(name: str) -> str:
    """PEP 503 names: `jupyter_client` and `Jupyter-Client` alike."""
    return re.sub(r"[-_.]+", "-", name).lower()


def logged_kernels(log_path: Path):
    """A kernel manager whose kernels' process output (debugpy's frozen-modules notes, ipykernel warnings) goes
    to `log_path`, shown when the twin fails; what cells print still goes into the notebooks (over ZMQ)."""
    from jupyter_client.manager import AsyncKernelManager, KernelManager

    class LoggedKernelManager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd: list[str], **kw) -> None:
            with open(log_path, "ab") as log:
                kw["stdout"] = kw["stderr"] = log
                await KernelManager._async_launch_kernel(self, kernel_cmd, **kw)

        # jupyter_client 7.x (the platforms' 7.4.9) calls `_launch_kernel`, bound to the base class's function
        # at class creation; 8.x calls `_async_launch_kernel`: override both.
        _launch_kernel = _async_launch_kernel

    return LoggedKernelManager


def outputs_text(nb, index: int) -> str:
    cells = [c for c in nb.cells if c.cell_type == "code"]
    return "".join(o.get("text", "") for o in cells[index].outputs)


def describe_error(err: Exception) -> str:
    from nbclient.exceptions import CellExecutionError
    if isinstance(err, CellExecutionError):
        lines = [ANSI.sub("", line) for line in str(err).splitlines() if line.strip()]
        frames = [line for line in lines if line.startswith("File ")]   # IPython's "File PATH:LINE, in NAME"
        return f"{err.ename}: {err.evalue}" + "".join(f"\n  at {line[5:]}" for line in frames[-4:])
    return f"{type(err).__name__}: {err}"


def check_submission(path: Path, nolabel: Path) -> int:
    """Our own check, independent of the code under test: header ID,Labels, each id of the pickle once, 0-9."""
    if not path.is_file():
        raise TwinFailure(f"no submission at {path}")
    with open(nolabel, "rb") as f:
        ids = [int(i) for i in pickle.load(f)[b"ids"]]
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if rows[0] != ["ID", "Labels"]:
        raise TwinFailure(f"{path}: header {rows[0]}, expected ['ID', 'Labels']")
    got = [int(r[0]) for r in rows[1:]]
    if sorted(got) != sorted(ids) or len(set(got)) != len(got):
        raise TwinFailure(f"{path}: the ids are not each id of {nolabel.name} exactly once")
    labels = {r[1] for r in rows[1:]}
    if not labels <= {str(k) for k in range(10)}:
        raise TwinFailure(f"{path}: labels outside 0-9: {sorted(labels - {str(k) for k in range(10)})[:5]}")
    return len(got)


def validate_with_clone(work: Path, repo_url: str, path: Path, nolabel: Path) -> None:
    """utils.submission.validate_submission from a clone of REPO_URL (the code the student ran), in the venv."""
    clone = work / "validator"
    if not clone.exists():
        run("git", "clone", "-q", repo_url, clone)
    code = ("import sys; from utils.submission import validate_submission; "
            "validate_submission(sys.argv[1], sys.argv[2])")
    done = subprocess.run([sys.executable, "-c", code, str(path), str(nolabel)], cwd=clone, capture_output=True,
                          text=True, env={**os.environ, "CIFAR10_PLATFORM": "local"})
    if done.returncode != 0:
        raise TwinFailure(f"utils.submission.validate_submission refused {path}: {done.stderr.strip()[-1500:]}")


def inner(spec: dict) -> int:
    import nbclient  # noqa: F401  (loaded before the venv is overlaid)
    import nbformat  # noqa: F401
    twin = Twin(spec)
    started = time.perf_counter()
    try:
        if twin.sheet.drive:
            (twin.drive_store / "MyDrive").mkdir(parents=True)
            shutil.copytree(twin.data, twin.drive_store / "MyDrive" / "cifar10")   # uploaded once by the student
        mount_tmpfs(twin.layers)
        twin.new_machine()
        twin.nothing_upgraded()
        twin.probe()
        if twin.name in README_COMMAND:
            twin.run_readme_command()
        else:
            twin.run_notebooks()
        twin.check_outputs()
    except TwinFailure as err:
        log = twin.work / "kernels.log"
        lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
        tail = [line for line in lines if not DEBUGPY_NOTE.search(line)][-15:]
        print(f"twin {twin.name}: FAILED: {err}" + "".join(f"\n  kernel stderr: {line}" for line in tail), flush=True)
        return 1
    facts = twin.kernel_facts
    times = ", ".join(f"{label[:2]} {s:.0f} s" for label, s in twin.timings if not label.startswith("00"))
    print(f"twin {twin.name}: PASSED in {time.perf_counter() - started:.0f} s ({times}); Python {facts['python']}, "
          f"torch {facts['torch']}; checked: {'; '.join(twin.checked)}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sheet", nargs="?", choices=sorted(VENV_OF), help="the platform sheet to run under")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (executed notebooks) on success")
    parser.add_argument("--break", dest="break_", choices=sorted(BREAKS),
                        help="break the twin on purpose, to see a check fail")
    parser.add_argument("--inside", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inside:
        return inner(json.loads(args.inside))
    if not args.sheet:
        parser.error("name a twin: colab or kaggle")
    return outer(args)


if __name__ == "__main__":
    sys.exit(main())
