"""The API's feedback sink on top of the store: labels for earlier predictions, new labelled samples.

Predictions are remembered in memory only (the last ``capacity`` images, as uint8), not
written per request: a write per prediction would put an fsync on the serving path. When a
label arrives for one of them, or new labelled samples are sent, the images are written to
``STATE/samples/feedback/DAY/*.npz`` (temporary name, fsync, rename) and then one ``samples``
row each (source ``feedback``, ``ref`` = ``FILE#INDEX``, with the label, the class the model
predicted and the model's id). A crash between the two leaves an unreferenced file, never a
row without its image.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.api.app import FeedbackLabel, FeedbackSink
from service.errors import RecordNotFound
from service.serving.runtime import Prediction
from service.state.store import Sample, Store

__all__ = ["StoreFeedback"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Remembered:
    images: np.ndarray  # (N, 28, 28) uint8
    classes: np.ndarray  # (N,) int64
    model_id: str
    uncorrected: np.ndarray | None = None  # (N,) the model's own classes when a class-mix correction served


def _pixels(images: np.ndarray) -> np.ndarray:
    """Model inputs ``(N, 1, 28, 28)`` in [0, 1] -> uint8 ``(N, 28, 28)``, 4x smaller to keep;
    uint8 pixels are kept as they are."""
    if images.dtype == np.uint8:
        return images.reshape(len(images), images.shape[-2], images.shape[-1])
    x = np.asarray(images, dtype=np.float32)
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8).reshape(len(x), x.shape[-2], x.shape[-1])


class StoreFeedback(FeedbackSink):
    """Feedback into the store, images into ``folder``.

    Args:
        store: Where the sample rows go.
        folder: Where labelled images are written (``STATE/samples/feedback``).
        capacity: Images of recent predictions kept for later labels.
        on_samples: Called with the uint8 images of every labelled batch taken (the daemon
            keeps them as warm-up inputs); must return quickly.
        on_outcomes: Called with ``(model_id, label, predicted)`` for every label of an
            earlier prediction, once stored (the daemon's live per-model accuracy); quick too.
        on_corrected: Called with ``(model_id, label, predicted, uncorrected)`` for every label of
            a prediction served under a class-mix correction (which the feedback judges); quick.
    """

    def __init__(
        self,
        store: Store,
        folder: str | os.PathLike[str],
        *,
        capacity: int = 4096,
        on_samples: Callable[[np.ndarray], None] | None = None,
        on_outcomes: Callable[[list[tuple[str, int, int]]], None] | None = None,
        on_corrected: Callable[[list[tuple[str, int, int, int]]], None] | None = None,
    ) -> None:
        self.store = store
        self.folder = Path(folder)
        self.capacity = capacity
        self.on_samples = on_samples
        self.on_outcomes = on_outcomes
        self.on_corrected = on_corrected
        self._recent: OrderedDict[str, _Remembered] = OrderedDict()
        self._kept = 0
        self._lock = threading.Lock()

    def record(self, request_id: str, images: np.ndarray, prediction: Prediction) -> None:
        item = _Remembered(
            _pixels(images),
            np.asarray(prediction.classes, np.int64),
            prediction.model_id,
            prediction.uncorrected_classes(),
        )
        with self._lock:
            self._recent[request_id] = item
            self._kept += len(item.images)
            while self._kept > self.capacity and len(self._recent) > 1:
                _, old = self._recent.popitem(last=False)
                self._kept -= len(old.images)

    def recent_images(self, n: int, model_id: str | None = None) -> np.ndarray | None:
        """The newest ``n`` (or fewer) images of recent predictions, oldest first, uint8
        ``(n, 28, 28)``, of ``model_id``'s predictions only when given; None if there are none."""
        with self._lock:
            items = list(self._recent.values())
        picked, have = [], 0
        for item in reversed(items):
            if have >= n:
                break
            if model_id is None or item.model_id == model_id:
                picked.append(item.images)
                have += len(item.images)
        if not picked:
            return None
        return np.concatenate(picked[::-1])[-n:]

    def label(self, items: list[FeedbackLabel]) -> int:
        with self._lock:
            found = []
            for it in items:
                known = self._recent.get(it.request_id)
                if known is None or it.index >= len(known.images):
                    raise RecordNotFound(
                        f"no prediction {it.request_id!r} sample {it.index} among the last {self.capacity} images; "
                        "send the labelled image as a new sample instead"
                    )
                found.append((it, known))
        images = np.stack([k.images[it.index] for it, k in found])
        labels = np.array([it.label for it, _ in found], np.int64)
        path = self._write(images, labels)
        rows = [
            Sample(
                ref=f"{path}#{i}",
                source="feedback",
                label=int(it.label),
                predicted=int(k.classes[it.index]),
                model_id=k.model_id,
                request_id=it.request_id,
            )
            for i, (it, k) in enumerate(found)
        ]
        self.store.add_samples(rows)
        self._notify(images)
        if self.on_outcomes is not None:
            try:
                self.on_outcomes([(r.model_id, r.label, r.predicted) for r in rows])  # type: ignore[misc]
            except Exception:
                logger.exception("on_outcomes callback failed")
        corrected = [
            (k.model_id, int(it.label), int(k.classes[it.index]), int(k.uncorrected[it.index]))
            for it, k in found
            if k.uncorrected is not None
        ]
        if corrected and self.on_corrected is not None:
            try:
                self.on_corrected(corrected)
            except Exception:
                logger.exception("on_corrected callback failed")
        return len(rows)

    def add_samples(self, images: np.ndarray, labels: np.ndarray) -> int:
        pixels = _pixels(images)
        path = self._write(pixels, np.asarray(labels, np.int64))
        rows = [Sample(ref=f"{path}#{i}", source="feedback", label=int(y)) for i, y in enumerate(labels)]
        self.store.add_samples(rows)
        self._notify(pixels)
        return len(rows)

    def _notify(self, pixels: np.ndarray) -> None:
        if self.on_samples is not None:
            try:
                self.on_samples(pixels)
            except Exception:
                logger.exception("on_samples callback failed")

    def _write(self, images: np.ndarray, labels: np.ndarray) -> Path:
        folder = self.folder / time.strftime("%Y%m%d")
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{time.strftime('%H%M%S')}-{secrets.token_hex(4)}.npz"
        tmp, path = folder / f".{name}.tmp", folder / name
        with open(tmp, "wb") as f:
            np.savez(f, x=images, y=labels)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path
