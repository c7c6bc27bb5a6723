"""What to install: the requirements that are missing, never an upgrade of what the platform ships.

Standard library plus `packaging` (preinstalled on Colab, 26.3 in its runtime image, and so on Kaggle, whose GPU
image is built FROM Colab's: tests/platform_facts.py), no other `utils` module, so the notebooks' setup can run it
before anything else is installed.

Decisions, and why:
- Colab and Kaggle ship torch built for their GPU and CUDA; `pip install -r requirements.txt` could replace it
  with a mismatched wheel, and upgrading their Jupyter stack can crash the runtime. So only missing packages are
  installed (with our lower bound), and packages older than our lower bound are reported, never upgraded.
- The requirements file holds lower bounds only (`name`, `name>=x.y`, extras and environment markers allowed);
  anything else (==, <, ~=, options, URLs) is refused, naming the line.
- Lines are parsed, names canonicalised (PEP 503: case-insensitive, `-`, `_` and `.` alike, so "PyYAML",
  "pyyaml" and "scikit_learn" match their installed distributions) and versions compared by `packaging`, the
  library pip itself uses: no parser of our own.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

try:
    from packaging.requirements import InvalidRequirement
    from packaging.requirements import Requirement as _Parsed
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version
except ImportError as err:  # pragma: no cover - Colab and Kaggle ship it; requirements.txt lists it
    raise ImportError("utils.runtime.install needs `packaging` (preinstalled on Colab and Kaggle): "
                      f"{sys.executable} -m pip install 'packaging>=23.0'") from err


@dataclass(frozen=True)
class Requirement:
    name: str               # as written in the requirements file
    lower: str | None       # the `>=` bound, None when the line names the package only
    installed: str | None   # the installed version, None when missing
    status: str             # "ok" | "missing" | "older" | "unreadable" (an installed version packaging cannot read)
    extras: str = ""        # "[notebook]" as written, or ""

    @property
    def spec(self) -> str:
        return f"{self.name}{self.extras}>={self.lower}" if self.lower else f"{self.name}{self.extras}"


def canonical_name(name: str) -> str:
    """PEP 503: case-insensitive, runs of '-', '_' and '.' alike (packaging.utils.canonicalize_name)."""
    return canonicalize_name(name)


def installed_versions() -> dict[str, str]:
    """{canonical distribution name: version} for everything importlib.metadata sees."""
    versions: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata else None
        if name:
            versions.setdefault(canonical_name(name), dist.version)
    return versions


def version_at_least(installed: str, lower: str) -> bool:
    """installed >= lower, as packaging (and pip) order versions. Raises packaging's InvalidVersion (a
    ValueError) for a version it cannot read."""
    return Version(installed) >= Version(lower)


def parse_requirements(requirements_file: str | Path) -> list[tuple[str, str | None, str]]:
    """(name, lower bound or None, extras) per requirement line that applies here (its environment marker, if
    any, holds); comments and blank lines are skipped. Anything but a lower bound is refused, naming the line."""
    path = Path(requirements_file)
    out: list[tuple[str, str | None, str]] = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = re.sub(r"(^|\s)#.*", "", raw).strip()   # pip's rule: `#` at the start or after whitespace
        if not line:
            continue
        refusal = (f"{path}:{number}: {raw.strip()!r} is not `name` or `name>=version`. Fix: write a lower bound "
                   "only, so the platform's preinstalled packages are never replaced.")
        try:
            parsed = _Parsed(line)
        except InvalidRequirement as err:
            raise ValueError(refusal) from err
        specifiers = list(parsed.specifier)
        if parsed.url or len(specifiers) > 1 or any(s.operator != ">=" for s in specifiers):
            raise ValueError(refusal)
        if parsed.marker is not None and not parsed.marker.evaluate():
            continue
        extras = f"[{','.join(sorted(parsed.extras))}]" if parsed.extras else ""
        out.append((parsed.name, specifiers[0].version if specifiers else None, extras))
    return out


def requirement_status(requirements_file: str | Path,
                       installed: Mapping[str, str] | None = None) -> list[Requirement]:
    """One Requirement per line of the file: "ok", "missing", "older" than our lower bound, or "unreadable".
    `installed` ({name: version}, any spelling) defaults to what importlib.metadata sees."""
    versions = {canonical_name(k): v for k, v in (installed_versions() if installed is None else installed).items()}
    result = []
    for name, lower, extras in parse_requirements(requirements_file):
        have = versions.get(canonical_name(name))
        if have is None:
            status = "missing"
        elif lower is None:
            status = "ok"
        else:
            try:
                status = "ok" if version_at_least(have, lower) else "older"
            except InvalidVersion:
                status = "unreadable"
        result.append(Requirement(name, lower, have, status, extras))
    return result


def install_missing(requirements_file: str | Path, run: Callable[..., object] = subprocess.run,
                    installed: Mapping[str, str] | None = None) -> list[str]:
    """`python -m pip install -q` the missing requirements only (with their lower bound); packages older
    than our bound are reported, not upgraded. Returns human-readable lines about what was done."""
    status = requirement_status(requirements_file, installed)
    missing = [r for r in status if r.status == "missing"]
    lines: list[str] = []
    if missing:
        specs = [r.spec for r in missing]
        command = [sys.executable, "-m", "pip", "install", "-q", *specs]
        try:
            run(command, check=True)
        except subprocess.CalledProcessError as err:
            raise RuntimeError(f"`{' '.join(command)}` failed (exit {err.returncode}). Fix: check the network "
                               "(on Kaggle: Settings > Internet on), then run the setup cell again.") from err
        importlib.invalidate_caches()
        lines.append(f"installed: {', '.join(specs)}")
    for r in status:
        if r.status == "older":
            lines.append(f"kept {r.name} {r.installed}, older than our lower bound {r.lower} (not upgraded, to keep "
                         f"the platform's packages consistent; `pip install -U '{r.spec}'` if something fails)")
        elif r.status == "unreadable":
            lines.append(f"kept {r.name} {r.installed!r}: not a version packaging can compare with our lower bound "
                         f"{r.lower} (not upgraded)")
    if not missing:
        lines.insert(0, f"nothing to install: all {len(status)} requirements are present")
    return lines
