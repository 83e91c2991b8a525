#!/usr/bin/env bash
# On the lent GPU machine: install the carried wheels (scripts/gpu_carry.sh) next to its own Python's
# packages (torch, torchaudio, lightning, ... are there) and unpack the catalogs into /tmp/locale.
# Source it or run it before benchmarks/gpu_check.py; it prints the PYTHONPATH to use.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --no-index --no-deps --target /tmp/site .gpu/wheels/*.whl
mkdir -p /tmp/locale && tar -C /tmp/locale -xJf .gpu/locale.tar.xz
echo "PYTHONPATH=/tmp/site:$PWD"
