#!/usr/bin/env bash
# Build (or reuse) the two platform twins: a virtual environment per platform at its published versions
# (colab.txt, kaggle.txt beside this file), on the platform's Python where pyenv has it, else on 3.11 (said).
# PyPI has those torch releases only as CUDA builds (about 3 GB to download, 5.5 GB installed each), so the
# environments live outside the clone, in $TWINS_HOME (default ~/.cache/cifar10-twins), and are rebuilt only
# when their requirements file or the Python they are built on changes (the stamp hashes those two only, so
# editing this script does not force a 3 GB rebuild); pip's own cache is kept between runs too. Prints one line
# per twin. pip's "WARNING: Location 'file:///opt/pypi...' is ignored" lines (this machine's pip.conf names local
# indexes that do not exist for every package) are filtered out; every other line, errors included, is kept.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
home="${TWINS_HOME:-$HOME/.cache/cifar10-twins}"
mkdir -p "$home"
declare -A python_of=([colab]=3.13 [kaggle]=3.12)   # Colab 3.13.15 (2026-08-19), Kaggle 3.12.13 (Colab 2026-05-08)

quiet_pip() {   # pip's exit status survives the filter (pipefail); grep -v exits 1 when it drops every line
  "$@" 2>&1 | { grep -v "^WARNING: Location '.*' is ignored: it is neither a file nor a directory\.$" || true; }
}

for twin in "${@:-colab kaggle}"; do
  for name in $twin; do
    want="${python_of[$name]}"
    py="$(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$want".*/bin/python3 2>/dev/null | sort -V | tail -n 1 || true)"
    note=""
    if [ -z "$py" ]; then py="$(command -v python3.11 || command -v python3)"; note=" (Python $want not on this machine: fell back)"; fi
    stamp="$(sha256sum < "$here/$name.txt" | cut -c1-16) $("$py" -V 2>&1)"
    venv="$home/$name"
    if [ ! -f "$venv/.stamp" ] || [ "$(cat "$venv/.stamp")" != "$stamp" ]; then
      started=$SECONDS
      rm -rf "$venv"
      "$py" -m venv "$venv"
      quiet_pip "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
      quiet_pip "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/$name.txt"
      echo "$stamp" > "$venv/.stamp"
      note="$note, built in $((SECONDS - started)) s"
    fi
    echo "twin $name: $("$venv/bin/python" -V 2>&1)$note, torch $("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('torch'))"), at $venv"
  done
done
