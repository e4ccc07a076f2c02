"""Random requests against the real daemon, on both its sockets: never a 5xx, never a hang.

A bounded, seeded generator (so a failure is reproduced by its seed and index) builds
requests from pieces that have broken HTTP servers and JSON APIs before: every method on
every route and on unknown ones, query strings with huge or odd numbers, every content type
with bodies of the wrong kind, truncated and corrupted ``.npy``/``.npz``/ONNX bytes, JSON
nested deeply or holding huge integers, NaN, wrong shapes and types, and ``Expect:
100-continue``. Each request goes on a fresh or a kept connection with a 5 s timeout; the
answer must come within it, with a status below 500 (503 "no model" excepted, which the
daemon does not reach here) and, except ``/metrics``, a JSON body with an ``error`` on a
4xx. After all of them the daemon answers health and predicts as before.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import random
import socket
import time

import numpy as np
import pytest
from daemon_harness import DaemonProcess, commit_model, remove, short_dir
from tiny_models import write_classifier

REQUESTS = int(os.environ.get("LIFELONG_FUZZ_REQUESTS", "10000"))
SEED = int(os.environ.get("LIFELONG_FUZZ_SEED", "0"))
ROUTES = ["/v1/predict", "/v1/feedback", "/v1/status", "/v1/health", "/metrics", "/v1/deploy", "/v1/rollback",
          "/v1/history", "/", "/v1", "/v1/predict/", "/v1/../v1/health", "/%00", "/v1/predict?x=1"]  # fmt: skip
METHODS = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "POST", "POST", "GET"]
TYPES = ["application/json", "application/x-npy", "application/x-npz", "application/octet-stream", "text/plain",
         "application/x-onnx", "", "multipart/form-data; boundary=x", "application/json; charset=latin-1"]  # fmt: skip


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=5)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(self.path)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _body(r: random.Random) -> bytes:
    kind = r.randrange(16)
    if kind == 0:
        return b""
    if kind == 1:
        return r.randbytes(r.randrange(1, 2000))
    if kind == 2:  # a valid image batch of a random shape and dtype
        shape = r.choice([(28, 28), (1, 28, 28), (2, 1, 28, 28), (3, 28), (0, 28, 28), (1, 1, 1, 28, 28), (784,)])
        dtype = r.choice([np.uint8, np.float32, np.float64, np.int64, np.bool_, np.complex64, np.float16])
        return _npy(np.ones(shape, dtype))
    if kind == 3:  # a .npy with its bytes cut or flipped
        b = bytearray(_npy(np.zeros((1, 28, 28), np.uint8)))
        if r.random() < 0.5:
            return bytes(b[: r.randrange(len(b))])
        for _ in range(r.randrange(1, 8)):
            b[r.randrange(len(b))] = r.randrange(256)
        return bytes(b)
    if kind == 4:
        depth = r.choice([10, 1000, 100_000])
        return b"[" * depth + b"]" * (depth if r.random() < 0.5 else 0)
    if kind == 5:
        return json.dumps({"inputs": r.choice([[], [[1]], "x", None, 1e308, [[0.5] * 784], {"a": 1}])}).encode()
    if kind == 6:
        return b'{"inputs": [[' + b"9" * r.choice([10, 5000]) + b"]]}"
    if kind == 7:
        return b'{"inputs": [NaN, Infinity, -Infinity]}'
    if kind == 8:
        labels = r.choice([[{"request_id": "x", "index": 0, "label": 3}], [{"request_id": 1}], [], "x",
                           [{"request_id": "a", "index": -1, "label": 99}], [{"request_id": "a", "index": 2**70}]])  # fmt: skip
        return json.dumps({"labels": labels}).encode()
    if kind == 9:
        return json.dumps({"inputs": [[0] * 784], "labels": r.choice([[3], [3, 4], [-1], ["a"], None])}).encode()
    if kind == 10:
        buf = io.BytesIO()
        np.savez(buf, **r.choice([{"x": np.zeros((2, 28, 28))}, {"x": np.zeros((2, 28, 28)), "y": np.array([1, 2])},
                                  {"y": np.array([1])}, {"x": np.zeros((1, 28, 28)), "y": np.array([1.5])}]))  # fmt: skip
        b = buf.getvalue()
        return b if r.random() < 0.7 else b[: r.randrange(len(b))]
    if kind == 11:  # admin bodies
        return json.dumps(r.choice([{"model": "0" * 16}, {"model": "../../etc"}, {"path": "/etc/shadow"},
                                    {"path": "relative.onnx"}, {"subnet": "c99.x"}, {"subnet": 5}, {"reason": "x" * 600},
                                    {"model": "0123456789abcdef", "reason": 3}, {}, []])).encode()  # fmt: skip
    if kind == 12:
        return b"\x08\x07\x12\x04" + r.randbytes(r.randrange(10, 500))  # protobuf-looking: a fake ONNX upload
    if kind == 13:
        return '{"inputs": "\udcff"}'.encode("utf-8", "surrogatepass")
    if kind == 14:
        return b'{"inputs": ' + b"[0," * 50_000 + b"0" + b"]" * 50_000 + b"}"
    return json.dumps(r.choice([{}, [], "x", 1, None, True])).encode()


def _query(r: random.Random) -> str:
    return r.choice(["", "", "?limit=5", "?limit=" + "9" * r.choice([3, 5000]), "?limit=-1", "?limit=%C2%B2",
                     "?labels=1,2", "?labels=a,b", "?name=x.onnx&reason=" + "r" * 1000, "?%ZZ", "?limit=1&limit=2"])  # fmt: skip


def _request(r: random.Random) -> tuple[str, str, bytes, dict[str, str]]:
    method, path = r.choice(METHODS), r.choice(ROUTES) + _query(r)
    body = _body(r) if method in ("POST", "PUT", "PATCH") or r.random() < 0.05 else b""
    headers = {}
    ctype = r.choice(TYPES)
    if ctype:
        headers["Content-Type"] = ctype
    if r.random() < 0.05:
        headers["Expect"] = "100-continue"
    if r.random() < 0.03:
        headers["X-Junk"] = "a" * r.choice([10, 5000])
    return method, path, body, headers


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    models = tmp_path_factory.mktemp("fuzz-models")
    run = short_dir()
    state = run / "state"
    commit_model(state, write_classifier(models / "a.onnx", favour_class=3, seed=3))
    d = DaemonProcess(state, run, args=("--probe-interval", "3600")).start()
    yield d
    d.close()
    remove(run)


@pytest.mark.slow
def test_random_requests_on_both_sockets_never_get_a_5xx_or_hang(daemon: DaemonProcess) -> None:
    r = random.Random(SEED)
    sockets = {"api": str(daemon.socket), "admin": str(daemon.admin_socket)}
    conns: dict[str, _Unix] = {}
    statuses: dict[int, int] = {}
    slowest = 0.0
    for i in range(REQUESTS):
        which = "admin" if r.random() < 0.2 else "api"
        method, path, body, headers = _request(r)
        if which not in conns or r.random() < 0.3:  # fresh connections and kept ones
            if which in conns:
                conns[which].close()
            conns[which] = _Unix(sockets[which])
        conn = conns[which]
        t0 = time.monotonic()
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            conn.close()
            del conns[which]
            continue  # the server closed after answering an error on this connection earlier: allowed
        except TimeoutError:
            pytest.fail(f"request {i} (seed {SEED}) hung over 5 s: {which} {method} {path} {headers} {body[:200]!r}")
        slowest = max(slowest, time.monotonic() - t0)
        status = response.status
        statuses[status] = statuses.get(status, 0) + 1
        what = f"request {i} (seed {SEED}): {which} {method} {path} {headers} {body[:120]!r} -> {status} {data[:300]!r}"
        assert status < 500, what
        if response.will_close:
            conn.close()
            del conns[which]
        if status >= 400 and method != "HEAD":
            assert "error" in json.loads(data), what
    print(f"\n{REQUESTS} requests; statuses {dict(sorted(statuses.items()))}; slowest {slowest:.2f} s")
    assert statuses.get(200, 0) > REQUESTS // 50 and sum(v for k, v in statuses.items() if k >= 400) > REQUESTS // 2
    with daemon.client() as c:
        assert c.health()["status"] == "ok"
        assert c.predict(np.zeros((2, 28, 28), np.uint8)).classes.tolist() == [3, 3]
