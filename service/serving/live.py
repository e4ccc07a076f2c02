"""Live figures of each model as it serves: request latencies, inference errors, feedback outcomes.

The canary watch (:mod:`service.daemon.canary`) compares a freshly deployed model with the one it
replaced, and ``lifelong status`` shows how the serving model does, so both need figures
*per model*, not the runtime's one window across swaps. :class:`LiveMonitor` keeps them:

- the runtime calls :meth:`LiveMonitor.observe` after every prediction (its ``observer``),
  with the model that answered, the batch size, the latency and the error if it failed;
- the feedback sink calls :meth:`LiveMonitor.add_outcomes` when a label arrives for an
  earlier prediction: the request named the model that served it, so the outcome (right or
  wrong) goes to that model even if another one serves by then;
- the daemon calls :meth:`LiveMonitor.begin` when a model starts to serve, so a model's
  record covers its current serving period only ("its last window").

Latencies are kept per batch size, since a request of 64 images is not slower than one of
1 because the model got worse; the comparison is made at one batch size. Everything is
bounded: ``window`` latencies per batch size, ``max_batches`` batch sizes and
``max_models`` models (the least recently used go first). Calls come from API threads; a
lock held for microseconds guards the records.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["LiveFigures", "LiveMonitor"]


@dataclass(frozen=True)
class LiveFigures:
    """What one model did since it started serving (a snapshot).

    Attributes:
        model_id: The model.
        since: When its record began (unix seconds), None if it has no record.
        requests: Predictions it answered or failed (latency probes and inbox files included).
        errors: Predictions that failed inside the model (NaN outputs, an onnxruntime error).
        last_error: The newest of those errors.
        latencies_ms: Latencies of its successful predictions by batch size, oldest first.
        labelled: Feedback labels received for its predictions.
        correct: How many of those it had predicted right.
    """

    model_id: str
    since: float | None = None
    requests: int = 0
    errors: int = 0
    last_error: str | None = None
    latencies_ms: Mapping[int, tuple[float, ...]] = field(default_factory=dict)
    labelled: int = 0
    correct: int = 0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    def main_batch(self) -> int | None:
        """The batch size it served most often (within the kept window)."""
        if not self.latencies_ms:
            return None
        return max(self.latencies_ms, key=lambda b: (len(self.latencies_ms[b]), -b))

    def percentiles(self, batch: int | None = None) -> dict[str, Any]:
        """``{"batch", "n", "p50_ms", "p95_ms"}`` at ``batch`` (default: the main one)."""
        batch = self.main_batch() if batch is None else batch
        values = self.latencies_ms.get(batch, ()) if batch is not None else ()
        if not values:
            return {"batch": batch, "n": 0, "p50_ms": None, "p95_ms": None}
        p50, p95 = (float(v) for v in np.percentile(values, [50, 95]))
        return {"batch": batch, "n": len(values), "p50_ms": p50, "p95_ms": p95}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (without the raw latencies)."""
        return {
            "model": self.model_id,
            "since": self.since,
            "requests": self.requests,
            "errors": self.errors,
            "last_error": self.last_error,
            "labelled": self.labelled,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "latency": self.percentiles(),
        }


@dataclass
class _Record:
    since: float
    requests: int = 0
    errors: int = 0
    last_error: str | None = None
    latencies: OrderedDict[int, deque[float]] = field(default_factory=OrderedDict)
    labelled: int = 0
    correct: int = 0


class LiveMonitor:
    """Per-model live records, fed by the runtime and the feedback sink. Thread-safe.

    Args:
        window: Latencies kept per model and batch size.
        max_batches: Batch sizes kept per model (the least recently seen is dropped).
        max_models: Models kept (the least recently used is dropped).
    """

    def __init__(self, *, window: int = 1024, max_batches: int = 8, max_models: int = 8) -> None:
        for name, value in (("window", window), ("max_batches", max_batches), ("max_models", max_models)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"LiveMonitor {name}={value!r}; expected an integer >= 1")
        self.window, self.max_batches, self.max_models = window, max_batches, max_models
        self._lock = threading.Lock()
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def _record(self, model_id: str) -> _Record:
        """The model's record, created if new, marked most recently used. Hold the lock."""
        rec = self._records.get(model_id)
        if rec is None:
            rec = self._records[model_id] = _Record(since=time.time())
            while len(self._records) > self.max_models:
                self._records.popitem(last=False)
        else:
            self._records.move_to_end(model_id)
        return rec

    def begin(self, model_id: str) -> None:
        """Start a fresh record for a model that starts serving now."""
        with self._lock:
            self._records.pop(model_id, None)
            self._record(model_id)

    def observe(self, model_id: str, batch: int, latency_ms: float, error: str | None = None) -> None:
        """One prediction by ``model_id`` of ``batch`` images; ``error`` if the model failed on it."""
        with self._lock:
            rec = self._record(model_id)
            rec.requests += 1
            if error is not None:
                rec.errors += 1
                rec.last_error = error
                return
            lat = rec.latencies.get(batch)
            if lat is None:
                lat = rec.latencies[batch] = deque(maxlen=self.window)
                while len(rec.latencies) > self.max_batches:
                    rec.latencies.popitem(last=False)
            else:
                rec.latencies.move_to_end(batch)
            lat.append(float(latency_ms))

    def add_outcomes(self, outcomes: Iterable[tuple[str, int, int]]) -> None:
        """Feedback for earlier predictions: ``(model_id, label, predicted)`` each."""
        with self._lock:
            for model_id, label, predicted in outcomes:
                rec = self._record(model_id)
                rec.labelled += 1
                rec.correct += int(label == predicted)

    def figures(self, model_id: str) -> LiveFigures:
        """A snapshot of ``model_id``'s record (empty figures if it has none)."""
        with self._lock:
            rec = self._records.get(model_id)
            if rec is None:
                return LiveFigures(model_id)
            return LiveFigures(
                model_id=model_id,
                since=rec.since,
                requests=rec.requests,
                errors=rec.errors,
                last_error=rec.last_error,
                latencies_ms={b: tuple(v) for b, v in rec.latencies.items()},
                labelled=rec.labelled,
                correct=rec.correct,
            )
