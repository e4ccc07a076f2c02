#!/usr/bin/env bash
# Set everything up, then run the whole test suite: the fast tier and the slow one (benchmarks
# excluded). `.venv/bin/python -m pytest` alone runs the fast tier (under 3 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -m "not benchmark" "$@"
