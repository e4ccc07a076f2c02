"""HTTP/1.1 on one kept connection, for the daemon's client: the request in one write, the
answer read with a minimal parser.

Why not ``http.client``: it parses every answer's headers with the ``email`` package and
reads through a buffered file object, which took about as long as the daemon's whole answer
to a batch-1 predict (side by side on one 2-core machine, keep-alive, tiny model: 0.58 ms a
predict through ``http.client`` against 0.33 ms for the same bytes on a raw socket).
The daemon's answers are simple (a status line, a few headers, a ``Content-Length`` body),
so the parser here reads exactly that, plus what any HTTP/1.1 server may send instead:
``100 Continue`` before the answer, a chunked body, or a body up to the close. Anything else
is a :class:`ProtocolError`.

Standard library only: applications import the client.
"""

from __future__ import annotations

import socket

__all__ = ["Closed", "Connection", "ProtocolError", "Response"]

MAX_HEAD = 64 * 1024


class ProtocolError(Exception):
    """The peer does not answer in HTTP/1.x as this parser reads it."""


class Closed(ConnectionError):
    """The peer closed the connection before any byte of the answer: a kept connection the
    server closed while idle (worth one fresh try), or a server that went away."""


class Response:
    """An answer: ``status``, lower-cased ``headers``, ``body`` and whether the server closes."""

    __slots__ = ("body", "headers", "status", "will_close")

    def __init__(self, status: int, headers: dict[str, str], body: bytes, will_close: bool) -> None:
        self.status, self.headers, self.body, self.will_close = status, headers, body, will_close


class Connection:
    """One connection to ``unix_path`` or ``(host, port)``, opened on first use."""

    def __init__(self, *, unix_path: str | None = None, host: str = "127.0.0.1", port: int | None = None,
                 timeout: float = 30.0) -> None:  # fmt: skip
        if (unix_path is None) == (port is None):
            raise ValueError("Connection needs exactly one of unix_path or port")
        self.unix_path, self.host, self.port, self.timeout = unix_path, host, port, timeout
        self.sock: socket.socket | None = None
        self._buf = b""

    def connect(self) -> None:
        if self.unix_path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.unix_path)
            except BaseException:
                sock.close()
                raise
        else:
            assert self.port is not None
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self._buf = sock, b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self._buf = b""

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Response:  # fmt: skip
        """Send one request and read its answer.

        Raises:
            Closed: the connection closed before the answer began.
            ProtocolError: the answer is not HTTP/1.x.
            OSError: the socket failed (timeout, refused, ...).
        """
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        host = "localhost" if self.unix_path is not None else f"{self.host}:{self.port}"
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body or b'')}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            self.sock.sendall(head + body if body else head)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may have answered early (413) and closed: read what it said
        while True:
            response = self._read_response(method)
            if not 100 <= response.status < 200:
                return response

    # -- reading ---------------------------------------------------------------------------------
    def _fill(self) -> bool:
        """Read more into the buffer; False at the end of the stream."""
        assert self.sock is not None
        try:
            chunk = self.sock.recv(262144)
        except ConnectionResetError:
            chunk = b""
        self._buf += chunk
        return bool(chunk)

    def _read_head(self) -> bytes:
        start = len(self._buf)
        while (end := self._buf.find(b"\r\n\r\n")) < 0:
            if len(self._buf) > MAX_HEAD:
                raise ProtocolError(f"answer headers over {MAX_HEAD} bytes")
            if not self._fill():
                if not self._buf and start == 0:
                    raise Closed("the connection closed before the answer began")
                raise ProtocolError(f"the connection closed inside the answer's headers: {self._buf[:200]!r}")
        head, self._buf = self._buf[:end], self._buf[end + 4 :]
        return head

    def _read_response(self, method: str) -> Response:
        head = self._read_head().decode("latin-1")
        status_line, _, rest = head.partition("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"not an HTTP status line: {status_line[:200]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in rest.split("\r\n") if rest else ():
            name, sep, value = line.partition(":")
            if not sep:
                raise ProtocolError(f"not a header line: {line[:200]!r}")
            headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        will_close = connection == "close" or (parts[0] == "HTTP/1.0" and connection != "keep-alive")
        if 100 <= status < 200 or status in (204, 304) or method == "HEAD":
            return Response(status, headers, b"", will_close)
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return Response(status, headers, self._read_chunked(), will_close)
        if "content-length" in headers:
            try:
                n = int(headers["content-length"])
            except ValueError:
                raise ProtocolError(f"Content-Length {headers['content-length']!r} is not a number") from None
            return Response(status, headers, self._read_exactly(n), will_close)
        while self._fill():  # no length: the body runs to the close
            pass
        body, self._buf = self._buf, b""
        return Response(status, headers, body, True)

    def _read_exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            if not self._fill():
                raise ProtocolError(f"the connection closed after {len(self._buf)} of {n} body bytes")
        body, self._buf = self._buf[:n], self._buf[n:]
        return body

    def _read_line(self) -> bytes:
        while (end := self._buf.find(b"\r\n")) < 0:
            if not self._fill():
                raise ProtocolError("the connection closed inside a chunked body")
        line, self._buf = self._buf[:end], self._buf[end + 2 :]
        return line

    def _read_chunked(self) -> bytes:
        parts = []
        while True:
            size_text = self._read_line().split(b";")[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProtocolError(f"chunk size {size_text[:20]!r} is not hexadecimal") from None
            if size == 0:
                while self._read_line():  # trailers, up to the blank line
                    pass
                return b"".join(parts)
            parts.append(self._read_exactly(size))
            self._read_exactly(2)  # the CRLF after the chunk
