from __future__ import annotations

import os
from pathlib import Path

import pytest

FASHION_DIR = Path(os.environ.get("LIFELONG_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


@pytest.fixture(scope="session")
def fashion_train():
    """The real Fashion-MNIST training set (the tests need the Debian package)."""
    from lifelong.data.datasets import load_fashion_mnist

    if not FASHION_DIR.exists():
        pytest.skip(f"Fashion-MNIST not installed at {FASHION_DIR}: apt-get install dataset-fashion-mnist")
    return load_fashion_mnist("train")


@pytest.fixture(scope="session")
def fashion_test():
    from lifelong.data.datasets import load_fashion_mnist

    if not FASHION_DIR.exists():
        pytest.skip(f"Fashion-MNIST not installed at {FASHION_DIR}: apt-get install dataset-fashion-mnist")
    return load_fashion_mnist("test")
