#!/usr/bin/env bash
# Fresh-machine setup: install the run-time and development requirements, then lay out CIFAR-10 in data/ when
# an offline copy (../shared/data/make_cifar10.py) sits beside the repo. Elsewhere the data is found at run
# time: $CIFAR10_DIR, ./data, Kaggle's input folder, or downloaded (docs/platforms.md, "Where the data is found").
# pip's "WARNING: Location '...' is ignored: it is neither a file nor a directory" lines (a pip.conf naming local
# indexes that lack a package) are dropped; every other line, errors included, is kept, and pip's exit status too.
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt 2>&1 \
  | { grep -v "^WARNING: Location '.*' is ignored: it is neither a file nor a directory\.$" || true; }
if [ -f ../shared/data/make_cifar10.py ]; then
  python ../shared/data/make_cifar10.py data/
fi
