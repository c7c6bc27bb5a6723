#!/usr/bin/env python
"""Run the five notebooks in order with papermill: data -> model -> train -> analysis -> submission.

    python run.py                         # `paper` with a CUDA GPU, else `smoke`
    python run.py --profile smoke         # configs/smoke.yaml
    python run.py --profile paper -p epochs 30 -p tta true
    python run.py --list                  # the profiles there are

Each notebook gets the profile's values (configs/<profile>.yaml, as `papermill -f` would) plus the
`-p KEY VALUE` overrides (VALUE read as YAML: 30, 0.05, true, null, [48, 96, 128, 364]), but only
the names its `parameters` cell declares. Executed copies go to runs/<profile>/ (or --out) under the
same file names. The first notebook that fails stops the run with a non-zero exit, naming the
notebook, the cell and the error; its executed copy, traceback included, is kept.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from utils.config import REPO_ROOT, Config, available_profiles, profile_path, read_profile

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = ["01_data.ipynb", "02_model.ipynb", "03_train.ipynb", "04_analysis.ipynb", "05_kaggle_submit.ipynb"]
KERNEL = "python3"


def default_profile() -> tuple[str, str]:
    import torch
    if torch.cuda.is_available():
        return "paper", f"a CUDA GPU is available ({torch.cuda.get_device_name(0)})"
    return "smoke", "no CUDA GPU here, and the paper profile needs one"


def describe(name: str) -> str:
    """The first comment line of configs/<name>.yaml."""
    for line in profile_path(name).read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def parse_overrides(pairs: list[list[str]], declared: set[str]) -> dict[str, Any]:
    values = {key: yaml.safe_load(value) for key, value in pairs}
    if "profile" in values:
        raise SystemExit("run.py: choose the profile with --profile NAME, not -p profile")
    unknown = sorted(set(values) - declared)
    if unknown:
        raise SystemExit(f"run.py: unknown parameter(s) {unknown}; the notebooks declare: {', '.join(sorted(declared))}")
    return values


def check_kernel() -> None:
    """Warn when the `python3` kernel would start an interpreter other than this one."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    try:
        argv0 = KernelSpecManager().get_kernel_spec(KERNEL).argv[0]
    except NoSuchKernel:
        raise SystemExit(f"run.py: no '{KERNEL}' Jupyter kernel; install one with: {sys.executable} -m ipykernel install --user")
    # jupyter_client replaces a bare `python` / `python3` with sys.executable; anything else is used as is.
    if argv0 not in {"python", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}"} and \
            Path(argv0).resolve() != Path(sys.executable).resolve():
        print(f"run.py: warning: the '{KERNEL}' kernel runs {argv0}, not {sys.executable}; to use this "
              f"environment: {sys.executable} -m ipykernel install --user --name {KERNEL}", file=sys.stderr)


def run(profile: str, overrides: list[list[str]], out_dir: Path | None = None, log_output: bool = False) -> int:
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    declared = {nb: set(pm.inspect_notebook(str(NOTEBOOK_DIR / nb))) for nb in NOTEBOOKS}
    params = {**read_profile(profile), **parse_overrides(overrides, set().union(*declared.values()))}
    params["profile"] = profile
    check_kernel()
    out_dir = out_dir or REPO_ROOT / "runs" / profile
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = Config.from_params(params)
    print(f"profile {profile}: executed notebooks -> {out_dir}, checkpoints -> {cfg.run_path}, "
          f"figures -> {cfg.figures_path}, submission -> {cfg.submission_file}")

    timings = []
    for i, nb in enumerate(NOTEBOOKS, 1):
        passed = {k: v for k, v in params.items() if k in declared[nb] or k == "profile"}
        output = out_dir / nb
        print(f"\n[{i}/{len(NOTEBOOKS)}] {nb}", flush=True)
        start = time.perf_counter()
        try:
            pm.execute_notebook(str(NOTEBOOK_DIR / nb), str(output), parameters=passed, kernel_name=KERNEL,
                                cwd=str(NOTEBOOK_DIR), progress_bar=True, log_output=log_output)
        except PapermillExecutionError as err:
            source = "\n".join("    " + line for line in err.source.splitlines()[:6])
            print(f"\nrun.py: {nb} FAILED in cell In [{err.exec_count}] (papermill's cell index {err.cell_index}):\n"
                  f"{source}\n  {err.ename}: {err.evalue}\n"
                  f"The executed copy, with the full traceback, is {output}", file=sys.stderr)
            return 1
        except Exception as err:   # the kernel died, could not start, a cell timed out, ...
            print(f"\nrun.py: {nb} FAILED: {type(err).__name__}: {err}\nPartial executed copy (if any): {output}",
                  file=sys.stderr)
            return 1
        timings.append((nb, time.perf_counter() - start))
        print(f"[{i}/{len(NOTEBOOKS)}] {nb} done in {timings[-1][1]:.0f} s", flush=True)

    print(f"\nAll {len(NOTEBOOKS)} notebooks ran (profile {profile}):")
    for nb, seconds in timings:
        print(f"  {nb:<24} {seconds:7.1f} s")
    print(f"  {'total':<24} {sum(s for _, s in timings):7.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", help="configs/<PROFILE>.yaml; default: paper with a CUDA GPU, else smoke")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="override one parameter (VALUE parsed as YAML); repeatable")
    parser.add_argument("--list", action="store_true", help="list the profiles and exit")
    parser.add_argument("--out", type=Path, help="folder for the executed notebooks; default runs/<profile>/")
    parser.add_argument("--log-output", action="store_true", help="echo the notebooks' output (training bars too)")
    args = parser.parse_args(argv)

    if args.list:
        for name in available_profiles():
            print(f"{name:<10} {describe(name)}")
        return 0
    profile = args.profile
    if profile is None:
        profile, why = default_profile()
        print(f"run.py: no --profile given; using '{profile}': {why}.")
    if profile not in available_profiles():
        print(f"run.py: no profile '{profile}'; available: {', '.join(available_profiles())}", file=sys.stderr)
        return 2
    return run(profile, args.parameter, out_dir=args.out, log_output=args.log_output)


if __name__ == "__main__":
    sys.exit(main())
