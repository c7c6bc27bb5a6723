"""Progress bars that render where they are shown: widgets where the front end draws them, text where it does not.

Decisions, and why:
- A batch run (`run.py` sets CIFAR10_PROGRESS=lines, `progress_bars`) shows no bar at all: its saved notebooks
  would keep widget bars frozen at 0 %, and the epoch lines tell the story.
- Kaggle: text bars (`tqdm.std`). Kaggle's notebook front end shows a `tqdm.auto` widget bar as "Loading
  widget..." and nothing else (Kaggle/docker-python#1443, "tqdm is completely broken", open since 2024-11-23: "a
  FE change that has introduced an incompatibility between the BE envs and the FE"); a text bar is plain stream
  output, which every front end shows. `WIDGETS_RENDER` is the fact sheet; tests/platform_facts.py carries it too.
- Colab and a local Jupyter: `tqdm.auto`, tqdm's own choice (a widget when ipywidgets is importable in a notebook
  kernel, else text). Colab's image ships ipywidgets 7.7.1 (googlecolab/backend-info, pip-freeze.gpu.txt) and the
  Colab twin checks that `tqdm.auto` bars work with it.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from . import platforms

# Does the platform's notebook front end render ipywidgets (hence tqdm.auto's widget bars)? Sources above.
WIDGETS_RENDER = {"colab": True, "kaggle": False, "local": True}
PROGRESS_ENV = "CIFAR10_PROGRESS"      # "lines": no progress bars (a batch run), one line per epoch instead


def bar_class(platform: str | None = None) -> type:
    """The tqdm class to draw bars with on `platform` (default: this one): `tqdm.auto.tqdm` where widgets render,
    the text bar `tqdm.std.tqdm` where they do not."""
    platform = platform or platforms.detect()
    if WIDGETS_RENDER[platform]:
        from tqdm.auto import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm


def bar(iterable: Iterable | None = None, enabled: bool = True, **kwargs: Any):
    """A tqdm bar over `iterable` of the kind this platform renders (`bar_class`); `enabled=False` draws nothing
    (the bar still iterates, and `set_postfix` / `close` still work)."""
    return bar_class()(iterable, disable=not enabled, **kwargs)


def progress_bars(wanted: bool = True) -> bool:
    """Bars in a live notebook or terminal; none in a batch run (`run.py` sets CIFAR10_PROGRESS=lines), whose saved
    notebooks would otherwise keep widgets frozen at 0 %."""
    return wanted and os.environ.get(PROGRESS_ENV, "bars") != "lines"
