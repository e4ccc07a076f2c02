#!/usr/bin/env bash
# Set everything up, then run the default test suite (slow tests and benchmarks excluded).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
