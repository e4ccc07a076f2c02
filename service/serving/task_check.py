"""The task every model is checked against before it serves (:class:`TaskCheck`, run by the
runtime's validation of every swap).

The held-out images are the replay buffer (``STATE/replay/replay.npz``: original training
data, built by the first adaptation) when there is one, else 1,000 images of the task's test
set (Fashion-MNIST from the Debian package), drawn once with a fixed seed. Without either,
only the number of classes is checked, and the status says so. numpy only: this runs in the
serving process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lifelong.data.datasets import load_fashion_mnist
from lifelong.data.replay import load_replay
from lifelong.errors import LifelongError

if TYPE_CHECKING:
    from service.serving.runtime import _LoadedModel

__all__ = ["TASK_CLASSES", "TASK_IMAGES", "TaskCheck", "TaskData", "task_check"]

logger = logging.getLogger(__name__)

TASK_CLASSES = 10
"""Fashion-MNIST's classes: the task the service runs."""
TASK_IMAGES = 1000
"""Held-out images each model is measured on before it serves (about 5 ms for a front model)."""


@dataclass(frozen=True)
class TaskData:
    """Labelled images of the data a model is deployed *for*, replacing the service's held-out
    task images in its check: an adaptation's candidate is a model of the new data, and the
    clean images can be far from it (a model adapted to half contrast: 14.8% on clean images,
    88.8% on the new ones). ``images`` None: the accuracy part of the check is skipped, and
    ``source`` says why (a label-free answer without labels, judged on its class mix)."""

    images: np.ndarray | None  # (N, 1, 28, 28) float32 in [0, 1]
    labels: np.ndarray | None  # (N,) int64
    source: str


@dataclass(frozen=True)
class TaskCheck:
    """What every model must show before it serves: the task's number of classes and, on
    held-out images of the task that the service keeps, an accuracy of at least ``floor()``
    or within ``margin()`` of the model serving (measured on the same images).

    Both are read at each check (the policy's ``swap.min_task_accuracy`` and
    ``swap.rollback_accuracy_drop``). A model of another task, or with zeroed weights, is
    refused with the figure; a model adapted to shifted data still passes a floor set well
    under its clean accuracy.
    """

    num_classes: int
    images: np.ndarray | None = None  # (N, 1, 28, 28) float32 in [0, 1]
    labels: np.ndarray | None = None  # (N,) int64
    floor: Callable[[], float] = lambda: 0.0
    margin: Callable[[], float] = lambda: 0.0
    source: str = ""

    def accuracy(self, model: _LoadedModel) -> float:
        """``model``'s accuracy on the held-out images (kept on the model)."""
        assert self.images is not None and self.labels is not None
        if model.task_accuracy is None:
            logits = np.concatenate([model.run(self.images[i : i + 256])[0] for i in range(0, len(self.images), 256)])
            model.task_accuracy = float((logits.argmax(axis=1) == self.labels).mean())
        return model.task_accuracy

    def problems(
        self, model: _LoadedModel, num_classes: int, serving: _LoadedModel | None, data: TaskData | None = None
    ) -> list[str]:
        """Why ``model`` may not serve (none: it may), on the service's task images or on ``data``."""
        if num_classes != self.num_classes:
            return [f"it has {num_classes} classes; the task has {self.num_classes}"]
        floor = self.floor()
        images, labels, source = (self.images, self.labels, self.source) if data is None else (
            data.images, data.labels, data.source)  # fmt: skip
        if images is None or labels is None or floor <= 0:
            return []

        def accuracy(m: _LoadedModel) -> float:
            return self.accuracy(m) if data is None else _accuracy(m, images, labels)

        acc = accuracy(model)
        if acc >= floor:
            return []
        what = (
            f"its accuracy on {len(labels)} held-out {'task images' if data is None else 'images'} ({source}) "
            f"is {acc:.1%}, below the floor of {floor:.0%} (swap.min_task_accuracy)"
        )
        if serving is None:
            return [what]
        now, margin = accuracy(serving), self.margin()
        if acc >= now - margin:
            return []  # no worse than what serves: a floor is no reason to keep a worse model
        return [
            f"{what} and {now - acc:.1%} below the model serving ({now:.1%}; swap.rollback_accuracy_drop {margin:g})"
        ]


def _accuracy(model: _LoadedModel, images: np.ndarray, labels: np.ndarray) -> float:
    logits = np.concatenate([model.run(images[i : i + 256])[0] for i in range(0, len(images), 256)])
    return float((logits.argmax(axis=1) == labels).mean())


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
