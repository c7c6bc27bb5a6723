"""utils.runtime.install: only the missing requirements are installed, never an upgrade; versions compared by packaging,
at the versions the platforms publish (tests/platform_facts.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import top_level_imports
from packaging.version import Version
from platform_facts import SHEETS

from utils.runtime import install

REPO_ROOT = Path(__file__).resolve().parents[1]
MODULE_FILE = REPO_ROOT / "utils" / "runtime" / "install.py"
REQUIREMENTS = """# Lower bounds only.
torch>=2.3
Pillow>=10.0            # an image library
scikit-learn>=1.3

pyyaml>=6.0
seaborn>=0.13
tqdm[notebook] >= 4.66
torchinfo>=1.8
timm
never-here>=1.0; python_version < "3"
"""
INSTALLED = {"torch": "2.1.0+cu121", "pillow": "11.0.0", "scikit_learn": "1.5.2", "PyYAML": "6.0.1",
             "tqdm": "4.67.1", "timm": "1.0"}


@pytest.fixture
def requirements_file(tmp_path) -> Path:
    path = tmp_path / "requirements.txt"
    path.write_text(REQUIREMENTS)
    return path


def test_requirement_status(requirements_file):
    status = {r.name: (r.lower, r.installed, r.status) for r in install.requirement_status(requirements_file,
                                                                                            INSTALLED)}
    assert status == {
        "torch": ("2.3", "2.1.0+cu121", "older"),
        "Pillow": ("10.0", "11.0.0", "ok"),
        "scikit-learn": ("1.3", "1.5.2", "ok"),
        "pyyaml": ("6.0", "6.0.1", "ok"),
        "seaborn": ("0.13", None, "missing"),
        "tqdm": ("4.66", "4.67.1", "ok"),
        "torchinfo": ("1.8", None, "missing"),
        "timm": (None, "1.0", "ok"),
    }   # never-here's marker does not hold: not a requirement here


def test_install_missing_installs_only_missing_and_never_upgrades(requirements_file):
    calls = []

    def runner(command, **kwargs):
        calls.append((command, kwargs))
        return subprocess.CompletedProcess(command, 0)

    lines = install.install_missing(requirements_file, run=runner, installed=INSTALLED)
    assert calls == [([sys.executable, "-m", "pip", "install", "-q", "seaborn>=0.13", "torchinfo>=1.8"],
                      {"check": True})]
    flat = " ".join(calls[0][0])
    assert "torch" not in flat.replace("torchinfo", "") and "-U" not in flat and "--upgrade" not in flat
    assert lines[0] == "installed: seaborn>=0.13, torchinfo>=1.8"
    assert len(lines) == 2 and "torch 2.1.0+cu121" in lines[1] and "2.3" in lines[1] and "not upgraded" in lines[1]


def test_a_missing_requirement_keeps_its_extras(tmp_path):
    path = tmp_path / "r.txt"
    path.write_text("tqdm[notebook]>=4.66\n")
    calls = []
    install.install_missing(path, run=lambda command, **kw: calls.append(command), installed={})
    assert calls[0][-1] == "tqdm[notebook]>=4.66"


def test_install_missing_runs_nothing_when_all_present(requirements_file):
    installed = {**INSTALLED, "torch": "2.5.1", "seaborn": "0.13.2", "torchinfo": "1.8.0"}
    lines = install.install_missing(requirements_file, run=lambda *a, **k: pytest.fail("pip must not run"),
                                    installed=installed)
    assert lines == ["nothing to install: all 8 requirements are present"]


def test_an_unreadable_installed_version_is_reported_not_upgraded(tmp_path):
    path = tmp_path / "r.txt"
    path.write_text("odd>=1.0\n")
    assert [r.status for r in install.requirement_status(path, {"odd": "not a version"})] == ["unreadable"]
    lines = install.install_missing(path, run=lambda *a, **k: pytest.fail("pip must not run"),
                                    installed={"odd": "not a version"})
    assert "kept odd 'not a version'" in lines[1] and "not upgraded" in lines[1]


def test_install_missing_failure_says_what_to_do(requirements_file):
    def failing(command, **kwargs):
        raise subprocess.CalledProcessError(1, command)

    with pytest.raises(RuntimeError, match="Internet"):
        install.install_missing(requirements_file, run=failing, installed=INSTALLED)


def test_requirement_status_reads_installed_metadata(tmp_path):
    path = tmp_path / "r.txt"
    path.write_text("PyTest>=1.0\nPY_YAML>=1.0\nsurely-not-a-package-xyz>=1\n")
    status = install.requirement_status(path)
    assert [r.status for r in status] == ["ok", "missing", "missing"]   # PY_YAML is not PyYAML
    path.write_text("PyYAML>=1.0\npyyaml>=99\n")
    assert [r.status for r in install.requirement_status(path)] == ["ok", "older"]


def test_the_projects_requirements_file_parses():
    names = [r.name for r in install.requirement_status(REPO_ROOT / "requirements.txt", installed={})]
    assert "torch" in names and "Pillow" in names and "packaging" in names and all(r for r in names)


@pytest.mark.parametrize("name", sorted(n for n, sheet in SHEETS.items() if sheet.packages))
def test_our_lower_bounds_hold_at_the_platforms_published_versions(name):
    """Colab's runtime has packaging 26.3 (and so Kaggle's image, built FROM it): requirements.txt must not ask
    for more, or the setup would install a second packaging under the platform's pip."""
    sheet = SHEETS[name]
    status = {r.name: r for r in install.requirement_status(REPO_ROOT / "requirements.txt", sheet.packages)}
    for package, version in sheet.packages.items():
        assert status[package].status == "ok", f"{package}>={status[package].lower} but {sheet.name} has {version}"
        assert Version(status[package].lower) <= Version(version)


@pytest.mark.parametrize("line", ["numpy==1.26", "numpy<2", "-r other.txt", "numpy>=1.24,<2", "numpy~=1.24",
                                  "pkg @ https://example.com/pkg.whl"])
def test_requirements_other_than_lower_bounds_are_refused(tmp_path, line):
    path = tmp_path / "r.txt"
    path.write_text(f"torch>=2.3\n{line}\n")
    with pytest.raises(ValueError, match=r"r\.txt:2:.*lower bound"):
        install.requirement_status(path, {})


@pytest.mark.parametrize("installed, lower, expected", [
    ("2.3.0+cu121", "2.3", True), ("2.2.2", "2.3", False), ("10.0", "10.0.0", True), ("0.13.2", "0.13", True),
    ("1.10", "1.9", True), ("2.4.0rc1", "2.3", True), ("2.3.0rc1", "2.3", False), ("2.3.post1", "2.3", True),
])
def test_version_at_least_orders_as_packaging_does(installed, lower, expected):
    assert install.version_at_least(installed, lower) is expected


def test_names_compare_the_pep_503_way():
    assert install.canonical_name("Scikit_Learn") == install.canonical_name("scikit.learn") == "scikit-learn"


def test_only_standard_library_and_packaging_imports():
    imported = top_level_imports(MODULE_FILE)
    foreign = imported - set(sys.stdlib_module_names) - {"packaging", "__future__"}
    assert not foreign, f"non-standard imports: {foreign}"
