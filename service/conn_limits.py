"""Connection limits of the API's listeners: per client and in total, refused with an answer.

Waitress reads requests on one event loop and answers them on a pool of threads, so idle or
half-sent connections cost no thread; what they cost is a slot of its connection limit. When
that limit is reached waitress stops calling ``accept()``, and every new client waits in the
kernel's backlog until some connection closes: 99 idle connections from one misbehaving
application were enough to make health time out for everyone else.

:class:`ConnectionLimits` replaces the listeners' accept with one that knows who connects:
on a Unix socket the peer's process (``SO_PEERCRED``), on loopback TCP its address. A peer
over ``per_peer`` open connections, or any new connection over ``total``, is accepted, told
``503`` in the API's JSON error format (what it exceeded and what to do), and closed, so the
listener never stops accepting and every other client is served. Waitress's own limit is set
above ``total`` so that it never triggers first. Idle and half-sent connections are closed
by waitress after the API's idle timeout (``channel_timeout``, checked every
``cleanup_interval``), which bounds a client that sends headers and then nothing, or
``Expect: 100-continue`` and no body.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
from dataclasses import dataclass
from typing import Any

__all__ = ["ConnectionLimits", "peer_of"]

logger = logging.getLogger(__name__)

_PEERCRED = struct.Struct("3i")  # pid, uid, gid


def peer_of(conn: socket.socket) -> str:
    """Who is at the other end: ``pid:N`` (uid) on a Unix socket, ``tcp:HOST`` on TCP."""
    if conn.family == socket.AF_UNIX:
        try:
            pid, uid, _ = _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
        except OSError:
            return "unix:unknown"
        return f"pid:{pid} uid:{uid}"
    try:
        return f"tcp:{conn.getpeername()[0]}"
    except OSError:
        return "tcp:unknown"


def _refusal(message: str) -> bytes:
    body = json.dumps({"error": message, "type": "TooManyConnections"}).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
        f"Retry-After: 1\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class ConnectionLimits:
    """At most ``per_peer`` open connections from one client, ``total`` from all."""

    per_peer: int = 32
    total: int = 512
    refused: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.per_peer <= self.total:
            raise ValueError(f"per_peer={self.per_peer}, total={self.total}; expected 1 <= per_peer <= total")

    def install(self, server: Any) -> None:
        """Make ``server`` (a waitress listener) accept through :meth:`accept`."""
        server.handle_accept = lambda: self.accept(server)

    def accept(self, server: Any) -> None:
        """Waitress's ``handle_accept``, with the limits checked before a channel is made."""
        try:
            pair = server.accept()
            if pair is None:
                return
            conn, addr = pair
            server.set_socket_options(conn)
        except OSError:  # the client left before accept() returned: nothing to serve
            return
        peer = peer_of(conn)
        channels = list(server._map.values())  # the loop's map, shared by every listener
        mine = sum(1 for ch in channels if getattr(ch, "lifelong_peer", None) == peer)
        open_ = sum(1 for ch in channels if hasattr(ch, "lifelong_peer"))
        if mine >= self.per_peer:
            self._refuse(conn, peer, f"too many connections from this client ({mine} open, at most "
                         f"{self.per_peer}); reuse one keep-alive connection or close idle ones")  # fmt: skip
            return
        if open_ >= self.total:
            self._refuse(conn, peer, f"the service has {open_} connections open, its limit; try again shortly")
            return
        channel = server.channel_class(server, conn, server.fix_addr(addr), server.adj, map=server._map)
        channel.lifelong_peer = peer

    def _refuse(self, conn: socket.socket, peer: str, message: str) -> None:
        self.refused += 1
        if self.refused == 1 or self.refused % 100 == 0:
            logger.warning("connection from %s refused (%d so far): %s", peer, self.refused, message)
        try:
            conn.settimeout(0.2)
            conn.sendall(_refusal(message))
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            conn.close()
