#!/usr/bin/env bash
# The README's test command: set up the virtual environment (if needed) and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q "$@"
