"""A small client of the daemon's API, over its Unix socket or loopback TCP.

Standard library only (HTTP/1.1 over the socket with :mod:`service.api.http_wire`, a minimal
parser that costs a fraction of ``http.client``), so applications on the gateway and the CLI
can talk to the daemon without a web stack. One keep-alive connection per client; a client may
be shared between threads (requests then take turns), though a thread each is faster.

Errors: :class:`~service.errors.DaemonUnreachable` with a one-line reason when nothing
answers; otherwise the server's own ``error`` message, raised as the service error class of
its HTTP status (400 RequestError, 413 PayloadTooLarge, 503 NoModelError, ...).
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from os import PathLike
from typing import Any
from urllib.parse import quote

import numpy as np

from service import errors
from service.api.http_wire import Closed, Connection, ProtocolError
from service.errors import (
    ApiError,
    DaemonUnreachable,
    Forbidden,
    ModelLoadError,
    NoModelError,
    PayloadTooLarge,
    RequestError,
    ServiceError,
    UnsupportedMediaType,
)
from service.state.paths import admin_socket_for

__all__ = ["Client", "ClientPrediction"]

_ERRORS: dict[int, type[ServiceError]] = {
    400: RequestError,
    403: Forbidden,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: ModelLoadError,
    503: NoModelError,
}


@dataclass(frozen=True)
class ClientPrediction:
    """The daemon's answer to one ``predict``; ``model`` is the model that computed all of it."""

    model: str
    request_id: str
    classes: np.ndarray  # (N,) int64
    probabilities: np.ndarray  # (N, C) float64
    latency_ms: float


class Client:
    """Talks to the daemon.

    Args:
        socket_path: The daemon's Unix socket.
        host: Loopback host, when talking TCP instead (with ``port``).
        port: TCP port.
        timeout: Seconds to wait for a connection or an answer.
        admin_socket_path: Where :meth:`deploy`, :meth:`rollback` and :meth:`history` go: the
            daemon's owner-only admin socket [beside ``socket_path``: ``NAME-admin.sock``;
            none over TCP unless given].

    Example::

        with Client("/var/lib/lifelong/api.sock") as c:
            answer = c.predict(images)  # uint8 (N, 28, 28)
            c.feedback(labels=[(answer.request_id, 0, 3)])
    """

    def __init__(
        self,
        socket_path: str | PathLike[str] | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        timeout: float = 30.0,
        admin_socket_path: str | PathLike[str] | None = None,
    ) -> None:
        if (socket_path is None) == (port is None):
            raise ValueError("Client needs exactly one of socket_path or port")
        self.socket_path = None if socket_path is None else str(socket_path)
        self.host, self.port, self.timeout = host or "127.0.0.1", port, timeout
        if admin_socket_path is None and socket_path is not None:
            admin_socket_path = admin_socket_for(socket_path)
        self.admin_socket_path = None if admin_socket_path is None else str(admin_socket_path)
        self._conn: Connection | None = None
        self._lock = threading.Lock()
        self._admin: Client | None = None

    @property
    def address(self) -> str:
        return f"unix:{self.socket_path}" if self.socket_path else f"http://{self.host}:{self.port}"

    def predict(self, images: Any) -> ClientPrediction:
        """Classify ``(28,28)``, ``(N,28,28)`` or ``(N,1,28,28)`` images, uint8 0..255 or float 0..1."""
        doc = self._call("POST", "/v1/predict", _npy_bytes(np.asarray(images)), "application/x-npy")
        return ClientPrediction(
            model=doc["model"],
            request_id=doc["request_id"],
            classes=np.asarray(doc["classes"], np.int64),
            probabilities=np.asarray(doc["probabilities"], np.float64),
            latency_ms=float(doc.get("latency_ms", float("nan"))),
        )

    def feedback(self, *, labels: Iterable[Any], images: Any | None = None) -> int:
        """Send labels; returns how many the daemon took.

        Args:
            labels: Without ``images``: ``(request_id, index, label)`` triples (or objects or
                dicts with those names) for earlier predictions. With ``images``: one class
                index per image.
            images: New labelled samples, sent as ``.npz``.
        """
        if images is None:
            items = [_label_dict(item) for item in labels]
            body, ctype = json.dumps({"labels": items}).encode(), "application/json"
        else:
            buf = io.BytesIO()
            np.savez(buf, x=np.asarray(images), y=np.asarray(list(labels)))
            body, ctype = buf.getvalue(), "application/x-npz"
        return int(self._call("POST", "/v1/feedback", body, ctype)["accepted"])

    def status(self) -> dict[str, Any]:
        """The daemon's status: the model serving, runtime counters, and what the daemon adds."""
        return self._call("GET", "/v1/status")

    def health(self) -> dict[str, Any]:
        """``{"status": "ok", "model": id}``; raises NoModelError while no model serves."""
        return self._call("GET", "/v1/health")

    def deploy(
        self,
        *,
        model: str | None = None,
        path: str | PathLike[str] | None = None,
        data: bytes | None = None,
        name: str = "model.onnx",
        reason: str | None = None,
    ) -> dict[str, Any]:
        """Deploy a registered model id, a file the daemon reads itself, or uploaded ONNX bytes.

        Returns the swap result (``model_id``, ``previous_id``, ``changed``, ``deployment``).
        Raises ModelLoadError (the model was refused; the old one serves on) or RecordNotFound.
        """
        if sum(v is not None for v in (model, path, data)) != 1:
            raise ValueError("deploy needs exactly one of model, path or data")
        if data is not None:
            query = f"name={quote(name)}" + (f"&reason={quote(reason)}" if reason is not None else "")
            return self._admin_call("POST", f"/v1/deploy?{query}", bytes(data), "application/octet-stream")
        doc: dict[str, Any] = {"model": model} if model is not None else {"path": str(path)}
        if reason is not None:
            doc["reason"] = reason
        return self._admin_call("POST", "/v1/deploy", json.dumps(doc).encode(), "application/json")

    def export_deploy(self, subnet: str, reason: str | None = None) -> dict[str, Any]:
        """Ask the daemon to export ``subnet`` of the supernet in use and deploy it when done.

        Returns at once with what was queued (``{"export": message, "subnet": ...}``); the
        export's end and the swap show in :meth:`status` (``export.last``).
        """
        doc: dict[str, Any] = {"subnet": subnet} | ({"reason": reason} if reason is not None else {})
        return self._admin_call("POST", "/v1/deploy", json.dumps(doc).encode(), "application/json")

    def rollback(self, reason: str | None = None) -> dict[str, Any]:
        """Go back to the previous model; raises RecordNotFound when there is none."""
        body = json.dumps({"reason": reason}).encode() if reason else None
        return self._admin_call("POST", "/v1/rollback", body, "application/json" if body else None)

    def history(self, limit: int = 20) -> dict[str, Any]:
        """Deployments, newest first, with the current model and the rollback target."""
        return self._admin_call("GET", f"/v1/history?limit={int(limit)}")

    def metrics(self) -> str:
        """The Prometheus text exposition."""
        status, data = self.request("GET", "/metrics")
        if status >= 400:
            raise _error(status, data)
        return data.decode()

    def _admin_call(
        self, method: str, path: str, body: bytes | None = None, ctype: str | None = None
    ) -> dict[str, Any]:
        """A call on the admin socket (a second client, made on first use)."""
        if self.admin_socket_path is None:
            raise DaemonUnreachable(
                f"{path} is an admin command, served on the daemon's admin Unix socket only; "
                "give its path (admin_socket_path, or --socket NAME.sock to find NAME-admin.sock beside it)"
            )
        with self._lock:
            if self._admin is None:
                self._admin = Client(
                    self.admin_socket_path, timeout=self.timeout, admin_socket_path=self.admin_socket_path
                )
        return self._admin._call(method, path, body, ctype)

    def _call(self, method: str, path: str, body: bytes | None = None, ctype: str | None = None) -> dict[str, Any]:
        status, data = self.request(method, path, body, ctype)
        if status >= 400:
            raise _error(status, data)
        return json.loads(data)

    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None
    ) -> tuple[int, bytes]:
        """Send one raw request; returns the status and the body, whatever the status.

        Raises:
            DaemonUnreachable: no daemon answers at this address.
        """
        headers = {"Content-Type": content_type} if content_type else {}
        with self._lock:
            for attempt in range(2):
                reused = self._conn is not None
                conn = self._conn or self._connection()
                self._conn = conn
                try:
                    response = conn.request(method, path, body, headers)
                except Closed as exc:
                    self._close()
                    if reused and attempt == 0:
                        continue  # the server closed an idle keep-alive connection: one fresh try
                    raise DaemonUnreachable(f"the daemon at {self.address} closed the connection ({exc})") from exc
                except ProtocolError as exc:
                    self._close()
                    raise DaemonUnreachable(f"{self.address} does not answer in HTTP: {exc}") from exc
                except OSError as exc:
                    self._close()
                    raise DaemonUnreachable(self._explain(exc)) from exc
                if response.will_close:
                    self._close()
                return response.status, response.body
        raise AssertionError("unreachable")

    def _connection(self) -> Connection:
        if self.socket_path is not None:
            return Connection(unix_path=self.socket_path, timeout=self.timeout)
        assert self.port is not None
        return Connection(host=self.host, port=self.port, timeout=self.timeout)

    def _explain(self, exc: OSError) -> str:
        where = self.address
        if isinstance(exc, FileNotFoundError):
            return f"no daemon socket at {self.socket_path}: is the lifelong service running?"
        if isinstance(exc, ConnectionRefusedError):
            return f"nothing listens at {where} (a stale socket left by a stopped daemon?): start the service"
        if isinstance(exc, PermissionError):
            if self.socket_path is not None and self.socket_path == self.admin_socket_path:
                return f"permission denied on the admin socket {where}: run as the service's user, or with sudo"
            return f"permission denied on {where}: run as the service's user or a member of its group"
        if isinstance(exc, TimeoutError):
            return f"the daemon at {where} did not answer within {self.timeout:g} s"
        return f"cannot reach the daemon at {where}: {exc}"

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        """Close the keep-alive connections (a later call opens a new one)."""
        with self._lock:
            self._close()
            admin, self._admin = self._admin, None
        if admin is not None:
            admin.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _label_dict(item: Any) -> dict[str, Any]:
    if isinstance(item, Mapping):
        return {"request_id": item["request_id"], "index": item.get("index", 0), "label": item["label"]}
    if isinstance(item, tuple | list):
        request_id, index, label = item
        return {"request_id": request_id, "index": int(index), "label": int(label)}
    return {"request_id": item.request_id, "index": int(item.index), "label": int(item.label)}


def _error(status: int, data: bytes) -> ServiceError:
    """The server's message, as the service error it raised (``type``) or else one fitting the status."""
    try:
        doc = json.loads(data)
        message, kind = str(doc["error"]), doc.get("type")
    except (ValueError, KeyError, TypeError):
        message = " ".join(data.decode(errors="replace").split())[:300] or "(empty body)"
        kind = None
    cls = getattr(errors, str(kind), None)
    if isinstance(cls, type) and issubclass(cls, ServiceError) and cls is not ApiError:
        try:
            return cls(message)
        except TypeError:  # a class whose constructor wants more than a message
            pass
    cls = _ERRORS.get(status)
    return cls(message) if cls else ApiError(f"HTTP {status}: {message}", status)
