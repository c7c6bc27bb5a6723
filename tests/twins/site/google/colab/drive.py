"""google.colab.drive for the twins: `mount(path)` makes `path` a real mount point holding MyDrive/.

The twin (.ci/twins/twin.py) runs each notebook in a private mount namespace as root and names, in
$TWIN_DRIVE_STORE, the folder that plays Google Drive: it outlives each notebook's fresh /content (each Colab
notebook gets a machine of its own), as Drive does. Colab's behaviour kept here:
- a mount point that already holds files is refused ("Mountpoint must not already contain files");
- mounting again where Drive is mounted says so and changes nothing (force_remount=True remounts);
- it needs Colab's frontend: in any kernel other than google.colab._shell.Shell (on Kaggle, whose image carries
  this package) it raises instead of mounting.
"""
from __future__ import annotations

import os
import subprocess

STORE_ENV = "TWIN_DRIVE_STORE"


def _in_colab_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return "google.colab" in str(get_ipython())


def mount(mountpoint: str, force_remount: bool = False, timeout_ms: int = 120000, readonly: bool = False) -> None:
    if not _in_colab_kernel():
        raise RuntimeError("google.colab.drive.mount needs Colab's frontend: this kernel is not "
                           "google.colab._shell.Shell (twin: e.g. Kaggle, whose image carries google.colab)")
    store = os.environ.get(STORE_ENV)
    if not store or not os.path.isdir(store):
        raise RuntimeError(f"twin: ${STORE_ENV} names no folder to play Google Drive ({store!r})")
    mountpoint = os.path.expanduser(mountpoint)
    if os.path.ismount(mountpoint):
        if not force_remount:
            print(f"Drive already mounted at {mountpoint}; to attempt to forcibly remount, call "
                  f'drive.mount("{mountpoint}", force_remount=True).')
            return
        subprocess.run(["umount", mountpoint], check=True)
    if os.path.isdir(mountpoint) and os.listdir(mountpoint):
        raise ValueError("Mountpoint must not already contain files")
    if os.path.lexists(mountpoint) and not os.path.isdir(mountpoint):
        raise ValueError("Mountpoint must either be a directory or not exist")
    os.makedirs(mountpoint, exist_ok=True)
    subprocess.run(["mount", "--bind", store, mountpoint], check=True)
    os.makedirs(os.path.join(mountpoint, "MyDrive"), exist_ok=True)
    if readonly:
        subprocess.run(["mount", "-o", "remount,ro,bind", mountpoint], check=True)
    print(f"Mounted at {mountpoint}")
