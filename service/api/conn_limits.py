"""Connection limits of the API's listeners: per client and in total, refused with an answer.

Idle or half-sent connections cost the server a thread each (:mod:`service.api.http_server`)
and a file descriptor; a server that simply stops accepting at its limit (as waitress did:
99 idle connections from one misbehaving application made health time out for everyone)
lets one client stall all the others. :class:`ConnectionLimits` is asked before a
connection is served and knows who connects: on a Unix socket the peer's process
(``SO_PEERCRED``), on loopback TCP its address. A peer over ``per_peer`` open connections, or
any new connection over ``total``, is told ``503`` in the API's JSON error format (what it
exceeded and what to do) and closed, so every other client is still served. Idle and
half-sent connections are closed after the API's idle timeout by the server.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading

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


class ConnectionLimits:
    """At most ``per_peer`` open connections from one client, ``total`` from all (thread-safe)."""

    def __init__(self, per_peer: int = 32, total: int = 512) -> None:
        if not 1 <= per_peer <= total:
            raise ValueError(f"per_peer={per_peer}, total={total}; expected 1 <= per_peer <= total")
        self.per_peer, self.total = per_peer, total
        self.refused = 0
        self._lock = threading.Lock()
        self._open: dict[socket.socket, str] = {}
        self._by_peer: dict[str, int] = {}

    def admit(self, conn: socket.socket) -> bool:
        """Count ``conn`` in, or answer it 503 (and leave closing it to the caller): False."""
        peer = peer_of(conn)
        with self._lock:
            mine, total = self._by_peer.get(peer, 0), len(self._open)
            if mine < self.per_peer and total < self.total:
                self._open[conn] = peer
                self._by_peer[peer] = mine + 1
                return True
            self.refused += 1
            refused = self.refused
        if mine >= self.per_peer:
            message = (f"too many connections from this client ({mine} open, at most {self.per_peer}); "
                       "reuse one keep-alive connection or close idle ones")  # fmt: skip
        else:
            message = f"the service has {total} connections open, its limit; try again shortly"
        if refused == 1 or refused % 100 == 0:
            logger.warning("connection from %s refused (%d so far): %s", peer, refused, message)
        try:
            conn.settimeout(0.2)
            conn.sendall(_refusal(message))
        except OSError:
            pass
        return False

    def release(self, conn: socket.socket) -> None:
        """``conn`` closed (a refused one was never counted)."""
        with self._lock:
            peer = self._open.pop(conn, None)
            if peer is not None:
                left = self._by_peer[peer] - 1
                if left:
                    self._by_peer[peer] = left
                else:
                    del self._by_peer[peer]
