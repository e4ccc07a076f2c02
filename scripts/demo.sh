#!/usr/bin/env bash
# Set everything up, then run the main job: train a small supernet on Fashion-MNIST
# (resumed or reused when already there) and print the evaluation of its extreme subnets.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/lifelong train --preset quick "$@"
