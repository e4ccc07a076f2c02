"""The task every model is checked against before it serves (:class:`~service.runtime.TaskCheck`).

The held-out images are the replay buffer (``STATE/replay/replay.npz``: original training
data, built by the first adaptation) when there is one, else 1,000 images of the task's test
set (Fashion-MNIST from the Debian package), drawn once with a fixed seed. Without either,
only the number of classes is checked, and the status says so. numpy only: this runs in the
serving process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lifelong.data import load_fashion_mnist
from lifelong.errors import LifelongError
from lifelong.replay import load_replay
from service.runtime import TaskCheck

__all__ = ["TASK_CLASSES", "TASK_IMAGES", "task_check"]

logger = logging.getLogger(__name__)

TASK_CLASSES = 10
"""Fashion-MNIST's classes: the task the service runs."""
TASK_IMAGES = 1000
"""Held-out images each model is measured on before it serves (about 5 ms for a front model)."""


def task_check(state_dir: Path, floor: Callable[[], float], margin: Callable[[], float]) -> TaskCheck:
    """The service's task check: ``floor()`` and ``margin()`` are the policy's
    ``swap.min_task_accuracy`` and ``swap.rollback_accuracy_drop``."""
    data, source = None, ""
    replay = Path(state_dir) / "replay" / "replay.npz"
    try:
        if replay.is_file():
            data, source = load_replay(replay), f"replay buffer {replay}"
        else:
            data, source = load_fashion_mnist("test"), "Fashion-MNIST test set"
    except (LifelongError, OSError) as exc:
        logger.warning("models are checked for their class count only: no held-out task images (%s)", exc)
        return TaskCheck(TASK_CLASSES, floor=floor, margin=margin, source=f"none: {exc}")
    idx = np.sort(np.random.default_rng(0).choice(len(data.y), min(TASK_IMAGES, len(data.y)), replace=False))
    held = data.subset(idx)
    x, y = held.as_float(), np.asarray(held.y, np.int64)
    return TaskCheck(TASK_CLASSES, x, y, floor, margin, f"{len(idx)} of the {source}")
