"""The package's shape (issue 28): what a student reads in `utils/`, the platform plumbing one level down in
`utils/runtime/`, imports one way, no module too long to read, and docs/package.md, the map of it, true.

- Every module of the package is under 400 lines.
- The plumbing (`utils/runtime/`) imports nothing from the student-facing modules; those import from it only its
  public names (no `_name`, and no `module._name` read through an imported runtime module).
- docs/package.md has one row per module (its job, and the utils modules it imports), and the imports column is
  the real import graph, so the map cannot drift from the code.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
UTILS = REPO_ROOT / "utils"
RUNTIME = "runtime"
MAP = REPO_ROOT / "docs" / "package.md"
MAX_LINES = 400
ROW = re.compile(r"^\|\s*`([a-z_.]+)`\s*\|(.*)\|(.*)\|\s*$")


def modules() -> dict[str, Path]:
    """{"config": utils/config.py, "runtime.platforms": utils/runtime/platforms.py, ...}, packages' __init__ left
    out."""
    return {".".join(p.relative_to(UTILS).with_suffix("").parts): p
            for p in sorted(UTILS.rglob("*.py")) if p.name != "__init__.py"}


def imported(path: Path) -> list[tuple[str, list[str]]]:
    """(the utils module a `from ... import` statement of `path` reads, the names it takes), for every such
    statement; `from .runtime import platforms` reads the module runtime.platforms (names that are modules)."""
    package = list(path.relative_to(UTILS).parent.parts)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "utils":
            base = node.module.split(".")[1:]
        else:
            continue
        names = [a.name for a in node.names]
        if UTILS.joinpath(*base).with_suffix(".py").is_file():
            found.append((".".join(base), names))
        else:                                   # a package: each name is one of its modules
            found += [(".".join([*base, n]), []) for n in names if UTILS.joinpath(*base, f"{n}.py").is_file()]
    return found


def import_graph() -> dict[str, set[str]]:
    return {name: {module for module, _ in imported(path)} for name, path in modules().items()}


def is_plumbing(module: str) -> bool:
    return module.split(".")[0] == RUNTIME


def test_no_module_is_over_400_lines():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by job): {long}"


def test_the_plumbing_imports_nothing_from_the_student_facing_modules():
    graph = import_graph()
    assert any(is_plumbing(m) for m in graph) and any(not is_plumbing(m) for m in graph)
    upward = {m: sorted(d for d in deps if not is_plumbing(d)) for m, deps in graph.items() if is_plumbing(m)}
    assert not any(upward.values()), f"utils/runtime imports student-facing modules: {upward}"


def test_student_facing_modules_use_only_the_plumbings_public_names():
    private = []
    for name, path in modules().items():
        if is_plumbing(name):
            continue
        aliases = set()                           # names bound to runtime modules: `from .runtime import platforms`
        for module, names in imported(path):
            if is_plumbing(module):
                private += [f"{name}: from {module} import {n}" for n in names if n.startswith("_")]
                aliases |= {module.split(".")[-1]} if not names else set()
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_")):
                private.append(f"{name}: {node.value.id}.{node.attr}")
    assert not private, f"student-facing modules reach into the plumbing's internals: {private}"


def map_rows() -> dict[str, tuple[str, set[str]]]:
    rows = {}
    for line in MAP.read_text().splitlines():
        if found := ROW.match(line):
            module, job, deps = found.groups()
            rows[module] = (job.strip(), set(re.findall(r"`([a-z_.]+)`", deps)))
    return rows


def test_the_package_map_names_every_module_with_its_job_and_its_real_imports():
    rows, graph = map_rows(), import_graph()
    assert set(rows) == set(graph), (f"docs/package.md misses {sorted(set(graph) - set(rows))}, "
                                     f"names modules that do not exist {sorted(set(rows) - set(graph))}")
    assert all(job for job, _ in rows.values()), "every module's row says its job"
    wrong = {m: {"map": sorted(rows[m][1]), "code": sorted(graph[m])} for m in graph if rows[m][1] != graph[m]}
    assert not wrong, f"docs/package.md's imports column differs from the code: {wrong}"


def test_the_map_checker_reads_rows_and_modules(tmp_path):
    """The checks above look at something: the row pattern reads a row, and a relative import resolves."""
    assert ROW.match("| `runtime.platforms` | where this runs | — |").groups()[0] == "runtime.platforms"
    deps = {m for m, _ in imported(UTILS / "config.py")}
    assert "runtime.platforms" in deps, deps
