"""The daemon's local HTTP API: the WSGI app (routes, request parsing, answers, metrics).

It is served on a Unix socket (and loopback TCP) by :mod:`service.api.server`.

Endpoints (JSON answers; errors are ``{"error": message}`` with a 4xx/5xx status):

- ``POST /v1/predict``: ``.npy`` bytes (``application/x-npy``) or JSON ``{"inputs": [...]}``,
  any shape and dtype :func:`~service.serving.runtime.as_model_input` accepts;
- ``POST /v1/feedback``: JSON ``{"labels": [{"request_id", "index", "label"}, ...]}`` for
  earlier predictions, or new labelled samples: ``.npz`` with ``x`` and ``y``, ``.npy``
  with ``?labels=3,1,4``, or JSON ``{"inputs": [...], "labels": [...]}``;
- ``GET /v1/status``, ``GET /v1/health`` (503 while no model serves), ``GET /metrics``
  (Prometheus text format).

The app owns nothing but its metrics: the runtime, the feedback sink and the status
provider are injected, so it is tested without the store or the daemon. The daemon serves
its admin endpoints (deploy, rollback, history; :mod:`service.api.admin`) with a second app on
a second, owner-only socket (``public=False``: status and health besides what is added with
:meth:`ApiApp.add_route`); the API socket answers them 403 and names the admin socket.
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import numpy as np

from lifelong.deploy.model_format import INPUT_SHAPE
from service.api.bodies import JSON, NPY, NPZ, array_field, body_kind, read_json, read_npy, read_npz
from service.errors import (
    Forbidden,
    NoModelError,
    PayloadTooLarge,
    RecordNotFound,
    RequestError,
    ServiceError,
    UnsupportedMediaType,
)
from service.serving.runtime import Prediction, Runtime, RuntimeStats, as_model_input

__all__ = ["ApiApp", "FeedbackLabel", "FeedbackSink", "MemoryFeedback"]

logger = logging.getLogger(__name__)

ADMIN_PATHS = ("/v1/deploy", "/v1/rollback", "/v1/history")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True)
class FeedbackLabel:
    """The true class of sample ``index`` of an earlier ``/v1/predict`` request."""

    request_id: str
    index: int
    label: int


class FeedbackSink(ABC):
    """Where the API sends what it learns; the daemon's implementation writes to its store."""

    @abstractmethod
    def record(self, request_id: str, images: np.ndarray, prediction: Prediction) -> None:
        """Remember a served prediction so that later labels can name it. ``images``: the
        pixels as sent, uint8 ``(N, 28, 28)``, or the model's input, float32 ``(N, 1, 28, 28)``
        in [0, 1] (when the request sent floats)."""

    @abstractmethod
    def label(self, items: list[FeedbackLabel]) -> int:
        """Attach labels to earlier predictions, all or none; returns how many were taken.

        Raises:
            RecordNotFound: a request id or index it does not know (404).
        """

    @abstractmethod
    def add_samples(self, images: np.ndarray, labels: np.ndarray) -> int:
        """Take new labelled samples ``(N,1,28,28)`` float32 and ``(N,)`` int64."""


class MemoryFeedback(FeedbackSink):
    """Keeps the last ``capacity`` predictions and every label in memory (tests, no store)."""

    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._recent: OrderedDict[str, tuple[np.ndarray, Prediction]] = OrderedDict()
        self.labelled: list[tuple[np.ndarray, int, int, str]] = []  # (image, label, predicted, model)
        self.samples: list[tuple[np.ndarray, np.ndarray]] = []

    def record(self, request_id: str, images: np.ndarray, prediction: Prediction) -> None:
        with self._lock:
            self._recent[request_id] = (images, prediction)
            while len(self._recent) > self.capacity:
                self._recent.popitem(last=False)

    def label(self, items: list[FeedbackLabel]) -> int:
        with self._lock:
            for it in items:
                if it.request_id not in self._recent or it.index >= len(self._recent[it.request_id][0]):
                    raise RecordNotFound(
                        f"no prediction {it.request_id!r} sample {it.index} among the last {self.capacity}; "
                        "send the labelled image as a new sample instead"
                    )
            for it in items:
                images, pred = self._recent[it.request_id]
                self.labelled.append((images[it.index], it.label, int(pred.classes[it.index]), pred.model_id))
        return len(items)

    def add_samples(self, images: np.ndarray, labels: np.ndarray) -> int:
        with self._lock:
            self.samples.append((images, labels))
        return len(images)


class _Metrics:
    """Request counts and latency histograms, rendered in the Prometheus text format."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0
        self._counts: dict[tuple[str, int], int] = {}
        self._hist: dict[str, list[float]] = {}  # endpoint -> [count <= each bucket..., sum, count]

    def track(self, delta: int) -> None:
        with self._lock:
            self.in_flight += delta

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self._counts[endpoint, status] = self._counts.get((endpoint, status), 0) + 1
            h = self._hist.setdefault(endpoint, [0.0] * (len(LATENCY_BUCKETS) + 2))
            for i, le in enumerate(LATENCY_BUCKETS):
                h[i] += seconds <= le
            h[-2:] = [h[-2] + seconds, h[-1] + 1]

    def render(self, stats: RuntimeStats) -> str:
        with self._lock:
            counts, hist = dict(self._counts), {k: list(v) for k, v in self._hist.items()}
        lines: list[str] = []

        def family(name: str, kind: str, text: str, samples: Iterable[tuple[str, object]]) -> None:
            lines.extend([f"# HELP lifelong_{name} {text}", f"# TYPE lifelong_{name} {kind}"])
            lines.extend(f"lifelong_{name}{labels} {value}" for labels, value in samples)

        family(
            "requests_total",
            "counter",
            "API requests by endpoint and status.",
            ((f'{{endpoint="{e}",status="{s}"}}', n) for (e, s), n in sorted(counts.items())),
        )
        buckets = []
        for e, h in sorted(hist.items()):
            for le, n in zip((*LATENCY_BUCKETS, "+Inf"), (*h[:-2], h[-1]), strict=True):
                buckets.append((f'_bucket{{endpoint="{e}",le="{le}"}}', int(n)))
            buckets += [(f'_sum{{endpoint="{e}"}}', f"{h[-2]:.6f}"), (f'_count{{endpoint="{e}"}}', int(h[-1]))]
        family("request_seconds", "histogram", "API request latency.", buckets)
        if stats.model_id is not None:
            subnet = stats.model_metadata.get("lifelong.subnet", "")
            info = f'{{model="{_esc(stats.model_id)}",subnet="{_esc(subnet)}"}}'
            family("model_info", "gauge", "The model serving now.", [(info, 1)])
        family("model_swaps_total", "counter", "Models swapped in.", [("", stats.swaps)])
        family(
            "model_swap_failures_total", "counter", "Models refused at load or validation.", [("", stats.failed_swaps)]
        )
        family("predicted_samples_total", "counter", "Samples classified.", [("", stats.samples)])
        family("requests_in_flight", "gauge", "Requests being answered.", [("", self.in_flight)])
        return "\n".join(lines) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


Handler = Callable[[dict[str, Any]], tuple[int, Any]]
"""A route: the WSGI environ -> (HTTP status, JSON-ready payload or Prometheus text)."""


class ApiApp:
    """The WSGI application: routes requests to the injected runtime, sink and status provider.

    Args:
        runtime: What answers predictions.
        feedback: Where labels and labelled samples go (it also remembers predictions so
            that later labels can name them); None answers 503 on ``/v1/feedback``.
        status: Extra fields for ``/v1/status`` (the daemon's drift, jobs, store...).
        max_body_bytes: Larger bodies are answered 413 before they are parsed.
        public: Serve predict, feedback and metrics (the API socket); False: only status,
            health and the added routes (the admin socket).
        admin_socket: Named in the 403 answering an admin path here (None: a plain 404).
    """

    def __init__(
        self,
        runtime: Runtime,
        feedback: FeedbackSink | None = None,
        status: Callable[[], Mapping[str, Any]] | None = None,
        *,
        max_body_bytes: int = 8 * 2**20,
        public: bool = True,
        admin_socket: str | None = None,
    ) -> None:
        self.runtime, self.feedback, self.status_provider = runtime, feedback, status
        self.max_body_bytes, self.admin_socket = max_body_bytes, admin_socket
        self.metrics = _Metrics()
        # request ids: unique within this process by the counter, across restarts by the prefix
        self._id_prefix, self._id_count = secrets.token_hex(8), itertools.count()
        self.metric_sources: list[Callable[[], str]] = []  # more families for /metrics (the daemon's drift)
        self._routes: dict[str, dict[str, Handler]] = {
            "/v1/status": {"GET": self._status},
            "/v1/health": {"GET": self._health},
        }
        if public:
            self._routes |= {
                "/v1/predict": {"POST": self._predict},
                "/v1/feedback": {"POST": self._feedback},
                "/metrics": {"GET": self._metrics},
            }

    def add_route(self, path: str, method: str, handler: Handler) -> None:
        """Answer ``method path`` with ``handler``; its ServiceErrors become HTTP errors as for the built-in routes."""
        if method in self._routes.get(path, {}):
            raise ValueError(f"{method} {path} is already routed")
        self._routes.setdefault(path, {})[method] = handler

    def read_body(self, environ: dict[str, Any], limit: int | None = None) -> bytes:
        """The request body, refused with 413 over ``limit`` bytes (default ``max_body_bytes``) and 400 if empty."""
        return self._read_body(environ, limit)

    def read_json(self, environ: dict[str, Any], *, optional: bool = False) -> Any:
        """The body parsed as JSON; with ``optional`` an empty body reads as ``{}``."""
        if optional and str(environ.get("CONTENT_LENGTH") or "0").strip() == "0":
            return {}
        return read_json(self._read_body(environ))

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start, path, method = time.perf_counter(), environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
        route, headers = self._routes.get(path), []
        self.metrics.track(1)
        try:
            if route is None and path in ADMIN_PATHS and self.admin_socket:
                raise Forbidden(
                    f"{path} is an admin command: it is served on the admin socket {self.admin_socket} "
                    "(the service's user and root) only; this socket serves predict, feedback, status and metrics"
                )
            if route is None:
                status, payload = 404, {"error": f"no route {path!r}; routes are {', '.join(self._routes)}"}
            elif (method if method != "HEAD" else "GET") not in route:  # HEAD: what GET answers, without the body
                status, payload = 405, {"error": f"{method} is not allowed on {path}; use {', '.join(route)}"}
                headers.append(("Allow", ", ".join(route)))
            else:
                status, payload = route[method if method != "HEAD" else "GET"](environ)
        except ServiceError as exc:
            status, payload = exc.http_status, {"error": str(exc), "type": type(exc).__name__}
        except Exception:  # a bug or an onnxruntime failure: answer, log, keep serving
            # the exception text stays in the journal: it can name paths and internals a client must not see
            logger.exception("%s %s failed", method, path)
            status, payload = 500, dict(_INTERNAL_ERROR)
        finally:
            self.metrics.track(-1)
        if isinstance(payload, str):
            body, ctype = payload.encode(), "text/plain; version=0.0.4; charset=utf-8"
        else:
            try:
                body, ctype = json.dumps(payload, allow_nan=False, default=str).encode(), JSON
            except ValueError as exc:  # NaN from a status provider: a bug, but the answer stays JSON
                status, body, ctype = 500, json.dumps({"error": f"unserialisable answer: {exc}"}).encode(), JSON
            if status >= 400:
                logger.info("%s %s -> %d: %s", method, path, status, payload.get("error"))
        self.metrics.observe(path if route else "other", status, time.perf_counter() - start)
        headers += [("Content-Type", ctype), ("Content-Length", str(len(body)))]
        start_response(f"{status} {_REASONS.get(status, 'Error')}", headers)
        # no body to HEAD, whatever server sends what the app returns: a keep-alive client would
        # read it as the start of its next answer
        return [] if method == "HEAD" else [body]

    def _predict(self, environ: dict[str, Any]) -> tuple[int, Any]:
        body = self._read_body(environ)
        kind = body_kind(environ, body)
        if kind == JSON:
            doc = read_json(body)
            if not isinstance(doc, dict) or "inputs" not in doc:
                raise RequestError('JSON body must be an object {"inputs": [[...28 x 28 pixels...]]}')
            images = array_field(doc["inputs"], "inputs")
        elif kind == NPY:
            images = read_npy(body)
        else:
            raise UnsupportedMediaType(f"Content-Type {kind!r} is not read here; send {NPY} or {JSON}")
        pred = self.runtime.predict(images)  # checks and converts them (RequestError)
        request_id = f"{self._id_prefix}{next(self._id_count):016x}"
        if self.feedback is not None:
            # the pixels as sent when they are uint8 (what is kept), else the model's input
            n = len(pred.classes)
            kept = images.reshape(n, *INPUT_SHAPE[1:]) if images.dtype == np.uint8 else as_model_input(images)
            self.feedback.record(request_id, kept, pred)
        return 200, {
            "model": pred.model_id,
            "request_id": request_id,
            "classes": pred.classes.tolist(),
            "probabilities": np.round(pred.probabilities.astype(np.float64), 6).tolist(),
            "latency_ms": round(pred.latency_ms, 3),
        }

    def _feedback(self, environ: dict[str, Any]) -> tuple[int, Any]:
        if self.feedback is None:
            raise NoModelError("this daemon takes no feedback: no feedback sink is configured")
        body = self._read_body(environ)
        kind, classes = body_kind(environ, body), self.runtime.stats().num_classes
        if kind == JSON:
            doc = read_json(body)
            if isinstance(doc, dict) and "labels" in doc and "inputs" not in doc:
                return 200, {"accepted": self.feedback.label(_label_items(doc["labels"], classes))}
            if not isinstance(doc, dict) or "inputs" not in doc:
                raise RequestError(
                    'JSON feedback must be {"labels": [{"request_id", "index", "label"}]} or {"inputs", "labels"}'
                )
            images, labels = array_field(doc["inputs"], "inputs"), array_field(doc.get("labels"), "labels")
        elif kind == NPZ:
            images, labels = read_npz(body)
        elif kind == NPY:
            query = parse_qs(environ.get("QUERY_STRING", "")).get("labels", [""])[0]
            try:
                labels = np.array([int(v) for v in query.split(",") if v.strip()], np.int64)
            except ValueError:
                raise RequestError(f"?labels={query!r} is not a comma-separated list of integers") from None
            images = read_npy(body)
        else:
            raise UnsupportedMediaType(f"Content-Type {kind!r} is not read here; send {JSON}, {NPZ} or {NPY}")
        x, y = as_model_input(images), _check_labels(labels, classes)
        if len(y) != len(x):
            raise RequestError(f"{len(x)} images but {len(y)} labels; expected one label per image")
        return 200, {"accepted": self.feedback.add_samples(x, y)}

    def _status(self, environ: dict[str, Any]) -> tuple[int, Any]:
        stats = self.runtime.stats()
        extra = dict(self.status_provider()) if self.status_provider else {}
        return 200, {"model": stats.model_id, "runtime": stats.as_dict(), **extra}

    def _health(self, environ: dict[str, Any]) -> tuple[int, Any]:
        model = self.runtime.current_id
        if model is None:
            return 503, {"status": "no model", "error": "no model is deployed yet"}
        return 200, {"status": "ok", "model": model}

    def _metrics(self, environ: dict[str, Any]) -> tuple[int, Any]:
        return 200, self.metrics.render(self.runtime.stats()) + "".join(source() for source in self.metric_sources)

    def _read_body(self, environ: dict[str, Any], limit: int | None = None) -> bytes:
        limit = self.max_body_bytes if limit is None else limit
        try:
            length = int(environ.get("CONTENT_LENGTH") or -1)
        except ValueError:
            raise RequestError(f"Content-Length {environ.get('CONTENT_LENGTH')!r} is not an integer") from None
        if length > limit:
            raise PayloadTooLarge(f"body of {length} bytes is over the limit of {limit} bytes; send smaller batches")
        body = environ["wsgi.input"].read(length if length >= 0 else limit + 1)
        if len(body) > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes; send smaller batches")
        if not body:
            raise RequestError("empty body; expected .npy bytes or a JSON object")
        return body


_INTERNAL_ERROR = {"error": "internal error; the service journal has the details", "type": "InternalError"}

_REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
}
_REASONS |= {415: "Unsupported Media Type", 422: "Unprocessable Entity", 500: "Internal Server Error"}
_REASONS |= {503: "Service Unavailable"}


def _check_labels(labels: np.ndarray, classes: int | None) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise RequestError(f"labels are {y.dtype} of shape {y.shape}; expected a list of integer class indices")
    if y.size and (y.min() < 0 or (classes is not None and y.max() >= classes)):
        want = f"0..{classes - 1}" if classes else ">= 0"
        raise RequestError(f"labels span {int(y.min())}..{int(y.max())}; expected class indices {want}")
    return y.astype(np.int64)


def _label_items(raw: Any, classes: int | None) -> list[FeedbackLabel]:
    if not isinstance(raw, list) or not raw:
        raise RequestError('"labels" must be a non-empty list of {"request_id", "index", "label"} objects')
    items = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("request_id"), str):
            raise RequestError(f"labels[{i}] is {item!r}; expected {{'request_id': str, 'index': int, 'label': int}}")
        index, label = item.get("index", 0), item.get("label")
        for name, v in (("index", index), ("label", label)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise RequestError(f"labels[{i}].{name} is {v!r}; expected an integer >= 0")
        _check_labels(np.array([label]), classes)
        items.append(FeedbackLabel(item["request_id"], index, label))
    return items
