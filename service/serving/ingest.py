"""Local samples: reading inbox files into the store's samples table, and recent inputs for warm-up.

The inbox (``STATE/inbox``) takes PNG/JPEG images, at its top level (unlabelled) or in class
folders (``inbox/3/x.png`` or ``inbox/Sneaker/x.png``: labelled), and ``.npz`` batches with
``x`` and optional ``y``. An ingested file is moved to ``inbox/.processed/`` (a dot-folder
the watcher ignores) before its rows are written, so a restart never reads it twice; a file
that cannot be read is moved to ``inbox/.rejected/`` with the reason logged. A sample's
``ref`` is its file, or ``FILE#INDEX`` for the rows of a batch.

:class:`RecentInputs` keeps the last few inputs in memory: a new model is validated and
warmed up on them before it serves (the runtime's "sample inputs replayed").

Only numpy, Pillow and the standard library: this runs in the serving process.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lifelong.data.datasets import FASHION_MNIST_CLASSES, IMAGE_SUFFIXES, load_npz, read_image
from lifelong.deploy.model_format import INPUT_SHAPE
from lifelong.errors import DataError
from service.errors import NoModelError, RequestError
from service.serving.runtime import Prediction, Runtime
from service.state.store import Sample, Store

__all__ = ["Ingested", "PROCESSED", "REJECTED", "RecentInputs", "class_label", "ingest_file"]

logger = logging.getLogger(__name__)

PROCESSED, REJECTED = ".processed", ".rejected"
SIDE = INPUT_SHAPE[-1]


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_CLASS_NAMES = {_norm(n): i for i, n in enumerate(FASHION_MNIST_CLASSES)}


@dataclass(frozen=True)
class Ingested:
    """One inbox file taken in: where it went, and its images (uint8 ``(N, 28, 28)``)."""

    path: Path
    images: np.ndarray
    labels: np.ndarray | None
    sample_ids: list[int]
    prediction: Prediction | None = None  # the serving model's answer (the drift check reads its embedding)

    @property
    def labelled(self) -> int:
        return 0 if self.labels is None else int((self.labels >= 0).sum())


def class_label(inbox: Path, path: Path) -> int | None:
    """The label a file's class folder gives it: ``inbox/3/..`` -> 3, ``inbox/Sneaker/..`` -> 7.

    Files at the top of the inbox, and folders that name no class, are unlabelled.
    """
    parts = path.relative_to(inbox).parts
    if len(parts) < 2:
        return None
    folder = parts[0]
    if folder.isdigit():
        return int(folder)
    label = _CLASS_NAMES.get(_norm(folder))
    if label is None:
        logger.info("inbox folder %r names no class (use 0-9 or a Fashion-MNIST class name); unlabelled", folder)
    return label


def _move(inbox: Path, path: Path, folder: str) -> Path:
    """Move ``path`` to ``inbox/FOLDER/<its sub-path>`` under a unique name, keeping its class folder."""
    rel = path.relative_to(inbox)
    dest = inbox / folder / rel.parent / f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}-{rel.name}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, dest)
    return dest


def _read(inbox: Path, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    if path.suffix.lower() == ".npz":
        ds = load_npz(path, image_size=SIDE)
        return ds.x, ds.y
    if path.suffix.lower() in IMAGE_SUFFIXES:
        label = class_label(inbox, path)
        return read_image(path)[None], None if label is None else np.array([label], np.int64)
    raise DataError(f"{path}: not a sample file; expected {', '.join(IMAGE_SUFFIXES)} images or .npz batches")


def ingest_file(inbox: Path, path: Path, store: Store, runtime: Runtime | None = None) -> Ingested:
    """Read one inbox file, move it to ``.processed``, and record its samples.

    When a model serves, its predictions are stored with the samples (``predicted``,
    ``model_id``), so labelled inbox data later says how well that model did.

    Raises:
        DataError: the file cannot be read; it has been moved to ``inbox/.rejected``.
    """
    try:
        images, labels = _read(inbox, path)  # (N, 28, 28) uint8
    except DataError as exc:
        if not path.exists():
            raise
        dest = _move(inbox, path, REJECTED)
        raise DataError(f"{exc} (moved to {dest.relative_to(inbox)})") from exc
    predicted: list[int | None] = [None] * len(images)
    model_id, pred = None, None
    if runtime is not None and len(images):
        try:
            pred = runtime.predict(images)
            predicted, model_id = [int(c) for c in pred.classes], pred.model_id
        except (NoModelError, RequestError) as exc:
            logger.debug("inbox samples of %s not predicted: %s", path, exc)
    dest = _move(inbox, path, PROCESSED)
    batch = path.suffix.lower() == ".npz"
    rows = [
        Sample(
            ref=f"{dest}#{i}" if batch else str(dest),
            source="inbox",
            label=None if labels is None else int(labels[i]),
            predicted=predicted[i],
            model_id=model_id,
        )
        for i in range(len(images))
    ]
    ids = store.add_samples(rows)
    logger.info("ingested %d samples from %s -> %s", len(ids), path.name, dest)
    return Ingested(dest, images, labels, ids, pred)


class RecentInputs:
    """The last ``capacity`` inputs seen (inbox, feedback), for validating and warming up a model.

    Thread-safe; images are kept as uint8 (784 bytes each).
    """

    def __init__(self, capacity: int = 32) -> None:
        self._images: deque[np.ndarray] = deque(maxlen=capacity)
        self._lock = threading.Lock()

    def add(self, images: np.ndarray) -> None:
        """Take uint8 ``(N, 28, 28)`` pixels or float ``(N, 1, 28, 28)`` model inputs in [0, 1]."""
        x = np.asarray(images)
        if x.dtype.kind == "f":
            x = np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
        x = x.reshape(-1, SIDE, SIDE)
        with self._lock:
            self._images.extend(x[-(self._images.maxlen or 1) :])

    def array(self) -> np.ndarray | None:
        """The kept inputs as the model's input, float32 ``(N, 1, 28, 28)``; None when empty."""
        with self._lock:
            if not self._images:
                return None
            x = np.stack(list(self._images))
        return (x[:, None].astype(np.float32) / np.float32(255.0)).astype(np.float32)

    def __len__(self) -> int:
        with self._lock:
            return len(self._images)
