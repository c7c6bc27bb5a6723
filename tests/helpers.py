"""Small helpers shared by the tests."""
from __future__ import annotations

import ast
import os
from pathlib import Path


def top_level_imports(path: Path) -> set[str]:
    """The top-level package of every absolute import in `path`; a relative import fails the calling test."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(Path(path).read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: no relative imports, it sits below the other utils modules"
            roots.add(node.module.split(".")[0])
    return roots


class RunsCommand:
    """Unpickling this runs a shell command that touches `marker` (what a hostile pickle or checkpoint would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)
