#!/usr/bin/env bash
# Create .venv with Python 3.11 and install speechkit (editable) with its dev extras.
# torch comes from the registry's regular (CUDA) wheel, which runs on CPU; the CPU-only
# wheel cannot load torchaudio's compiled ops (DESIGN.md §9). Pins live in setup.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import speechkit, torch, torchaudio, lightning, lhotse, pytest, importlinter, tensorboard, matplotlib" 2>/dev/null; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev]"
fi
