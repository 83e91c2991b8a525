#!/usr/bin/env bash
# The README's test command: set up the virtual environment (if needed), check the layering contract
# (.importlinter: no module imports from a floor above its own) and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/lint-imports --no-cache
.venv/bin/python -m pytest -q "$@"
