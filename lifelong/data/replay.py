"""The replay buffer: a small, class-balanced sample of the original training data kept on the device.

Fine-tuning the supernet on local samples alone would make it forget the data it was
trained on (and the local samples of yesterday). Every adaptation batch therefore mixes
local samples with samples from this buffer. It is built once, from the training data the
supernet was trained on, and stored as ``STATE/replay/replay.npz`` with a format version,
so a gateway needs the original dataset only on the day the buffer is made.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from lifelong.data.datasets import ArrayDataset
from lifelong.errors import DataError
from lifelong.persist.versioned_npz import read_versioned_npz, write_npz_atomic

__all__ = ["REPLAY_FORMAT", "build_replay", "load_replay", "save_replay"]

logger = logging.getLogger(__name__)

REPLAY_FORMAT = 1
_KIND = "lifelong-replay"


def build_replay(data: ArrayDataset, size: int, seed: int = 0) -> ArrayDataset:
    """``size`` labelled examples of ``data``, the same number from each class (as near as can be)."""
    if data.y is None:
        raise DataError(f"{data.source or 'the training data'} has no labels; a replay buffer needs labels")
    if size < 1:
        raise DataError(f"a replay buffer needs size >= 1, got {size}")
    rng = np.random.default_rng(seed)
    classes = np.unique(data.y)
    per_class = [rng.permutation(np.flatnonzero(data.y == c)) for c in classes]
    take: list[np.ndarray] = []
    quota = size // len(classes)
    for i, idx in enumerate(per_class):
        take.append(idx[: quota + (1 if i < size % len(classes) else 0)])
    chosen = rng.permutation(np.concatenate(take))
    return ArrayDataset(data.x[chosen], data.y[chosen], data.classes, f"replay of {data.source}")


def save_replay(path: str | Path, buffer: ArrayDataset) -> Path:
    """Write ``buffer`` atomically with its format version."""
    arrays = {"x": buffer.x, "y": buffer.y, "classes": np.array(buffer.classes, dtype=str),
              "source": np.array(buffer.source)}  # fmt: skip
    return write_npz_atomic(path, kind=_KIND, version=REPLAY_FORMAT, arrays=arrays)


def load_replay(path: str | Path) -> ArrayDataset:
    """Read a buffer written by :func:`save_replay`; a clear error for anything else."""
    arrays = read_versioned_npz(
        path, kind=_KIND, version=REPLAY_FORMAT, what="replay buffer", redo_hint="Delete it; it is rebuilt.",
        needs=("x", "y"),
    )  # fmt: skip
    classes = tuple(str(c) for c in arrays.get("classes", np.array([], dtype=str)))
    return ArrayDataset(arrays["x"], arrays["y"], classes, str(arrays.get("source", path)))
