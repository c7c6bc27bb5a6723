"""What every notebook does after its setup cell has found the code: `cfg, DEVICE = setup(globals())`.

Design choices:
- The setup cell itself only finds (or clones) the repository, because nothing of `utils` can be imported
  before that; everything after it is here, in tested package code, not copied into five notebooks.
- On Colab and Kaggle only the missing requirements are installed, never upgraded: the platform's torch is
  built for its GPU, and upgrading its Jupyter stack can crash the runtime (utils.runtime.install). This module
  imports nothing heavy at the top, so the install happens before torch or pandas are imported.
- The platform line names the signal that decided the platform (utils.runtime.platforms.detection): on Kaggle, whose
  image carries Colab's variables and package, it must say Kaggle's variable decided.
- The Config is the notebook's `profile` with the fields its `parameters` cell (or papermill) sets over it,
  validated at once (`ConfigError` lists every bad field); the device is checked the same way, so a bad
  value fails here, in the first seconds, not deep inside training.
- Outputs are checked before any work: on Colab, Drive is mounted once when an output goes there; an
  unwritable folder is refused naming the setting to change.
- On Kaggle a new session starts with an empty /kaggle/working: when the run folder holds no last.pt and an
  attached output (the previous version's) holds one of this recipe, it is copied in here, before any notebook
  reads the run folder (utils.checkpoint.continue_attached_run), so "run it again" continues across sessions.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .runtime import install as requirements
from .runtime import platforms


def setup(namespace: Mapping[str, Any], install: bool | None = None, verbose: bool = True):
    """(cfg, device) for a notebook whose globals are `namespace`; prints one line each on platform and run."""
    found = platforms.detection()
    platform = found.platform
    if install if install is not None else platform in ("colab", "kaggle"):
        for line in requirements.install_missing(platforms.REPO_ROOT / "requirements.txt"):
            print(line)
    from .runtime.device import decide, resolve_device

    cfg = config_from_namespace(namespace)
    outputs = {"run_dir": cfg.run_path, "figures_dir": cfg.figures_path,
               "submission_path": cfg.submission_file.parent}
    if platform == "colab" and any(platforms.is_under(p, platforms.COLAB_DRIVE) for p in outputs.values()):
        platforms.mount_drive()
    for setting, folder in outputs.items():
        platforms.ensure_writable(folder, setting)
    if platform == "kaggle":          # a new session: continue the run an attached output holds (Save Version)
        from .checkpoint import continue_attached_run
        continue_attached_run(cfg)
    device = resolve_device(cfg.device)
    if verbose:
        print(platforms.describe(found))
        print(f"profile {cfg.profile!r} on {device} ({decide(device, cfg.amp, cfg.channels_last, cfg.compile).reason})")
        for note in [*cfg.notes(), platforms.persistence_note(cfg.run_path, platform)]:
            if note:
                print(note)
    return cfg, device


def config_from_namespace(namespace: Mapping[str, Any]):
    """A notebook's Config: its `profile`, with every Config field the notebook defines (its `parameters` cell,
    or what papermill injected) set over the profile's values."""
    from .config import Config, load_config  # after the install: pydantic and yaml may have been missing

    overrides = {k: namespace[k] for k in Config.field_names() if k in namespace and k != "profile"}
    return load_config(namespace.get("profile", "paper"), **overrides)
