#!/usr/bin/env bash
# Set up lifelong on a fresh machine: the Fashion-MNIST data, a virtualenv in .venv, the
# package with its test tools. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_DIR="${LIFELONG_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"
if [ ! -e "$DATA_DIR/train-images-idx3-ubyte.gz" ] && [ ! -e "$DATA_DIR/train-images-idx3-ubyte" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing the Fashion-MNIST data (Debian package dataset-fashion-mnist)" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: Fashion-MNIST is missing from $DATA_DIR. Install it as root with:" >&2
    echo "    sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist" >&2
    echo "or point LIFELONG_FASHION_MNIST_DIR at a folder holding its IDX files." >&2
    exit 1
  fi
fi

PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)" >&2
  "$PY" -m venv .venv
fi

# Reinstall only when the project's dependencies changed.
stamp=.venv/.lifelong-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! .venv/bin/python -c "import lifelong, service, torch" 2>/dev/null; then
  echo "setup: installing lifelong and its dependencies into .venv" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
  echo "$want" > "$stamp"
fi
echo "setup: ready (.venv/bin/lifelong)" >&2
