#!/usr/bin/env bash
# Set everything up, then run the demo: the whole lifelong loop on this machine, shown live
# (a quick supernet trained or reused, profile, search, serve, drift, adaptation, swap), with
# a report in STATE/demo/report.md. Options go to `lifelong demo` (see `--help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/lifelong demo "$@"
