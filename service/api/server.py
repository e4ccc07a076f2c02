"""Serving the API app on its sockets: :class:`ApiSettings` and :class:`ApiServer`.

The server is :mod:`service.api.http_server` (a thread per connection, chosen by measurement
over waitress and cheroot; onnxruntime releases the GIL while a model runs, so concurrent
requests use several cores). :class:`ApiServer` binds the sockets itself: it removes a
stale socket file only when nobody answers on it (never a running daemon's path), and sets
the file mode before ``listen()`` so that no client ever connects through looser permissions.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from service.api.app import ApiApp
from service.api.conn_limits import ConnectionLimits
from service.api.http_server import HttpServer
from service.errors import AddressInUse

__all__ = ["ApiServer", "ApiSettings"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApiSettings:
    """Where and how the API listens.

    Attributes:
        socket_path: Unix socket to serve on (None: none).
        socket_mode: Its file mode; 0660 lets the service's group in and nobody else.
        tcp_port: Loopback TCP port to serve on as well (None: none; 0: any free port).
        tcp_host: Loopback address for ``tcp_port``; other addresses are refused.
        max_body_bytes: Larger request bodies are answered 413.
        max_upload_bytes: The largest body an added route may read (a model upload); the
            server refuses anything larger before reading it. None: ``max_body_bytes``.
        threads: Requests answered at once.
        idle_timeout_s: Connections idle this long are closed: keep-alive ones, and requests
            half-sent (headers, or ``Expect: 100-continue``, and then nothing).
        max_connections_per_peer: Open connections one client (a process on the Unix socket,
            an address on TCP) may hold; more are answered 503 (:mod:`service.api.conn_limits`).
        max_connections: Open connections in all; more are answered 503.
    """

    socket_path: Path | None = None
    socket_mode: int = 0o660
    tcp_port: int | None = None
    tcp_host: str = "127.0.0.1"
    max_body_bytes: int = 8 * 2**20
    max_upload_bytes: int | None = None
    threads: int = 4
    idle_timeout_s: int = 15
    max_connections_per_peer: int = 32
    max_connections: int = 512

    def __post_init__(self) -> None:
        if self.socket_path is None and self.tcp_port is None:
            raise ValueError("ApiSettings needs a socket_path or a tcp_port; both are None")
        if self.socket_path is not None and len(os.fsencode(self.socket_path)) > 100:
            raise ValueError(f"socket_path {self.socket_path} is too long for a Unix socket (at most 100 bytes)")
        if not 0 <= self.socket_mode <= 0o777:
            raise ValueError(f"socket_mode={oct(self.socket_mode)}; expected permission bits such as 0o660")
        if self.tcp_port is not None and not 0 <= self.tcp_port <= 65535:
            raise ValueError(f"tcp_port={self.tcp_port}; expected 0..65535")
        if self.tcp_host != "localhost" and not ipaddress.ip_address(self.tcp_host).is_loopback:
            raise ValueError(f"tcp_host={self.tcp_host!r}; the API listens on loopback only (127.0.0.1 or ::1)")
        if not 1 <= self.max_connections_per_peer <= self.max_connections:
            raise ValueError(
                f"max_connections_per_peer={self.max_connections_per_peer}, max_connections={self.max_connections}; "
                "expected 1 <= per peer <= in all"
            )
        for name in ("max_body_bytes", "max_upload_bytes", "threads", "idle_timeout_s"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"ApiSettings.{name}={getattr(self, name)!r}; expected >= 1")


class ApiServer:
    """Serves an :class:`ApiApp` on the configured sockets (:mod:`service.api.http_server`: a thread per
    connection, bounded per client and in all), in background threads."""

    def __init__(self, app: ApiApp, settings: ApiSettings) -> None:
        self.app, self.settings = app, settings
        self.tcp_address: tuple[str, int] | None = None
        self._server: HttpServer | None = None
        self._socket_inode: int | None = None
        self.limits = ConnectionLimits(settings.max_connections_per_peer, settings.max_connections)
        app.metric_sources.append(self._limits_metrics)

    def _limits_metrics(self) -> str:
        return (
            "# HELP lifelong_connections_refused_total Connections refused over a per-client or total limit.\n"
            "# TYPE lifelong_connections_refused_total counter\n"
            f"lifelong_connections_refused_total {self.limits.refused}\n"
        )

    def start(self) -> None:
        """Bind, then serve until :meth:`stop`.

        Raises:
            AddressInUse: the socket path or TCP port is served by another process.
        """
        if self._server is not None:
            raise RuntimeError(f"this server already serves {', '.join(self.addresses)}")
        s = self.settings
        socks = []
        try:
            if s.socket_path is not None:
                socks.append(self._bind_unix(Path(s.socket_path), s.socket_mode))
            if s.tcp_port is not None:
                try:
                    socks.append(socket.create_server((s.tcp_host, s.tcp_port)))
                except OSError as exc:
                    raise AddressInUse(f"cannot listen on {s.tcp_host}:{s.tcp_port}: {exc.strerror}") from exc
                self.tcp_address = socks[-1].getsockname()[:2]
        except BaseException:
            for sock in socks:
                sock.close()
            raise
        for sock in socks:
            sock.listen(128)
        self._server = HttpServer(
            self.app,
            socks,
            limits=self.limits,
            threads=s.threads,
            idle_timeout_s=s.idle_timeout_s,
            # the app answers bodies over max_body_bytes 413 itself; the server refuses, unread, what no route takes
            max_request_body=max(s.max_body_bytes, s.max_upload_bytes or 0),
            name="admin" if s.socket_mode == 0o600 else "api",
        )
        self._server.start()
        logger.info("API listening on %s", ", ".join(self.addresses))

    @property
    def addresses(self) -> list[str]:
        out = [f"unix:{self.settings.socket_path}"] if self.settings.socket_path else []
        return out + ([f"http://{self.tcp_address[0]}:{self.tcp_address[1]}"] if self.tcp_address else [])

    def _bind_unix(self, path: Path, mode: int) -> socket.socket:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.exists():
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise AddressInUse(f"{path} exists and is not a socket; move it away or choose another socket path")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.settimeout(2.0)
            try:
                probe.connect(str(path))
            except (ConnectionRefusedError, FileNotFoundError):
                logger.info("removing stale socket %s (nobody listens on it)", path)
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise AddressInUse(
                    f"socket {path} exists and cannot be probed ({exc}); is another daemon running?"
                ) from exc
            else:
                raise AddressInUse(f"another process serves {path}; stop it first or choose another socket path")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            os.chmod(path, mode)  # before listen(): no connection can arrive in between
        except OSError as exc:
            sock.close()
            raise AddressInUse(f"cannot bind {path}: {exc.strerror}") from exc
        self._socket_inode = os.stat(path).st_ino
        return sock

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, let requests in flight finish (up to ``timeout``), close everything."""
        if self._server is None:
            return
        self._server.stop(timeout)
        path = self.settings.socket_path
        if path is not None and self._socket_inode is not None:
            try:
                if os.stat(path).st_ino == self._socket_inode:  # still ours, not a successor's
                    os.unlink(path)
            except FileNotFoundError:
                pass
        self._server = None
        logger.info("API stopped")

    def __enter__(self) -> ApiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
