"""The API's HTTP server: the standard library's HTTP/1.1 request handler, a thread per
connection, on sockets the API binds itself.

Why not waitress (the server before this one): waitress reads requests on one event-loop
thread and runs the app on a pool of worker threads, so every request crosses threads twice
(loop to worker, worker back to the loop's poll). For the daemon's requests, a fraction of
a millisecond of model each, those hand-offs were most of the cost. Side by side on one
2-core machine (keep-alive client on a raw Unix socket, the API app, a tiny model; medians
of interleaved rounds): waitress 0.47 ms a predict and 0.24 ms a health check, this server
0.25 ms and 0.07 ms; cheroot (a thread pool with a connection manager) was slower than
waitress (0.85 / 0.50 ms through the client). A thread per connection blocks in ``recv``
on its own connection and answers on it, with no hand-off.

What the handler does not do and this module adds, since any client of the socket may
misbehave:

- **Connections are bounded** per client and in all (:class:`~service.api.conn_limits.ConnectionLimits`,
  checked before a thread starts): over a limit, a ``503`` in the API's JSON error format,
  then close. So threads are bounded too (by ``max_connections``).
- **Requests answered at once** are bounded by a semaphore (``threads``), so that
  onnxruntime's own threads are not oversubscribed by many clients predicting together.
- **Timeouts**: a connection idle for ``idle_timeout_s`` between requests, or in the middle
  of a request line, headers or body, is closed (the socket's timeout).
- **Bodies**: ``Content-Length`` over ``max_request_body`` is answered 413 before the body is
  read (also instead of ``100 Continue``); a chunked request body is answered 411.
- **Errors** the handler answers itself (a bad request line, too many or too long headers,
  an unknown method) are JSON ``{"error", "type"}`` like every other error of the API.
- **Stop**: listeners close, idle connections are shut, requests in flight finish (up to a
  timeout).
"""

from __future__ import annotations

import io
import json
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import unquote_to_bytes

from service.api.conn_limits import ConnectionLimits

__all__ = ["HttpServer"]

logger = logging.getLogger(__name__)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_REASONS = {400: "Bad Request", 408: "Request Timeout", 411: "Length Required", 413: "Payload Too Large"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "lifelong"
    sys_version = ""
    server: _Listener

    def setup(self) -> None:
        self.timeout = self.server.owner.idle_timeout_s
        super().setup()
        self.server.owner._opened(self)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._closed(self)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        logger.debug("%s %s", self.server.owner.name, format % args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The handler's own errors (bad request line, headers, method) in the API's JSON format."""
        reason = self.responses.get(code, ("Error", ""))[0]
        text = f"{reason}: {message or explain or reason}"
        self._answer(code, [("Content-Type", "application/json")],
                     json.dumps({"error": text, "type": "HttpError"}).encode(), close=True)  # fmt: skip

    def parse_request(self) -> bool:
        """The request line and the headers, as the base class reads them, but without the
        ``email`` package: its parser took a third of the server's time per request (0.17 ms of
        0.47 ms, sampled in the daemon at batch 1). Sets ``command``, ``path``,
        ``request_version``, ``headers`` and ``close_connection``; False once an error is sent."""
        self.command = None  # set in case of an error on the first line
        self.request_version = "HTTP/0.9"
        self.close_connection = True
        self.requestline = line = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = line.split()
        if not words:
            return False
        if len(words) != 3:
            self.send_error(400, f"Bad request syntax ({line[:100]!r}); expected METHOD PATH HTTP/1.1")
            return False
        command, path, version = words
        major, minor = _version(version)
        if major is None:
            self.send_error(400, f"Bad request version ({version[:40]!r})")
            return False
        if major >= 2:
            self.send_error(505, f"Invalid HTTP version ({version[5:40]}); this server speaks HTTP/1.1")
            return False
        self.command, self.path, self.request_version = command, path, version
        if self.path.startswith("//"):  # a client would read //x as a host (as the base class does)
            self.path = "/" + self.path.lstrip("/")
        fields, bad = [], []
        while True:
            raw = self.rfile.readline(MAX_HEADER_LINE + 1)
            if len(raw) > MAX_HEADER_LINE:
                self.send_error(431, "Line too long", f"a header line is over {MAX_HEADER_LINE} bytes")
                return False
            if raw in (b"\r\n", b"\n", b""):
                break
            if len(fields) >= MAX_HEADERS:
                self.send_error(431, "Too many headers", f"more than {MAX_HEADERS} header lines")
                return False
            text = raw.decode("iso-8859-1").rstrip("\r\n")
            name, colon, value = text.partition(":")
            if not colon or not name or name != name.strip():  # no colon, a folded line, space before it
                bad.append(text[:60])
            else:
                fields.append((name, value.strip(" \t")))
        if bad:
            self.send_error(400, f"malformed header lines: {'; '.join(map(repr, bad))[:200]}")
            return False
        self.headers = _Headers(fields)  # type: ignore[assignment]  (what the handler reads of a Message)
        if (major, minor) >= (1, 1):
            self.close_connection = False
        connection = self.headers.get("Connection", "").lower()
        if connection == "close":
            self.close_connection = True
        elif connection == "keep-alive":
            self.close_connection = False
        if self.headers.get("Expect", "").lower() == "100-continue" and (major, minor) >= (1, 1):
            return self.handle_expect_100()
        return True

    def handle_expect_100(self) -> bool:
        length = self._content_length()
        if length is None or self._body_refused(length):  # answered already (400, 411 or 413)
            return False
        if length > 0:
            self.send_response_only(100)
            self.end_headers()
        return True

    def _content_length(self) -> int | None:
        if self.headers.get("Transfer-Encoding"):
            self._json_error(411, "chunked request bodies are not read here; send the body with a Content-Length")
            return None
        raw = self.headers.get("Content-Length")
        if raw is None:
            return 0
        if not (raw.strip().isdigit() and raw.strip().isascii() and len(raw.strip()) <= 18):
            self._json_error(400, f"Content-Length {raw[:40]!r} is not a number of bytes")
            return None
        return int(raw)

    def _body_refused(self, length: int) -> bool:
        limit = self.server.owner.max_request_body
        if length > limit:
            self._json_error(413, f"body of {length} bytes is over the limit of {limit} bytes; send smaller batches")
            return True
        return False

    def _json_error(self, code: int, message: str) -> None:
        body = json.dumps({"error": message, "type": _REASONS.get(code, "HttpError").replace(" ", "")}).encode()
        self._answer(code, [("Content-Type", "application/json")], body, close=True)

    def _answer(self, code: int, headers: list[tuple[str, str]], body: bytes, *, close: bool = False) -> None:
        if close:
            self.close_connection = True
        reason = self.responses.get(code, ("Error",))[0]
        lines = [f"HTTP/1.1 {code} {reason}", "Server: lifelong"]
        lines += [f"{k}: {v}" for k, v in headers if k.lower() not in ("content-length", "connection")]
        lines.append(f"Content-Length: {len(body)}")
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head if self.command == "HEAD" else head + body)

    def _wsgi(self) -> None:
        """Any method: hand the request to the app (which answers 405 where it does not route it)."""
        length = self._content_length()
        if length is None or self._body_refused(length):
            return
        try:  # the whole body before the app runs: a slow sender holds its own thread, not an answering slot
            body = self.rfile.read(length) if length else b""
        except OSError:  # the socket's timeout, or a reset: nobody to answer
            self.close_connection = True
            return
        if len(body) < length:
            self.close_connection = True  # the client closed inside its body
            return
        path, _, query = self.path.partition("?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": self.command,
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(length),
            "SERVER_PROTOCOL": self.request_version,
            "SERVER_NAME": "localhost",
            "SERVER_PORT": "0",
            "REMOTE_ADDR": self.client_address[0] if self.client_address else "",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": _LogStream(),
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in self.headers.items():
            key = "HTTP_" + name.upper().replace("-", "_")
            if key not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                environ[key] = value
        started: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            started["status"], started["headers"] = status, headers

        owner = self.server.owner
        owner._busy(+1)
        try:
            with owner.answering:
                answer = b"".join(owner.app(environ, start_response))
            self._answer(int(started["status"].split(" ", 1)[0]), started["headers"], answer)
        finally:
            owner._busy(-1)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = _wsgi


MAX_HEADERS = 100
"""Header lines in one request (as ``http.client``); more are answered 431."""
MAX_HEADER_LINE = 65536
"""Bytes in one header line (as ``http.client``); longer is answered 431."""


def _version(text: str) -> tuple[int, int] | tuple[None, None]:
    """``HTTP/1.1`` -> (1, 1); anything that is not ``HTTP/`` and two short numbers -> (None, None)."""
    if not text.startswith("HTTP/"):
        return None, None
    parts = text[5:].split(".")
    if len(parts) != 2 or not all(p.isdigit() and p.isascii() and len(p) <= 10 for p in parts):
        return None, None
    return int(parts[0]), int(parts[1])


class _Headers:
    """A request's header fields by any case of their name; a repeated field's values are
    joined with ``", "`` (RFC 9110, 5.3)."""

    __slots__ = ("_joined",)

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        self._joined: dict[str, str] = {}
        for name, value in fields:
            key = name.lower()
            self._joined[key] = f"{self._joined[key]}, {value}" if key in self._joined else value

    def get(self, name: str, default: Any = None) -> Any:
        return self._joined.get(name.lower(), default)

    def items(self) -> list[tuple[str, str]]:
        """Each field once, its name lower-cased."""
        return list(self._joined.items())


class _LogStream:
    def write(self, text: str) -> None:
        logger.warning("%s", text.rstrip())

    def flush(self) -> None:
        pass


class _Listener(socketserver.ThreadingMixIn, socketserver.BaseServer):
    """One listening socket; each accepted connection gets a daemon thread."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, sock: socket.socket, owner: HttpServer) -> None:
        super().__init__(sock.getsockname(), _Handler)
        self.socket, self.owner = sock, owner

    def fileno(self) -> int:
        return self.socket.fileno()

    def get_request(self) -> tuple[socket.socket, Any]:
        return self.socket.accept()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        return self.owner.limits.admit(request)

    def shutdown_request(self, request: Any) -> None:
        try:
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        request.close()
        self.owner.limits.release(request)

    def close_request(self, request: Any) -> None:
        request.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("connection from %s ended with an error", client_address, exc_info=True)


class HttpServer:
    """Serves ``app`` on listening sockets, each in a thread, until :meth:`stop`.

    Args:
        app: The WSGI application.
        socks: Bound, listening sockets.
        limits: Connections per client and in all.
        threads: Requests answered at once.
        idle_timeout_s: Seconds a connection may be idle, or stall inside a request.
        max_request_body: Larger ``Content-Length`` is answered 413 unread.
        name: For the log.
    """

    def __init__(self, app: WsgiApp, socks: list[socket.socket], *, limits: ConnectionLimits, threads: int,
                 idle_timeout_s: float, max_request_body: int, name: str = "api") -> None:  # fmt: skip
        self.app, self.limits, self.name = app, limits, name
        self.idle_timeout_s, self.max_request_body = idle_timeout_s, max_request_body
        self.answering = threading.BoundedSemaphore(threads)
        self._listeners = [_Listener(sock, self) for sock in socks]
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._handlers: set[_Handler] = set()
        self.in_request = 0  # requests read and not yet answered

    def _busy(self, delta: int) -> None:
        with self._lock:
            self.in_request += delta

    def _opened(self, handler: _Handler) -> None:
        with self._lock:
            self._handlers.add(handler)

    def _closed(self, handler: _Handler) -> None:
        with self._lock:
            self._handlers.discard(handler)

    def start(self) -> None:
        for listener in self._listeners:
            t = threading.Thread(target=listener.serve_forever, kwargs={"poll_interval": 0.2},
                                 name=f"lifelong-{self.name}-accept", daemon=True)  # fmt: skip
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float) -> None:
        """Stop accepting, let requests in flight finish (up to ``timeout`` s), shut every
        connection, close the listeners."""
        deadline = time.monotonic() + timeout
        for listener in self._listeners:
            listener.shutdown()  # serve_forever returns within its poll interval
            listener.socket.close()
        while self.in_request and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._lock:
            handlers = list(self._handlers)
        for handler in handlers:  # idle ones wake from recv and end
            try:
                handler.request.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
