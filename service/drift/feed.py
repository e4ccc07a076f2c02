"""What serving saw, handed from the serving threads to the drift check without slowing a request.

The predict path must not wait for a drift test, and the drift monitor is not thread-safe,
so the two meet in a :class:`DriftFeed`: API threads, the runtime's request observer and
the feedback sink *append* references to arrays they already hold (no copy, no numpy work),
under a lock held for a few hundred nanoseconds; the drift check job *drains* the lot now
and then and feeds the monitor on its own thread.

Three streams, each entry tagged with the model that produced it, so that requests still
in flight on a replaced model never reach the new model's windows:

- predictions: ``(model, embeddings (N, D), classes (N,), (probabilities (N, K), logit offset
  (K,) or None) or None)`` of API requests and inbox files;
- latencies: ``(model, batch, ms)`` of every successful prediction (probes included);
- outcomes: ``(model, correct)`` of every feedback label for an earlier prediction.

Bounded: beyond ``capacity`` samples (or latencies, or outcomes) waiting, the oldest
entries are dropped and counted, so a stalled check costs memory up to a limit, never more.
When the predictions waiting pass half the capacity, ``on_due`` is called once (outside
the lock) so the daemon can bring the next check forward instead of dropping samples.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.api.app import FeedbackLabel, FeedbackSink
from service.serving.runtime import Prediction

__all__ = ["Drained", "DriftFeed", "TappedFeedback"]

logger = logging.getLogger(__name__)

_Probs = tuple[np.ndarray, "np.ndarray | None"]
"""Served probabilities ``(N, K)`` and the logit offset ``(K,)`` (or None) they were served with."""


@dataclass(frozen=True)
class Drained:
    """Everything taken from a :class:`DriftFeed` by one :meth:`DriftFeed.drain`, oldest first."""

    predictions: list[tuple[str, np.ndarray, np.ndarray, _Probs | None]] = field(default_factory=list)
    latencies: list[tuple[str, int, float]] = field(default_factory=list)
    outcomes: list[tuple[str, bool]] = field(default_factory=list)

    def for_model(
        self, model_id: str
    ) -> tuple[np.ndarray | None, np.ndarray | None, list[tuple[int, float]], list[bool]]:
        """The model's embeddings ``(N, D)``, classes ``(N,)``, ``(batch, ms)`` latencies and outcome bits."""
        mine = [(e, c) for m, e, c, _ in self.predictions if m == model_id]
        emb = cls = None
        if mine:
            dims = {e.shape[1:] for e, _ in mine}
            if len(dims) == 1:  # a model's embedding width never changes; guard against a mixed id anyway
                emb = np.concatenate([e for e, _ in mine])  # (N, D)
                cls = np.concatenate([c for _, c in mine])  # (N,)
        lat = [(b, ms) for m, b, ms in self.latencies if m == model_id]
        out = [ok for m, ok in self.outcomes if m == model_id]
        return emb, cls, lat, out

    def probabilities_for(self, model_id: str) -> np.ndarray | None:
        """The model's own probabilities ``(N, K)``, oldest first, without the logit offset any
        was served with (a class-mix correction); None unless every batch had them."""
        mine = [p for m, _, _, p in self.predictions if m == model_id]
        if not mine or any(p is None or p[0].ndim != 2 for p in mine) or len({p[0].shape[1] for p in mine}) != 1:
            return None
        out = []
        for probs, offset in mine:  # type: ignore[misc]
            if offset is not None:  # softmax(z + o) * exp(-o), renormalised, is softmax(z)
                probs = probs * np.exp(-offset.astype(np.float64))
                probs = probs / probs.sum(axis=1, keepdims=True)
            out.append(probs)
        return np.concatenate(out)


class DriftFeed:
    """A bounded, lock-protected buffer between serving and the drift check. Thread-safe.

    Args:
        capacity: Most samples, latencies and outcomes (each) kept waiting.
        on_due: Called once when the predictions waiting pass half of ``capacity``; must
            return quickly (the daemon brings the drift check forward).
    """

    def __init__(self, capacity: int = 8192, on_due: Callable[[], None] | None = None) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 2:
            raise ValueError(f"DriftFeed capacity={capacity!r}; expected an integer >= 2")
        self.capacity = capacity
        self.on_due = on_due
        self._lock = threading.Lock()
        self._predictions: deque[tuple[str, np.ndarray, np.ndarray, _Probs | None]] = deque()
        self._samples = 0  # rows in _predictions
        self._latencies: deque[tuple[str, int, float]] = deque(maxlen=capacity)
        self._outcomes: deque[tuple[str, bool]] = deque(maxlen=capacity)
        self._signalled = False
        self.counts = {"samples": 0, "latencies": 0, "outcomes": 0, "dropped_samples": 0, "dropped_other": 0}

    # -- producers (serving threads) ------------------------------------------------------------

    def add_prediction(
        self,
        model_id: str,
        embeddings: np.ndarray,
        classes: np.ndarray,
        probabilities: np.ndarray | None = None,
        logit_offset: np.ndarray | None = None,
    ) -> None:
        """A served batch: its ``(N, D)`` embeddings, ``(N,)`` classes, ``(N, K)`` probabilities
        and the ``(K,)`` logit offset they were served with (kept by reference, not copied)."""
        n = len(classes)
        if n == 0 or getattr(embeddings, "ndim", 0) != 2:
            return
        due = False
        with self._lock:
            probs = None if probabilities is None else (probabilities, logit_offset)
            self._predictions.append((model_id, embeddings, classes, probs))
            self._samples += n
            self.counts["samples"] += n
            while self._samples > self.capacity and len(self._predictions) > 1:
                _, _, old, _ = self._predictions.popleft()
                self._samples -= len(old)
                self.counts["dropped_samples"] += len(old)
            if not self._signalled and self._samples * 2 >= self.capacity:
                self._signalled = due = True
        if due and self.on_due is not None:
            try:
                self.on_due()
            except Exception:  # a side line: never fail a request for it
                logger.exception("the drift feed's on_due callback failed")

    def add_latency(self, model_id: str, batch: int, latency_ms: float, error: str | None = None) -> None:
        """The runtime's request observer (:data:`~service.serving.runtime.RequestObserver`): successes only."""
        if error is not None:
            return
        with self._lock:
            if len(self._latencies) == self.capacity:
                self.counts["dropped_other"] += 1
            self._latencies.append((model_id, batch, latency_ms))
            self.counts["latencies"] += 1

    def add_outcomes(self, outcomes: Iterable[tuple[str, int, int]]) -> None:
        """Feedback for earlier predictions: ``(model_id, label, predicted)`` each."""
        bits = [(m, int(label) == int(predicted)) for m, label, predicted in outcomes]
        with self._lock:
            dropped = max(0, len(self._outcomes) + len(bits) - self.capacity)
            self.counts["dropped_other"] += dropped
            self._outcomes.extend(bits)
            self.counts["outcomes"] += len(bits)

    # -- the consumer (the drift check job) -----------------------------------------------------

    def drain(self) -> Drained:
        """Take everything waiting; the feed is empty afterwards."""
        with self._lock:
            out = Drained(list(self._predictions), list(self._latencies), list(self._outcomes))
            self._predictions.clear()
            self._latencies.clear()
            self._outcomes.clear()
            self._samples = 0
            self._signalled = False
        return out

    def stats(self) -> dict[str, Any]:
        """Counters since start and what waits now, for the status."""
        with self._lock:
            waiting = {"samples": self._samples, "latencies": len(self._latencies), "outcomes": len(self._outcomes)}
            return {"capacity": self.capacity, "waiting": waiting, **self.counts}


class TappedFeedback(FeedbackSink):
    """A feedback sink that also hands every served prediction to a :class:`DriftFeed`.

    The API calls ``record`` once per predict request with the model's full answer, the
    embedding included; this tap passes a reference on and delegates everything to ``inner``.
    """

    def __init__(self, inner: FeedbackSink, feed: DriftFeed) -> None:
        self.inner, self.feed = inner, feed

    def record(self, request_id: str, images: np.ndarray, prediction: Prediction) -> None:
        self.inner.record(request_id, images, prediction)
        p = prediction
        self.feed.add_prediction(p.model_id, p.embedding, p.classes, p.probabilities, p.logit_offset)

    def label(self, items: list[FeedbackLabel]) -> int:
        return self.inner.label(items)

    def add_samples(self, images: np.ndarray, labels: np.ndarray) -> int:
        return self.inner.add_samples(images, labels)
