#!/usr/bin/env bash
# Fresh-machine setup: install the run-time and development requirements, then lay out CIFAR-10 in data/ when
# an offline copy (../shared/data/make_cifar10.py) sits beside the repo. Elsewhere the data is found at run
# time: $CIFAR10_DIR, ./data, Kaggle's input folder, or downloaded (see README, "Data").
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
if [ -f ../shared/data/make_cifar10.py ]; then
  python ../shared/data/make_cifar10.py data/
fi
