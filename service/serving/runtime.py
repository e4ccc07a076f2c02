"""The model runtime the daemon serves from, with hot swap and rollback.

:class:`Runtime` is the interface the daemon and the API talk to.
:class:`~service.serving.ort_runtime.OrtRuntime` runs ONNX files with onnxruntime (its own
module); :class:`MemoryRuntime` runs plain numpy callables, for tests of the code around a
runtime. Both share the swap machinery of ``_SwappingRuntime``:

- a new model is opened, checked against :mod:`lifelong.deploy.model_format`, validated on a
  probe batch (shapes, dtypes, finite outputs, probabilities summing to 1, optional parity
  with expected outputs) and warmed up, all BEFORE it serves and outside the lock that
  requests take; a failure raises :class:`~service.errors.ModelLoadError` and the current
  model goes on serving;
- the swap itself is one reference assignment under a lock;
- a request takes a reference to the model serving when it starts and finishes on it, even
  when a swap happens meanwhile, also across the chunks of a batch split at ``max_batch``;
- the old session is released by dropping the reference, not by reference counting of our
  own: CPython frees an object when its last reference goes, so the retired
  ``InferenceSession`` (and its memory arena) is freed exactly when the last request
  holding it returns. :meth:`Runtime.stats` reports requests in flight (a per-model count)
  and ``draining``, the retired models still alive, read from a weak set: it drops to 0
  when the last request ends, which tests use to prove that nothing else holds them;
- rollback swaps back to the previous model, re-loaded from its path through the same
  validated path (its session is not kept, so a retired model costs no memory).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lifelong.deploy.model_format import (
    EMBEDDING_OUTPUT,
    INPUT_SHAPE,
    LOGITS_OUTPUT,
)
from service.errors import InferenceError, ModelLoadError, NoModelError, RequestError

if TYPE_CHECKING:
    from service.serving.task_check import TaskCheck, TaskData

__all__ = [
    "AUTO_FALLBACK_THREADS",
    "MemoryRuntime",
    "ModelFn",
    "Prediction",
    "RequestObserver",
    "Runtime",
    "RuntimeSettings",
    "RuntimeStats",
    "as_model_input",
]

logger = logging.getLogger(__name__)

AUTO_FALLBACK_THREADS = 2
"""Intra-op threads of a model with no timed choice when the policy leaves the count to the model."""

ModelFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""What :class:`MemoryRuntime` serves: images ``(N,1,28,28)`` -> ``(logits, embedding)``."""

RequestObserver = Callable[[str, int, float, str | None], None]
"""Told of every prediction: ``(model_id, batch size, latency_ms, error or None)``; see ``observer``."""


@dataclass(frozen=True)
class RuntimeSettings:
    """How a runtime runs and checks its models.

    Attributes:
        intra_op_threads: onnxruntime threads inside one operator; small, since a gateway's
            few cores are shared with the applications it serves. 0: per model, the count its
            export timed fastest at ``batch`` (:mod:`lifelong.device.threads`), else
            :data:`AUTO_FALLBACK_THREADS`.
        batch: The batch size a per-model thread choice is taken for (the policy's).
        inter_op_threads: threads across operators (1: execution is sequential).
        max_batch: requests larger than this run in chunks, bounding peak memory.
        warmup_runs: replays of the sample inputs before a model serves.
        parity_atol: absolute tolerance of the parity check against expected outputs.
        parity_rtol: relative tolerance of the same check.
        latency_window: number of recent predictions the latency percentiles cover.
    """

    intra_op_threads: int = 2
    batch: int = 1
    inter_op_threads: int = 1
    max_batch: int = 64
    warmup_runs: int = 2
    parity_atol: float = 1e-4
    parity_rtol: float = 1e-3
    latency_window: int = 1024

    def __post_init__(self) -> None:
        for name in ("batch", "inter_op_threads", "max_batch", "latency_window"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"RuntimeSettings.{name}={getattr(self, name)!r}; expected an integer >= 1")
        if not isinstance(self.intra_op_threads, int) or self.intra_op_threads < 0:
            raise ValueError(
                f"RuntimeSettings.intra_op_threads={self.intra_op_threads!r}; expected an integer >= 1, or 0 (per model)"
            )
        if not isinstance(self.warmup_runs, int) or self.warmup_runs < 0:
            raise ValueError(f"RuntimeSettings.warmup_runs={self.warmup_runs!r}; expected an integer >= 0")
        for name in ("parity_atol", "parity_rtol"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"RuntimeSettings.{name}={getattr(self, name)!r}; expected a number >= 0")


@dataclass(frozen=True)
class Prediction:
    """The answer to one request, all of it from the model named by ``model_id``."""

    classes: np.ndarray  # (N,) int64
    probabilities: np.ndarray  # (N, C) float32
    embedding: np.ndarray  # (N, D) float32
    model_id: str
    latency_ms: float
    logit_offset: np.ndarray | None = None  # (C,) added to the logits before the softmax (a class-mix correction)

    def uncorrected_classes(self) -> np.ndarray | None:
        """The classes the model's own logits give, without the class-mix correction in force;
        None when there was none (``classes`` are then the model's own)."""
        if self.logit_offset is None:
            return None
        own = np.log(np.clip(self.probabilities, 1e-30, None)) - self.logit_offset  # logits up to a row constant
        return own.argmax(axis=1).astype(np.int64)


@dataclass(frozen=True)
class RuntimeStats:
    """A snapshot of the runtime for ``/v1/status``, ``/metrics`` and the daemon's watchers."""

    model_id: str | None
    model_path: str | None
    model_metadata: Mapping[str, str] = field(default_factory=dict)
    model_threads: int | None = None
    num_classes: int | None = None
    previous_id: str | None = None
    loading_id: str | None = None
    loaded_at: float | None = None
    swaps: int = 0
    failed_swaps: int = 0
    predictions: int = 0
    samples: int = 0
    in_flight: int = 0
    draining: int = 0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"model_metadata": dict(self.model_metadata)}


def as_model_input(array: Any) -> np.ndarray:
    """Turn what a client sends into the model's input: float32 ``(N, 1, 28, 28)`` in [0, 1].

    Accepts ``(28, 28)``, ``(N, 28, 28)`` or ``(N, 1, 28, 28)``; integers are pixel values
    0..255 (uint8 or any integer dtype holding them), floats are already scaled to [0, 1].

    Raises:
        RequestError: naming the shape, dtype or values that are wrong and what is expected.
    """
    x = np.asarray(array)
    want = "(28, 28), (N, 28, 28) or (N, 1, 28, 28)"
    if x.dtype.kind not in "uif":
        raise RequestError(f"input dtype {x.dtype} is not supported; expected uint8 pixels 0..255 or floats in [0, 1]")
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or tuple(x.shape[1:]) != INPUT_SHAPE or x.shape[0] == 0:
        raise RequestError(f"input shape {tuple(np.shape(array))} is not accepted; expected {want} with N >= 1")
    if x.dtype.kind == "f":
        if not np.isfinite(x).all():
            raise RequestError(
                f"input holds {int((~np.isfinite(x)).sum())} NaN or infinite values; expected finite pixels"
            )
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise RequestError(f"float pixels span [{lo:g}, {hi:g}]; expected [0, 1] (send uint8 for 0..255)")
        return np.ascontiguousarray(x, dtype=np.float32)
    if x.dtype != np.uint8:  # uint8 holds 0..255 and nothing else
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise RequestError(f"integer pixels span [{lo}, {hi}]; expected 0..255")
    return np.divide(x, np.float32(255.0), dtype=np.float32)  # one pass; the same floats as astype, then divide


class Runtime(ABC):
    """What the daemon and the API need from a model runtime."""

    @property
    @abstractmethod
    def current_id(self) -> str | None:
        """The id of the model serving now, None before the first swap."""

    @abstractmethod
    def predict(self, batch: Any) -> Prediction:
        """Classify a batch (any shape :func:`as_model_input` accepts) with the current model.

        Raises:
            RequestError: the batch is malformed.
            NoModelError: no model serves yet.
        """

    @abstractmethod
    def swap(
        self,
        model_id: str,
        path: str | PathLike[str] | None,
        sample_inputs: Any | None = None,
        *,
        expected_outputs: Mapping[str, np.ndarray] | None = None,
        task: TaskData | None = None,
    ) -> None:
        """Load, validate and warm up a model, then make it the one that serves.

        Args:
            model_id: Name the model is reported under (the registry key).
            path: Where the model lives.
            sample_inputs: Local samples to validate and warm up on, in addition to a probe.
            expected_outputs: ``{"logits": ..., "embedding": ...}`` the model must reproduce
                on ``sample_inputs`` (for instance the exporter's torch outputs).
            task: The labelled data the model is deployed for, checked instead of the
                service's task images (:class:`~service.serving.task_check.TaskData`).

        Raises:
            ModelLoadError: the model cannot serve; the current model serves on.
        """

    @abstractmethod
    def set_logit_offset(self, model_id: str, offset: np.ndarray | None) -> bool:
        """Add ``offset (K,)`` to every logit ``model_id`` produces from the next request on
        (``None``: stop). False, and nothing changed, if ``model_id`` does not serve."""

    @abstractmethod
    def logit_offset(self, model_id: str) -> np.ndarray | None:
        """The offset in force on ``model_id`` (``None`` if none or it does not serve)."""

    @abstractmethod
    def rollback(self, sample_inputs: Any | None = None) -> str:
        """Swap back to the model that served before the last swap; returns its id."""

    @abstractmethod
    def stats(self) -> RuntimeStats:
        """A consistent snapshot of what serves and how it went."""

    def release_memory(self) -> bool:
        """Give back memory the serving model holds between requests (called when the service
        is idle); True if there was something to release. Nothing by default."""
        return False


@dataclass(eq=False)
class _LoadedModel:
    model_id: str
    path: str | None
    run: ModelFn
    metadata: dict[str, str]
    loaded_at: float = 0.0
    num_classes: int = 0
    in_flight: int = 0
    logit_offset: np.ndarray | None = None  # (K,) added to every logit: a class-mix correction
    task_accuracy: float | None = None  # on the task check's held-out images, when measured
    threads: int | None = None  # onnxruntime intra-op threads of its session
    release: Callable[[], bool] | None = None  # frees what its session keeps between runs; True if it did


def _probe_batch() -> np.ndarray:
    """Black, white and noise images: cheap inputs on which any sound model stays finite."""
    noise = np.random.default_rng(0).random((6, *INPUT_SHAPE), dtype=np.float32)
    return np.concatenate([np.zeros((1, *INPUT_SHAPE), np.float32), np.ones((1, *INPUT_SHAPE), np.float32), noise])


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


class _SwappingRuntime(Runtime):
    """The swap, validation, batching and statistics that every runtime shares."""

    def __init__(self, settings: RuntimeSettings | None = None) -> None:
        self.settings = settings or RuntimeSettings()
        self._lock = threading.Lock()  # guards _current and the counters; held for microseconds
        self._swap_lock = threading.Lock()  # one load at a time; held for the whole load
        self._current: _LoadedModel | None = None
        self._previous: tuple[str, str | None] | None = None
        self._retired: weakref.WeakSet[_LoadedModel] = weakref.WeakSet()
        self._loading: str | None = None
        self._counts = {"swaps": 0, "failed_swaps": 0, "predictions": 0, "samples": 0}
        self._latencies: deque[float] = deque(maxlen=self.settings.latency_window)
        self.observer: RequestObserver | None = None  # per-model live figures (service.serving.live); must be quick
        self.task: TaskCheck | None = None  # checked on every model before it serves

    @abstractmethod
    def _open(self, model_id: str, path: str | None) -> _LoadedModel:
        """Open a model and check its declared signature; raise ModelLoadError otherwise."""

    @property
    def current_id(self) -> str | None:
        model = self._current
        return None if model is None else model.model_id

    def predict(self, batch: Any) -> Prediction:
        x = as_model_input(batch)  # (N, 1, 28, 28)
        with self._lock:
            model = self._current
            if model is None:
                raise NoModelError("no model is deployed yet; the daemon swaps one in after its first search")
            model.in_flight += 1
        start, done = time.perf_counter(), False
        try:
            logits, embedding = self._run_chunked(model, x)
            done = True
        except Exception as exc:
            self._observe(model.model_id, len(x), (time.perf_counter() - start) * 1e3, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            latency_ms = (time.perf_counter() - start) * 1e3
            with self._lock:
                model.in_flight -= 1
                if done:
                    self._counts["predictions"] += 1
                    self._counts["samples"] += len(x)
                    self._latencies.append(latency_ms)
        if not (np.isfinite(logits).all() and np.isfinite(embedding).all()):
            self._observe(model.model_id, len(x), latency_ms, "NaN or infinite outputs")
            raise InferenceError(f"model {model.model_id!r} produced NaN or infinite outputs for this input")
        self._observe(model.model_id, len(x), latency_ms, None)
        offset = model.logit_offset  # one read: a correction set meanwhile applies from the next request
        probs = _softmax(logits if offset is None else logits + offset)
        return Prediction(probs.argmax(axis=1).astype(np.int64), probs, embedding, model.model_id, latency_ms, offset)

    def release_memory(self) -> bool:
        """The serving model's :attr:`_LoadedModel.release`, counted in flight like a request (a
        swap meanwhile frees its session only after it), not as a prediction."""
        with self._lock:
            model = self._current
            if model is None or model.release is None:
                return False
            model.in_flight += 1
        try:
            return model.release()
        finally:
            with self._lock:
                model.in_flight -= 1

    def set_logit_offset(self, model_id: str, offset: np.ndarray | None) -> bool:
        with self._lock:
            model = self._current
            if model is None or model.model_id != model_id:
                return False
            if offset is not None:
                offset = np.asarray(offset, np.float32).reshape(-1)
                if offset.shape != (model.num_classes,) or not np.isfinite(offset).all():
                    raise ValueError(
                        f"a logit offset of {model_id} must be {model.num_classes} finite numbers, got shape {offset.shape}"
                    )
            model.logit_offset = offset
            return True

    def paired_latency(
        self, path: str | PathLike[str], batch: np.ndarray, rounds: int = 60
    ) -> tuple[list[float], list[float]]:
        """Milliseconds of ``rounds`` runs of ``batch`` on the model at ``path`` and on the model
        serving, interleaved (one of each per round): both under the same load. The other model
        is opened for this call only; requests keep being served meanwhile."""
        other = self._open(Path(path).parent.name, str(path))
        serving = self._current
        if serving is None:
            raise NoModelError("no model serves to time beside the other one")
        x = as_model_input(batch)
        other.run(x), serving.run(x)  # first runs allocate
        theirs, ours = [], []
        for _ in range(rounds):
            for model, out in ((other, theirs), (serving, ours)):
                t = time.perf_counter()
                model.run(x)
                out.append((time.perf_counter() - t) * 1e3)
        return theirs, ours

    def embedding_match(self, path: str | PathLike[str], images: np.ndarray, reference: np.ndarray) -> float:
        """How well ``images`` (uint8 ``(N, 28, 28)``) look like ``reference``, the kept drift
        reference of the model at ``path``: that model's embeddings of them against it, per
        dimension KS combined by Simes; the p-value. The model is opened for this call only."""
        from lifelong.drift.stats import ks_2samp, simes_p

        model = self._open(Path(path).parent.name, str(path))
        x = as_model_input(images)
        emb = np.concatenate([model.run(x[i : i + 256])[1] for i in range(0, len(x), 256)])
        if emb.ndim != 2 or emb.shape[1] != reference.shape[1]:
            raise ModelLoadError(
                f"embeddings of width {emb.shape[1:]} against a reference of width {reference.shape[1]}"
            )
        return simes_p(ks_2samp(reference, emb)[1])

    def task_accuracy(self) -> float | None:
        """The serving model's accuracy on the task check's images, if it was measured when it swapped in."""
        model = self._current
        return None if model is None else model.task_accuracy

    def logit_offset(self, model_id: str) -> np.ndarray | None:
        model = self._current
        return None if model is None or model.model_id != model_id else model.logit_offset

    def _observe(self, model_id: str, batch: int, latency_ms: float, error: str | None) -> None:
        observer = self.observer
        if observer is not None:
            try:
                observer(model_id, batch, latency_ms, error)
            except Exception:  # the figures are a side line: never fail a request for them
                logger.exception("the request observer failed")

    def _run_chunked(self, model: _LoadedModel, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        step = self.settings.max_batch
        if len(x) <= step:
            return model.run(x)
        parts = [model.run(x[i : i + step]) for i in range(0, len(x), step)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def swap(
        self,
        model_id: str,
        path: str | PathLike[str] | None,
        sample_inputs: Any | None = None,
        *,
        expected_outputs: Mapping[str, np.ndarray] | None = None,
        task: TaskData | None = None,
    ) -> None:
        path_str = None if path is None else str(path)
        with self._swap_lock:
            self._loading = model_id
            start = time.perf_counter()
            try:
                candidate = self._open(model_id, path_str)
                samples = self._validate(candidate, sample_inputs, expected_outputs, task)
                self._warm_up(candidate, samples)
            except Exception as exc:
                with self._lock:
                    self._counts["failed_swaps"] += 1
                serving = self.current_id
                logger.warning("model %s (%s) refused, %r serves on: %s", model_id, path_str, serving, exc)
                if isinstance(exc, ModelLoadError):
                    raise
                raise ModelLoadError(f"model {model_id!r} at {path_str} failed to load: {exc}") from exc
            finally:
                self._loading = None
            candidate.loaded_at = time.time()
            with self._lock:
                old, self._current = self._current, candidate  # the swap
                self._counts["swaps"] += 1
                if old is not None:
                    self._retired.add(old)
                    if old.model_id != model_id:
                        self._previous = (old.model_id, old.path)
        logger.info(
            "model %s now serves (was %s; loaded in %.0f ms)",
            model_id,
            None if old is None else old.model_id,
            (time.perf_counter() - start) * 1e3,
        )

    def _validate(
        self,
        model: _LoadedModel,
        sample_inputs: Any | None,
        expected: Mapping[str, np.ndarray] | None,
        task: TaskData | None = None,
    ) -> np.ndarray:
        """Run the model on a probe (+ the samples) and check every output; return the batch used."""
        sample = None if sample_inputs is None else as_model_input(sample_inputs)
        batch = _probe_batch() if sample is None else np.concatenate([_probe_batch(), sample])
        one_logits, _ = model.run(batch[:1])  # a batch of one must work too: the batch axis is dynamic
        logits, embedding = model.run(batch)
        problems = []
        for name, out, n in ((LOGITS_OUTPUT, logits, len(batch)), (EMBEDDING_OUTPUT, embedding, len(batch))):
            out = np.asarray(out)
            if out.dtype != np.float32 or out.ndim != 2 or out.shape[0] != n:
                problems.append(f"{name} is {out.dtype} {out.shape} for a batch of {n}; expected float32 ({n}, K)")
            elif not np.isfinite(out).all():
                problems.append(f"{name} holds {int((~np.isfinite(out)).sum())} NaN/inf values on the probe batch")
        if not problems and logits.shape[1] < 2:
            problems.append(f"logits have {logits.shape[1]} class; expected at least 2")
        if not problems and np.asarray(one_logits).shape != (1, logits.shape[1]):
            problems.append(f"a batch of 1 gave logits {np.asarray(one_logits).shape}; expected (1, {logits.shape[1]})")
        if not problems:
            sums = _softmax(logits).sum(axis=1)
            if not np.allclose(sums, 1.0, atol=1e-4):
                problems.append(f"probabilities sum to {sums.min():g}..{sums.max():g}; expected 1")
        if not problems and expected:
            if sample is None:
                problems.append("expected outputs were given without the sample_inputs they belong to")
            else:
                got = {LOGITS_OUTPUT: logits[-len(sample) :], EMBEDDING_OUTPUT: embedding[-len(sample) :]}
                problems += self._parity(got, expected)
        if not problems and self.task is not None:
            problems += self.task.problems(model, int(logits.shape[1]), self._current, task)
        if problems:
            raise ModelLoadError(f"model {model.model_id!r} failed validation: " + "; ".join(problems))
        model.num_classes = int(logits.shape[1])
        return batch

    def _parity(self, got: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray]) -> list[str]:
        problems = []
        for name, want in expected.items():
            if name not in got:
                problems.append(f"expected output {name!r} is not one of {sorted(got)}")
                continue
            want = np.asarray(want, np.float32)
            if want.shape != got[name].shape:
                problems.append(f"{name} shape {got[name].shape} differs from the expected {want.shape}")
            elif not np.allclose(got[name], want, atol=self.settings.parity_atol, rtol=self.settings.parity_rtol):
                diff = float(np.abs(got[name] - want).max())
                problems.append(
                    f"{name} differs from the expected outputs by up to {diff:.3g} "
                    f"(atol {self.settings.parity_atol:g}, rtol {self.settings.parity_rtol:g})"
                )
        return problems

    def _warm_up(self, model: _LoadedModel, batch: np.ndarray) -> None:
        """Replay the samples at batch 1 and at full size, so the first requests pay no first-run costs."""
        for _ in range(self.settings.warmup_runs):
            model.run(batch[:1])
            self._run_chunked(model, batch)

    def rollback(self, sample_inputs: Any | None = None) -> str:
        previous = self._previous
        if previous is None:
            raise NoModelError(f"no previous model to roll back to (serving: {self.current_id!r})")
        model_id, path = previous
        logger.warning("rolling back from %s to %s", self.current_id, model_id)
        self.swap(model_id, path, sample_inputs)
        return model_id

    def stats(self) -> RuntimeStats:
        with self._lock:
            model = self._current
            lat = np.fromiter(self._latencies, float) if self._latencies else None
            return RuntimeStats(
                model_id=None if model is None else model.model_id,
                model_path=None if model is None else model.path,
                model_metadata={} if model is None else dict(model.metadata),
                model_threads=None if model is None else model.threads,
                num_classes=None if model is None else model.num_classes,
                previous_id=None if self._previous is None else self._previous[0],
                loading_id=self._loading,
                loaded_at=None if model is None else model.loaded_at,
                in_flight=sum(m.in_flight for m in (model, *self._retired) if m is not None),
                draining=len(self._retired),  # retired models still alive: held by requests
                latency_p50_ms=None if lat is None else float(np.percentile(lat, 50)),
                latency_p95_ms=None if lat is None else float(np.percentile(lat, 95)),
                **self._counts,
            )


class MemoryRuntime(_SwappingRuntime):
    """Serves numpy callables registered by id, through the same swap and validation path.

    For tests of the API and the daemon: ``swap(model_id, path)`` looks ``model_id`` up
    among the registered callables (``path`` is only recorded), so a test can make a model
    slow, blocking or wrong with plain Python.
    """

    def __init__(self, models: Mapping[str, ModelFn] | None = None, settings: RuntimeSettings | None = None) -> None:
        super().__init__(settings)
        self._models: dict[str, ModelFn] = dict(models or {})

    def add_model(self, model_id: str, fn: ModelFn) -> None:
        """Register (or replace) the callable served under ``model_id``."""
        self._models[model_id] = fn

    def _open(self, model_id: str, path: str | None) -> _LoadedModel:
        if model_id not in self._models:
            raise ModelLoadError(f"model {model_id!r} is not registered; known: {sorted(self._models)}")
        fn = self._models[model_id]

        def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            logits, embedding = fn(x)
            return np.asarray(logits), np.asarray(embedding)

        return _LoadedModel(model_id, path, run, {"lifelong.subnet": model_id})
