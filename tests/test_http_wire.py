"""The client's HTTP/1.1 reader (service/api/http_wire.py) against canned answers on a real socket."""

from __future__ import annotations

import socket
import threading

import pytest

from service.api.http_wire import Closed, Connection, ProtocolError


def _server(answers: list[bytes]) -> tuple[int, threading.Thread, list[bytes]]:
    """A loopback server that reads one request per answer and writes the answer; ``b""``
    closes the connection instead of answering."""
    listener = socket.create_server(("127.0.0.1", 0))
    got: list[bytes] = []

    def run() -> None:
        conn, _ = listener.accept()
        with conn:
            for answer in answers:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                got.append(data)
                if not answer:
                    return
                conn.sendall(answer)
        listener.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return listener.getsockname()[1], t, got


def test_reads_length_chunked_continue_and_head_answers_on_one_connection() -> None:
    port, t, got = _server([
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nTrailer: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n",  # an answer to HEAD: no body follows
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    ])  # fmt: skip
    c = Connection(port=port, timeout=5)
    r = c.request("GET", "/a")
    assert (r.status, r.body, r.headers["x-a"], r.will_close) == (200, b"hello", "b", False)
    r = c.request("POST", "/b", b"12345", {"Content-Type": "application/json"})
    assert (r.status, r.body) == (201, b"abcde")
    assert c.request("HEAD", "/c").body == b""
    r = c.request("GET", "/d")
    assert (r.status, r.body, r.will_close) == (404, b"{}", True)
    t.join(5)
    assert (
        got[1].startswith(b"POST /b HTTP/1.1\r\n") and b"Content-Length: 5\r\n" in got[1] and got[1].endswith(b"12345")
    )
    assert b"Content-Type: application/json" in got[1]


def test_a_body_to_the_close_a_close_before_the_answer_and_garbage() -> None:
    port, _, _ = _server([b"HTTP/1.0 200 OK\r\n\r\nall of it"])
    c = Connection(port=port, timeout=5)
    r = c.request("GET", "/")
    assert (r.status, r.body, r.will_close) == (200, b"all of it", True)
    port, _, _ = _server([b""])
    with pytest.raises(Closed):
        Connection(port=port, timeout=5).request("GET", "/")
    for answer, words in (
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP status line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "closed after 5 of 10"),
        (b"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n", "not a header line"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "not hexadecimal"),
    ):
        port, _, _ = _server([answer])  # then the server closes
        with pytest.raises(ProtocolError, match=words):
            Connection(port=port, timeout=5).request("GET", "/")
