"""The local API and its client, over real sockets, the real server and real onnxruntime sessions."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from tiny_models import write_classifier, write_corrupt

from service.api.app import ApiApp, MemoryFeedback
from service.api.client import Client
from service.api.server import ApiServer, ApiSettings
from service.errors import (
    AddressInUse,
    DaemonUnreachable,
    ModelLoadError,
    NoModelError,
    PayloadTooLarge,
    RecordNotFound,
    RequestError,
)
from service.serving.ort_runtime import OrtRuntime
from service.serving.runtime import MemoryRuntime, RuntimeSettings

FAVOUR = {"a": 3, "b": 7, "c": 5}
MAX_BODY = 256 * 1024
rng = np.random.default_rng(0)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    out = {k: write_classifier(d / f"{k}.onnx", favour_class=v, seed=v) for k, v in FAVOUR.items()}
    out["corrupt"] = write_corrupt(d / "corrupt.onnx")
    out["wrong_signature"] = write_classifier(d / "wrong.onnx", broken="wrong_input_shape")
    # Slow to validate (a chain of 150 MatMuls per run) and then refused: its outputs hold NaN.
    out["slow_nan"] = write_classifier(d / "slow_nan.onnx", broken="nan", slow_matmuls=150)
    return out


@pytest.fixture
def sock_dir():
    d = tempfile.mkdtemp(prefix="llapi", dir="/tmp")  # short: Unix socket paths have ~100 bytes
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def _serve(runtime, sock_dir: Path, **kw) -> tuple[ApiServer, MemoryFeedback]:
    feedback = MemoryFeedback()
    app = ApiApp(runtime, feedback, lambda: {"daemon": "test"}, max_body_bytes=MAX_BODY)
    return ApiServer(app, ApiSettings(socket_path=sock_dir / "api.sock", max_body_bytes=MAX_BODY, **kw)), feedback


@pytest.fixture
def served(models: dict, sock_dir: Path):
    runtime = OrtRuntime(RuntimeSettings(warmup_runs=1, max_batch=4))
    runtime.swap("a", models["a"])
    server, feedback = _serve(runtime, sock_dir, tcp_port=0)
    server.start()
    with Client(sock_dir / "api.sock", timeout=20) as client:
        yield server, runtime, feedback, client
    server.stop()


def _images(n: int = 2) -> np.ndarray:
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)


def test_predict_round_trip_over_unix_socket_and_tcp(served) -> None:
    server, _, _, client = served
    answer = client.predict(_images(3))
    assert answer.model == "a" and answer.classes.tolist() == [3, 3, 3]
    assert answer.probabilities.shape == (3, 10)
    np.testing.assert_allclose(answer.probabilities.sum(axis=1), 1.0, atol=1e-5)
    host, port = server.tcp_address
    assert host == "127.0.0.1" and port > 0
    with Client(host=host, port=port) as tcp:
        assert tcp.predict(_images(1)[0]).classes.tolist() == [3]
        assert tcp.health() == {"status": "ok", "model": "a"}


def test_json_inputs_in_pixels_or_fractions(served) -> None:
    _, _, _, client = served
    for inputs in (np.full((2, 28, 28), 200).tolist(), np.full((1, 1, 28, 28), 0.5).tolist()):
        status, body = client.request(
            "POST", "/v1/predict", json.dumps({"inputs": inputs}).encode(), "application/json"
        )
        doc = json.loads(body)
        assert status == 200 and doc["model"] == "a" and set(doc["classes"]) == {3}
        assert len(doc["request_id"]) == 32


def test_socket_file_is_a_socket_with_mode_0660(served, sock_dir: Path) -> None:
    st = os.stat(sock_dir / "api.sock")
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660


def test_stale_socket_is_replaced_but_a_live_one_is_not(served, sock_dir: Path) -> None:
    server, runtime, _, client = served
    with pytest.raises(AddressInUse, match="another process serves"):
        ApiServer(server.app, ApiSettings(socket_path=sock_dir / "api.sock")).start()
    assert client.predict(_images(1)).model == "a"  # the running server was left alone
    (sock_dir / "file").write_text("not a socket")
    with pytest.raises(AddressInUse, match="exists and is not a socket"):
        ApiServer(server.app, ApiSettings(socket_path=sock_dir / "file")).start()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock_dir / "stale.sock"))  # bound, never listened, closed: what a crash leaves
    stale.close()
    with pytest.raises(DaemonUnreachable, match="nothing listens"):
        Client(sock_dir / "stale.sock").health()
    second = ApiServer(server.app, ApiSettings(socket_path=sock_dir / "stale.sock"))
    with second:
        assert Client(sock_dir / "stale.sock").health()["model"] == "a"
    assert not (sock_dir / "stale.sock").exists()  # removed on stop


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


NPY, JSON = "application/x-npy", "application/json"
BAD_REQUESTS = [
    ("shape", "POST", "/v1/predict", _npy(np.zeros((2, 27, 27), np.uint8)), NPY, 400, r"input shape \(2, 27, 27\)"),
    ("dtype", "POST", "/v1/predict", _npy(np.full((28, 28), "a")), NPY, 400, "dtype <U1 is not supported"),
    ("nan", "POST", "/v1/predict", _npy(np.full((28, 28), np.nan, np.float32)), NPY, 400, "NaN or infinite"),
    ("inf", "POST", "/v1/predict", _npy(np.full((1, 28, 28), np.inf)), NPY, 400, "NaN or infinite"),
    ("range", "POST", "/v1/predict", _npy(np.full((28, 28), 2.0)), NPY, 400, r"expected \[0, 1\]"),
    ("garbage_npy", "POST", "/v1/predict", b"\x00garbage" * 10, NPY, 400, "not a .npy file"),
    ("truncated_npy", "POST", "/v1/predict", _npy(np.zeros((4, 28, 28)))[:300], NPY, 400, "not a readable .npy"),
    ("pickle_npy", "POST", "/v1/predict", _npy(np.array([{"a": 1}], dtype=object)), NPY, 400, "not a readable .npy"),
    ("bad_json", "POST", "/v1/predict", b"{inputs: oops", JSON, 400, "not valid JSON"),
    ("ragged_json", "POST", "/v1/predict", b'{"inputs": [[1, 2], [3]]}', JSON, 400, "not a rectangular array"),
    ("json_no_inputs", "POST", "/v1/predict", b'{"images": []}', JSON, 400, r'\{"inputs"'),
    ("json_deep", "POST", "/v1/predict", b'{"inputs": ' + b"[" * 100_000, JSON, 400, "nested too deeply"),
    ("json_huge_int", "POST", "/v1/predict", b'{"inputs": [1' + b"0" * 5000 + b"]}", JSON, 400, "4300 digits"),
    (
        "json_nan",
        "POST",
        "/v1/predict",
        json.dumps({"inputs": np.full((28, 28), np.nan).tolist()}).encode(),
        JSON,
        400,
        "NaN",
    ),
    ("empty", "POST", "/v1/predict", b"", NPY, 400, "empty body"),
    ("media_type", "POST", "/v1/predict", b"1,2,3", "text/csv", 415, "Content-Type 'text/csv' is not read here"),
    ("oversize", "POST", "/v1/predict", _npy(np.zeros((400, 28, 28), np.uint8)), NPY, 413, "over the limit of 262144"),
    ("route", "GET", "/v2/predict", None, None, 404, "no route '/v2/predict'"),
    ("method", "GET", "/v1/predict", None, None, 405, "GET is not allowed on /v1/predict; use POST"),
    ("method_status", "DELETE", "/v1/status", None, None, 405, "use GET"),
    ("feedback_label", "POST", "/v1/feedback", b'{"labels": [{"request_id": "x", "label": 12}]}', JSON, 400, r"0\.\.9"),
    (
        "feedback_unknown",
        "POST",
        "/v1/feedback",
        b'{"labels": [{"request_id": "x", "label": 1}]}',
        JSON,
        404,
        "no prediction 'x'",
    ),
    (
        "feedback_count",
        "POST",
        "/v1/feedback?labels=1,2",
        _npy(np.zeros((3, 28, 28))),
        NPY,
        400,
        "3 images but 2 labels",
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "ctype", "status", "match"),
    [r[1:] for r in BAD_REQUESTS],
    ids=[r[0] for r in BAD_REQUESTS],
)
def test_bad_requests_get_a_4xx_naming_the_problem_and_serving_goes_on(
    served, method, path, body, ctype, status, match
) -> None:
    _, _, _, client = served
    got, data = client.request(method, path, body, ctype)
    assert got == status, data
    error = json.loads(data)["error"]
    assert re.search(match, error), error
    assert client.predict(_images(1)).model == "a"


def test_client_raises_the_server_message_as_the_matching_error(served) -> None:
    _, _, _, client = served
    with pytest.raises(RequestError, match=r"input shape \(3, 3\)"):
        client.predict(np.zeros((3, 3), np.uint8))
    with pytest.raises(PayloadTooLarge, match="over the limit"):
        client.predict(np.zeros((400, 28, 28), np.uint8))
    with pytest.raises(RecordNotFound, match="no prediction 'nope'"):
        client.feedback(labels=[("nope", 0, 1)])


def test_a_body_far_over_the_limit_is_refused_on_both_transports(served) -> None:
    server, _, _, unix = served
    with Client(port=server.tcp_address[1]) as tcp:
        for client in (unix, tcp):
            # the server refuses a body over the largest any route reads before reading it, in JSON
            with pytest.raises(PayloadTooLarge, match="body of 1568128 bytes is over the limit of 262144 bytes"):
                client.predict(np.zeros((2000, 28, 28), np.uint8))
            assert client.predict(_images(1)).model == "a"


def test_settings_refuse_what_cannot_work() -> None:
    with pytest.raises(ValueError, match="needs a socket_path or a tcp_port"):
        ApiSettings()
    with pytest.raises(ValueError, match="loopback only"):
        ApiSettings(tcp_port=8080, tcp_host="0.0.0.0")
    with pytest.raises(ValueError, match="too long for a Unix socket"):
        ApiSettings(socket_path=Path("/tmp") / ("x" * 120))
    with pytest.raises(ValueError, match="exactly one of socket_path or port"):
        Client()


def test_health_status_and_metrics(served) -> None:
    _, runtime, _, client = served
    client.predict(_images(2))
    client.request("GET", "/nowhere")
    assert client.health() == {"status": "ok", "model": "a"}
    status = client.status()
    assert status["model"] == "a" and status["daemon"] == "test"
    assert status["runtime"]["samples"] >= 2 and status["runtime"]["model_metadata"]["lifelong.subnet"] == "tiny_mlp"
    text = client.metrics()
    assert 'lifelong_requests_total{endpoint="/v1/predict",status="200"} 1' in text
    assert 'lifelong_requests_total{endpoint="other",status="404"} 1' in text
    assert 'lifelong_request_seconds_bucket{endpoint="/v1/predict",le="+Inf"} 1' in text
    assert 'lifelong_model_info{model="a",subnet="tiny_mlp"} 1' in text
    assert "lifelong_model_swaps_total 1" in text and "# TYPE lifelong_request_seconds histogram" in text


def test_without_a_model_health_is_503_and_predict_says_why(sock_dir: Path) -> None:
    server, _ = _serve(OrtRuntime(), sock_dir)
    with server, Client(sock_dir / "api.sock") as client:
        assert client.request("GET", "/v1/health")[0] == 503
        with pytest.raises(NoModelError, match="no model is deployed"):
            client.health()
        with pytest.raises(NoModelError, match="no model is deployed"):
            client.predict(_images(1))


def test_feedback_labels_earlier_predictions_and_takes_new_samples(served) -> None:
    _, _, feedback, client = served
    answer = client.predict(_images(3))
    assert client.feedback(labels=[(answer.request_id, 2, 5), {"request_id": answer.request_id, "label": 0}]) == 2
    assert [(label, predicted, model) for _, label, predicted, model in feedback.labelled] == [(5, 3, "a"), (0, 3, "a")]
    assert client.feedback(labels=[1, 2, 3, 4], images=_images(4)) == 4
    status, data = client.request("POST", "/v1/feedback?labels=9", _npy(_images(1)), NPY)
    assert (status, json.loads(data)) == (200, {"accepted": 1})
    body = json.dumps({"inputs": np.zeros((2, 28, 28)).tolist(), "labels": [0, 1]}).encode()
    assert client.request("POST", "/v1/feedback", body, JSON)[0] == 200
    assert [len(x) for x, _ in feedback.samples] == [4, 1, 2] and feedback.samples[1][1].tolist() == [9]


def test_an_internal_error_is_a_500_and_the_server_serves_on(sock_dir: Path) -> None:
    def fn(x):
        if len(x) == 5:
            raise RuntimeError("kernel exploded")
        return np.ones((len(x), 4), np.float32), np.ones((len(x), 2), np.float32)

    runtime = MemoryRuntime({"m": fn})
    runtime.swap("m", None)
    server, _ = _serve(runtime, sock_dir)
    with server, Client(sock_dir / "api.sock") as client:
        status, data = client.request("POST", "/v1/predict", _npy(_images(5)), NPY)
        error = json.loads(data)["error"]
        # the client learns that it failed, the journal why: exception texts can name internals
        assert status == 500 and "internal error" in error and "kernel exploded" not in error
        assert client.predict(_images(2)).model == "m"


def test_stop_lets_requests_in_flight_finish(sock_dir: Path) -> None:
    entered = threading.Event()

    def slow(x):
        if len(x) == 5:
            entered.set()
            time.sleep(0.5)
        return np.ones((len(x), 4), np.float32), np.ones((len(x), 2), np.float32)

    runtime = MemoryRuntime({"m": slow})
    runtime.swap("m", None)
    server, _ = _serve(runtime, sock_dir)
    server.start()
    result = {}
    t = threading.Thread(target=lambda: result.update(answer=Client(sock_dir / "api.sock").predict(_images(5))))
    t.start()
    assert entered.wait(10)
    server.stop()
    t.join(10)
    assert result["answer"].model == "m" and len(result["answer"].classes) == 5
    assert not (sock_dir / "api.sock").exists()
    with pytest.raises(DaemonUnreachable, match="no daemon socket"):
        Client(sock_dir / "api.sock").health()


def test_client_explains_an_absent_daemon(sock_dir: Path) -> None:
    with pytest.raises(DaemonUnreachable, match="no daemon socket at .*missing.sock: is the lifelong service running"):
        Client(sock_dir / "missing.sock").status()
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    with pytest.raises(DaemonUnreachable, match=f"nothing listens at http://127.0.0.1:{port}"):
        Client(port=port).health()


def test_hot_swap_under_load_loses_no_request(served, models: dict) -> None:
    """8 clients predict without pause while 50 swaps (and some refused loads) happen."""
    _, runtime, _, _ = served
    stop, results, failures = threading.Event(), [], []
    sock = served[0].settings.socket_path

    def client_loop(i: int) -> None:
        with Client(sock, timeout=30) as client:
            n = 10 if i % 2 else 1  # odd threads send batches split into chunks of max_batch=4
            while not stop.is_set():
                try:
                    answer = client.predict(_images(n))
                    results.append((answer.model, answer.classes.tolist()))
                except Exception as exc:  # every failure is a test failure, counted below
                    failures.append(repr(exc))

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(8)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    refused = 0
    for i in range(50):
        name = "bca"[i % 3]
        runtime.swap(f"{name}.{i}", models[name])
        if i % 10 == 5:  # a broken candidate in the middle of the traffic
            with pytest.raises(ModelLoadError):
                runtime.swap(f"bad.{i}", models["corrupt" if i % 20 == 5 else "wrong_signature"])
            refused += 1
        time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join(30)
    elapsed = time.perf_counter() - start
    assert failures == []
    assert len(results) > 100
    models_seen = {model.split(".")[0] for model, _ in results}
    assert models_seen == {"a", "b", "c"}
    for model, classes in results:  # the named model really produced the answer
        assert set(classes) == {FAVOUR[model.split(".")[0]]}, (model, classes)
    stats = runtime.stats()
    assert (stats.swaps, stats.failed_swaps, stats.draining) == (51, refused, 0)
    print(f"hot swap: {len(results)} requests in {elapsed:.1f}s with 50 swaps, {len(models_seen)} models answered")


def test_old_model_answers_while_a_slow_candidate_loads_and_after_it_fails(served, models: dict) -> None:
    _, runtime, _, client = served
    outcome = {}

    def load() -> None:
        try:
            runtime.swap("slow_nan", models["slow_nan"])
        except ModelLoadError as exc:
            outcome["error"] = str(exc)

    loader = threading.Thread(target=load)
    loader.start()
    during = []
    while loader.is_alive():
        loading = runtime.stats().loading_id
        answer = client.predict(_images(1))
        if loading == "slow_nan" and runtime.stats().loading_id == "slow_nan":
            during.append((answer.model, answer.classes.tolist()))
    loader.join()
    assert "NaN/inf" in outcome["error"]
    assert len(during) >= 3, "the candidate loaded too fast to observe; lengthen its MatMul chain"
    assert all(d == ("a", [3]) for d in during), during
    assert client.health() == {"status": "ok", "model": "a"}
    assert client.predict(_images(1)).classes.tolist() == [3]


@pytest.mark.benchmark
def test_measure_latency_and_throughput(served) -> None:
    """Batch-1 latency over the Unix socket and 8-thread throughput (run with -m benchmark -s)."""
    _, _, _, client = served
    x = _images(1)
    for _ in range(50):
        client.predict(x)
    lat = []
    for _ in range(500):
        t = time.perf_counter()
        client.predict(x)
        lat.append((time.perf_counter() - t) * 1e3)
    done, stop = [], threading.Event()

    def loop() -> None:
        with Client(served[0].settings.socket_path) as c:
            while not stop.is_set():
                c.predict(x)
                done.append(1)

    threads = [threading.Thread(target=loop) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(5)
    stop.set()
    for t in threads:
        t.join()
    p50, p95 = np.percentile(lat, [50, 95])
    print(
        f"\nbatch-1 latency over the socket: p50 {p50:.2f} ms, p95 {p95:.2f} ms; 8 threads: {len(done) / 5:.0f} req/s"
    )
    assert p50 < 50


def test_npy_bodies_read_by_the_fast_path_equal_np_load_and_others_fall_back() -> None:
    from service.api.bodies import _npy_fast
    from service.api.bodies import read_npy as _npy

    def body(a: np.ndarray) -> bytes:
        buf = io.BytesIO()
        np.save(buf, a, allow_pickle=False)
        return buf.getvalue()

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (32, 28, 28), dtype=np.uint8), rng.random((3, 1, 28, 28), dtype=np.float32),
              np.arange(5), np.array(3.0), np.zeros((0, 28, 28), np.uint8), np.zeros((2, 3), ">f8")]  # fmt: skip
    for a in arrays:
        fast = _npy_fast(body(a))
        assert fast is not None and fast.dtype == a.dtype and fast.shape == a.shape and np.array_equal(fast, a)
    fortran = body(np.asfortranarray(np.ones((3, 4))))
    assert _npy_fast(fortran) is None and np.array_equal(_npy(fortran), np.ones((3, 4))), "np.load reads it"
    truncated = body(np.zeros((2, 28, 28), np.uint8))[:-5]
    assert _npy_fast(truncated) is None
    with pytest.raises(RequestError, match="not a readable .npy array"):
        _npy(truncated)
    assert _npy_fast(body(np.array(["a", "b"]))) is None, "only plain numbers take the fast path"


HOG = r"""
import socket, sys, time
path, n = sys.argv[1], int(sys.argv[2])
held, answers = [], []
for i in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    try:  # a connection over the limit may be answered and closed before this is sent
        if i % 3 == 1:  # half-sent: headers, then nothing
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 4000\r\n\r\nab")
        elif i % 3 == 2:  # Expect: 100-continue, and no body ever
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4000\r\n\r\n")
    except BrokenPipeError:
        pass
    held.append(s)
time.sleep(0.5)
refused = 0
for s in held:
    s.settimeout(0.01)
    try:
        data = s.recv(4096)
    except (TimeoutError, OSError):
        continue
    refused += b" 503 " in data and b"too many connections from this client" in data
print(refused, flush=True)
sys.stdin.read()  # hold the connections until told
"""


def test_one_client_holding_200_idle_or_half_sent_connections_does_not_stall_the_others(served, sock_dir) -> None:
    import subprocess
    import sys

    server, _, _, client = served
    path = str(sock_dir / "api.sock")
    hog = subprocess.Popen([sys.executable, "-c", HOG, path, "200"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)  # fmt: skip
    try:
        line = hog.stdout.readline()
        assert line.strip(), f"the hogging client failed: {hog.stderr.read().decode()[-2000:]}"
        refused = int(line)
        per_peer = server.settings.max_connections_per_peer
        assert refused == 200 - per_peer  # over its limit each one is answered 503 at once, none hangs
        took = []
        for _ in range(20):
            t0 = time.perf_counter()
            assert client.health()["model"] == "a"
            assert client.predict(_images(1)).model == "a"
            took.append(time.perf_counter() - t0)
        assert np.median(took) < 0.05 and max(took) < 0.5, took
        assert f"lifelong_connections_refused_total {refused}" in client.metrics()
    finally:
        hog.communicate(b"", timeout=10)


@pytest.mark.slow
def test_a_half_sent_request_is_closed_after_the_idle_timeout(models, sock_dir) -> None:
    runtime = OrtRuntime(RuntimeSettings(warmup_runs=1, max_batch=4))
    runtime.swap("a", models["a"])
    server, _ = _serve(runtime, sock_dir, idle_timeout_s=2)
    with server:
        for request in (
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 100\r\n\r\n",
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc",
            b"GET /v1/health HTTP/1.1\r\nHost: x\r\n",  # headers never end
        ):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(str(sock_dir / "api.sock"))
            t0 = time.monotonic()
            s.sendall(request)
            got = b""
            while chunk := s.recv(4096):  # b"" once the server closes
                got += chunk
            waited = time.monotonic() - t0
            s.close()
            assert 1.5 < waited < 6, (request, waited, got)
            assert b" 200 " not in got and b" 500 " not in got, got


def _raw(path: Path, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP request on a fresh connection: status, headers, body."""
    import http.client

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(path))
    try:
        s.sendall(request)
    except BrokenPipeError:
        pass  # answered and closed before all was sent: read the answer
    response = http.client.HTTPResponse(s)
    response.begin()
    body = response.read()
    s.close()
    return response.status, dict(response.getheaders()), body


def test_what_the_server_refuses_itself_is_answered_in_the_json_error_format(served, sock_dir) -> None:
    path = sock_dir / "api.sock"
    big = 700 * 1024  # refused by the server before it reads the body
    cases = [
        (
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % big + b"\0" * big,
            413,
            "over the limit",
        ),
        (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400, "Content-Length"),
        (b"GET /v1/health HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n", 400, "malformed header"),
    ]
    for request, want, words in cases:
        status, headers, body = _raw(path, request)
        assert status == want, (request[:60], status, body)
        assert headers["Content-Type"] == "application/json", body
        assert words.lower() in json.loads(body)["error"].lower(), body
    assert served[3].health()["model"] == "a"


def test_expect_100_continue_on_a_request_without_a_body_is_answered_at_once(served, sock_dir) -> None:
    path = sock_dir / "api.sock"
    for request, want in (
        (b"GET /v1/health HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n", 200),
        (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n", 400),
    ):
        t0 = time.monotonic()
        status, _, body = _raw(path, request)  # a server must not answer "100 Continue" and then nothing
        assert status == want and time.monotonic() - t0 < 1.0, (request, status, body)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # with a body: 100 Continue first, then the answer
    s.settimeout(5)
    s.connect(str(path))
    payload = json.dumps({"inputs": [[[0] * 28] * 28]}).encode()
    s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
              b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(payload))  # fmt: skip
    assert s.recv(100).startswith(b"HTTP/1.1 100 Continue")
    s.sendall(payload)
    got = b""
    while chunk := s.recv(65536):
        got += chunk
    s.close()
    assert got.startswith(b"HTTP/1.1 200 OK") and b'"classes": [3]' in got, got[:300]


def test_head_is_answered_with_headers_only_and_the_connection_stays_usable(served) -> None:
    _, _, _, client = served
    for path, want in (("/v1/health", 200), ("/", 404), ("/v1/predict", 405)):
        status, body = client.request("HEAD", path)  # the same kept connection for all of them
        assert (status, body) == (want, b""), path
    assert client.health()["model"] == "a"  # a body sent to HEAD would have been read as this answer


@pytest.mark.filterwarnings("ignore")
def test_corrupt_npy_and_npz_bodies_are_request_errors_whatever_numpy_raises() -> None:
    """np.load raises ValueError, SyntaxError, TokenError, TypeError... on a corrupt header."""
    import random

    from service.api.bodies import read_npy as _npy
    from service.api.bodies import read_npz as _npz

    npy, npz = io.BytesIO(), io.BytesIO()
    np.save(npy, np.zeros((1, 28, 28), np.uint8))
    np.savez(npz, x=np.zeros((2, 28, 28)), y=np.array([1, 2]))
    r = random.Random(0)
    for parse, base in ((_npy, npy.getvalue()), (_npz, npz.getvalue())):
        for _ in range(3000):
            b = bytearray(base)
            for _ in range(r.randrange(1, 8)):
                b[r.randrange(min(len(b), 400))] = r.randrange(256)
            if r.random() < 0.3:
                b = b[: r.randrange(len(b))]
            try:
                parse(bytes(b))
            except RequestError:
                pass


def test_expect_100_continue_over_the_body_limit_gets_one_413_and_no_continue(served, sock_dir) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(sock_dir / "api.sock"))
    s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 99999999\r\n\r\n")
    got = b""
    while chunk := s.recv(65536):  # the server answers and closes
        got += chunk
    s.close()
    assert got.count(b"HTTP/1.1 ") == 1 and got.startswith(b"HTTP/1.1 413 "), got
    assert b"over the limit" in got
