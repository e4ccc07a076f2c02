"""Benchmark: serving through the daemon against raw onnxruntime, p99 during swaps, idle memory.

    .venv/bin/python benchmarks/serve.py                    # ~3 min
    .venv/bin/python benchmarks/serve.py --quick            # < 1 min, same code path
    .venv/bin/python benchmarks/serve.py --model fp32.onnx --model w8a8.onnx   # real exports
    .venv/bin/python benchmarks/serve.py --profile STATE/profile/device.json   # + predicted vs live latency

Writes ``benchmarks/results/serve.json`` (``serve-quick.json`` with ``--quick``).

The models, by default: the largest subnet of the search space at FP32 and at W8A8, built
with the exporter's graph builder and random weights (latency does not depend on the
weights; no torch, no trained supernet needed). ``--model FILE`` measures exported ONNX
files instead. The swap partner of the first model is the same architecture with other
weights (for a file: the same file with one more metadata key), so the swap test changes
the model, not the work per request.

The daemon runs as a real subprocess (``python -m service.cli.main serve``, its own state
directory, a Unix socket, 2 onnxruntime threads, 4 API threads, the latency probe pushed
out of the way, and a policy whose rollback thresholds are out of reach: the benchmark
swaps models of different speeds on purpose, and every leg checks that the model it
measures is the one answering). Requests go through :class:`service.api.client.Client`: one
keep-alive connection per client, reused for every request (the JSON says how many
connections the clients opened). The API is sent what an application sends: uint8 pixels
``(N, 28, 28)`` as ``.npy``; raw onnxruntime gets the float32 ``(N, 1, 28, 28)`` its
graph takes.

1. **Overhead**, one client, batch 32 and 1, for each model: four legs measured in
   alternating blocks so that all see the same load: ``api`` (request and answer through
   the daemon), ``wsgi`` (the daemon's API app called in this process, with the client's
   encoding and decoding: the API less HTTP and the socket), ``runtime``
   (:class:`service.serving.ort_runtime.OrtRuntime` in this process: input conversion, session run,
   softmax, checks) and ``raw`` (``session.run`` of a session
   opened with the runtime's own options: threads capped, spinning off). The daemon's own
   ``latency_ms`` (its session time) is kept too, and a ``GET /v1/health`` round trip gives
   the floor of one request, so the API's cost splits into model time, the app's work
   (``.npy`` parsing, input checks, JSON both ways) and HTTP (the socket, framing,
   the server's thread and its limits).
2. **Concurrency**: throughput with 1, 2, 4 and 8 clients (threads, a Client each) against
   the same number of threads running one shared raw session, in alternating blocks.
3. **Swaps** (200 at batch 1, then 50 at batch 32, where each deploy's validation and
   warm-up on the largest model take about 2.7 s): one client predicts without pause while the benchmark deploys
   the two models alternately (``/v1/deploy`` of a registered id: validation, warm-up,
   the swap, the registry commit); each swap segment is followed by a steady segment of
   the same length. Compares the p99 of requests started in each, counts failed requests
   and answers that name neither of the two models.
4. **A client hogging connections**: another process holds 200 connections, half idle and
   half with a request sent in part; a fresh client's health checks and batch-1 predicts
   are timed meanwhile (the limits answer the hog's connections over 32 with 503).
5. **Memory**: the serving process's VmRSS once it has served, swapped and gone idle, its
   peak (VmHWM), and whether torch is in it (``/proc/PID/maps`` and the daemon's status).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from common import markdown_targets, target, write_results  # noqa: E402

from lifelong.deploy.model_format import (  # noqa: E402
    INPUT_NAME,
    INPUT_SHAPE,
    META_CHECKPOINT,
    META_SUBNET,
    ORT_DISABLED_OPTIMIZERS,  # noqa: E402
)
from lifelong.deploy.onnx_graph import build_model  # noqa: E402
from lifelong.device.profile import random_net  # noqa: E402
from lifelong.space.config import Precision, SearchSpace  # noqa: E402
from lifelong.space.cost import subnet_cost  # noqa: E402
from service.api.app import ApiApp, MemoryFeedback  # noqa: E402
from service.api.client import Client  # noqa: E402
from service.serving.ort_runtime import OrtRuntime  # noqa: E402
from service.serving.runtime import RuntimeSettings  # noqa: E402
from tests.daemon_harness import DaemonProcess, short_dir  # noqa: E402

THREADS = 2  # onnxruntime intra-op threads, in the daemon and in the raw sessions
API_THREADS = 4
LEGS = ("api", "wsgi", "runtime", "raw")

# The balanced preset, except that no live figure rolls a model back: the benchmark swaps
# models of different speeds and batch sizes on purpose, and must measure the model it deployed.
POLICY = """\
format_version = 1
name = "serve-benchmark"

[target]
threads = 2

[swap]
rollback_latency_factor = 1000.0
rollback_accuracy_drop = 0.99

# The benchmark swaps two models of random weights on random inputs on purpose: the domain
# memory would find the inputs match either model's drift reference and swap it back mid-test.
[adaptation]
domain_memory = "off"
"""


@dataclass(frozen=True)
class Plan:
    """How long each part runs: ``--quick`` is the same code with shorter blocks."""

    block_s: float  # one block of one leg in the overhead test
    rounds: int  # blocks per leg and batch
    conc_block_s: float
    conc_rounds: int
    clients: tuple[int, ...]
    swaps: int  # at batch 1
    swaps_b32: int  # at batch 32, where a swap's validation and warm-up on the largest model take seconds
    swap_segments: int  # swap segments, each followed by a steady one
    swap_gap_s: float  # pause after each deploy
    idle_s: float  # quiet time before memory is read


FULL = Plan(0.6, 12, 1.5, 2, (1, 2, 4, 8), 200, 50, 8, 0.02, 12.0)
QUICK = Plan(0.25, 4, 0.5, 1, (1, 8), 10, 4, 2, 0.02, 10.0)
HOG_CONNECTIONS = 200


@dataclass(frozen=True)
class BenchModel:
    label: str
    path: Path
    subnet: str
    macs: int | None
    bytes: int


# -- statistics --------------------------------------------------------------------------------
def summary(ms: list[float] | np.ndarray) -> dict[str, float | int]:
    """Percentiles and mean of latency samples in ms."""
    a = np.asarray(ms, float)
    if a.size == 0:
        return {"n": 0}
    p50, p90, p99 = (float(v) for v in np.percentile(a, [50, 90, 99]))
    return {"n": int(a.size), "p50": p50, "p90": p90, "p99": p99, "mean": float(a.mean()), "max": float(a.max())}


def run_block(call: Callable[[], Any], seconds: float, min_calls: int = 3) -> tuple[list[float], float]:
    """Call ``call`` back to back for ``seconds`` (at least ``min_calls`` times); latencies (ms) and wall time."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1e3)
    return times, time.perf_counter() - start


# -- models ------------------------------------------------------------------------------------
def random_model(space: SearchSpace, prec: Precision, seed: int, path: Path) -> BenchModel:
    """The largest subnet at ``prec`` with random weights, as the exporter would build it."""
    cfg = space.largest(prec)
    net = random_net(space, cfg, seed=seed)
    net = replace(net, metadata={META_SUBNET: str(cfg), META_CHECKPOINT: f"random-weights-seed-{seed}"})
    onnx.save(build_model(net), path)
    label = "fp32" if prec.w == 32 else f"w{prec.w}a{prec.a}"
    return BenchModel(label, path, str(cfg), subnet_cost(space, cfg).macs, path.stat().st_size)


def file_model(src: Path, work: Path, index: int) -> BenchModel:
    """An exported model, copied next to the daemon's state; labelled ``INDEX-STEM`` (stems may repeat)."""
    dst = work / f"model{index}.onnx"
    shutil.copyfile(src, dst)
    props = {p.key: p.value for p in onnx.load(str(dst), load_external_data=False).metadata_props}
    return BenchModel(f"{index}-{src.stem}", dst, props.get(META_SUBNET, "?"), None, dst.stat().st_size)


def partner_of(model: BenchModel, space: SearchSpace, work: Path, from_file: bool) -> Path:
    """A second model doing the same work as ``model``, under another id."""
    path = work / "partner.onnx"
    if not from_file:
        prec = Precision(8, 8) if model.label == "w8a8" else Precision(32, 32)
        random_model(space, prec, seed=1, path=path)
        return path
    proto = onnx.load(str(model.path))
    onnx.helper.set_model_props(
        proto, {p.key: p.value for p in proto.metadata_props} | {"lifelong.benchmark_copy": "serve.py swap partner"}
    )
    onnx.save(proto, path)
    return path


def predicted_vs_live(
    profile_path: Path, space: SearchSpace, models: list[BenchModel], overheads: dict[str, Any]
) -> list[dict[str, Any]]:
    """The profile's predicted latency of each model's subnet against the daemon's p50 session
    time for it (its own ``latency_ms``, the model alone, as the prediction means it)."""
    from lifelong.device.profile import DeviceProfile

    profile = DeviceProfile.load(profile_path)
    rows = []
    for m in models:
        try:
            cfg = space.parse(m.subnet)
        except ValueError:
            continue  # a file without a subnet of this space
        for b in profile.batches:
            live = overheads[m.label].get(str(b), {}).get("daemon_model_ms", {}).get("p50")
            pred = float(profile.predict(space, cfg, b))
            rows.append({"model": m.label, "batch": b, "predicted_ms": pred, "live_p50_ms": live,
                         "rel_error": None if not live else pred / live - 1.0})  # fmt: skip
    return rows


def raw_session(path: Path, runtime: OrtRuntime) -> Any:
    """``session.run`` with exactly the options the daemon's runtime opens its sessions with."""
    import onnxruntime as ort

    return ort.InferenceSession(
        str(path),
        runtime._session_options(),  # the runtime's own method, so the two cannot drift apart
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(ORT_DISABLED_OPTIMIZERS),
    )


class BenchmarkError(RuntimeError):
    """The measurement is not what it claims to be (the daemon served another model, say)."""


def check_serving(client: Client, model_id: str) -> None:
    serving = client.health()["model"]
    if serving != model_id:
        raise BenchmarkError(
            f"the daemon serves {serving}, not {model_id}: something swapped it (an automatic rollback?); "
            "see its log with --keep"
        )


# -- 1. overhead -------------------------------------------------------------------------------
class ConnectionCounter:
    """Counts the connections a Client opens, to report whether it keeps one alive."""

    def __init__(self, client: Client) -> None:
        self.opened = 0
        original = client._connection

        def counting() -> Any:
            self.opened += 1
            return original()

        client._connection = counting  # type: ignore[method-assign]


def overhead(client: Client, model: BenchModel, model_id: str, batch: int, plan: Plan) -> dict[str, Any]:
    """The four legs at ``batch``, in alternating blocks; the daemon serves ``model`` as ``model_id``."""
    runtime = OrtRuntime(RuntimeSettings(intra_op_threads=THREADS))
    runtime.swap(model.label, model.path)
    app = ApiApp(runtime, MemoryFeedback(capacity=256))
    session = raw_session(model.path, runtime)
    rng = np.random.default_rng(batch)
    pixels = rng.integers(0, 256, (batch, *INPUT_SHAPE[1:]), dtype=np.uint8)  # what an application sends
    floats = (pixels.astype(np.float32) / np.float32(255.0))[:, None]  # (B, 1, 28, 28): what the graph takes
    server_ms: list[float] = []
    wrong: list[str] = []
    expect = model_id
    check_serving(client, expect)

    def api() -> None:
        pred = client.predict(pixels)
        server_ms.append(pred.latency_ms)
        if pred.model != expect or len(pred.classes) != batch:
            wrong.append(pred.model)

    def wsgi() -> None:
        """The daemon's app in this process, with the client's encoding and decoding: the API less HTTP."""
        buf = io.BytesIO()
        np.save(buf, pixels, allow_pickle=False)
        body = buf.getvalue()
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/v1/predict",
            "CONTENT_TYPE": "application/x-npy",
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.input": io.BytesIO(body),
        }
        doc = json.loads(b"".join(app(environ, lambda status, headers: None)))
        np.asarray(doc["classes"], np.int64), np.asarray(doc["probabilities"], np.float64)

    calls = {
        "api": api,
        "wsgi": wsgi,
        "runtime": lambda: runtime.predict(pixels),
        "raw": lambda: session.run(None, {INPUT_NAME: floats}),
    }
    for _ in range(3):  # warm up every leg, including the keep-alive connection
        for call in calls.values():
            call()
    server_ms.clear()
    times: dict[str, list[float]] = {k: [] for k in LEGS}
    walls = dict.fromkeys(LEGS, 0.0)
    for r in range(plan.rounds):
        order = LEGS if r % 2 == 0 else LEGS[::-1]  # no leg always runs right after another
        for leg in order:
            t, w = run_block(calls[leg], plan.block_s)
            times[leg] += t
            walls[leg] += w
    out: dict[str, Any] = {}
    for leg in LEGS:
        out[leg] = summary(times[leg]) | {
            "requests_per_s": len(times[leg]) / walls[leg],
            "samples_per_s": batch * len(times[leg]) / walls[leg],
        }
    out["daemon_model_ms"] = summary(server_ms)
    raw, api_ = out["raw"], out["api"]
    out["overhead_p50_pct"] = 100 * (api_["p50"] / raw["p50"] - 1)
    out["overhead_mean_pct"] = 100 * (api_["mean"] / raw["mean"] - 1)
    out["overhead_throughput_pct"] = 100 * (1 - api_["samples_per_s"] / raw["samples_per_s"])
    out["runtime_overhead_p50_pct"] = 100 * (out["runtime"]["p50"] / raw["p50"] - 1)
    out["wsgi_overhead_p50_pct"] = 100 * (out["wsgi"]["p50"] / raw["p50"] - 1)
    out["http_p50_ms"] = api_["p50"] - out["wsgi"]["p50"]  # socket, HTTP framing, the server
    out["api_minus_daemon_model_p50_ms"] = api_["p50"] - out["daemon_model_ms"]["p50"]
    if wrong:
        raise BenchmarkError(
            f"{len(wrong)} API answers at batch {batch} came from {sorted(set(wrong))}, not {expect} ({model.label}): "
            "the daemon swapped models during the measurement"
        )
    return out


# -- 2. concurrency ----------------------------------------------------------------------------
def concurrent(calls: list[Callable[[], Any]], seconds: float) -> tuple[list[float], list[str], float]:
    """Run each call in its own thread, back to back, for ``seconds``; latencies, errors, wall time."""
    times: list[list[float]] = [[] for _ in calls]
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(calls) + 1)
    stop = threading.Event()

    def worker(i: int) -> None:
        barrier.wait()
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                calls[i]()
            except Exception as exc:
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            times[i].append((time.perf_counter() - t0) * 1e3)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(calls))]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(60)
    return [v for t in times for v in t], errors, time.perf_counter() - start


def concurrency(daemon: DaemonProcess, model: BenchModel, model_id: str, batch: int, plan: Plan) -> dict[str, Any]:
    """API against raw throughput with ``plan.clients`` concurrent callers; the daemon serves ``model_id``."""
    runtime = OrtRuntime(RuntimeSettings(intra_op_threads=THREADS))
    session = raw_session(model.path, runtime)
    pixels = np.random.default_rng(batch).integers(0, 256, (batch, *INPUT_SHAPE[1:]), dtype=np.uint8)
    floats = (pixels.astype(np.float32) / np.float32(255.0))[:, None]
    out: dict[str, Any] = {}
    for n in plan.clients:
        clients = [daemon.client() for _ in range(n)]
        check_serving(clients[0], model_id)

        def api(c: Client) -> None:
            if c.predict(pixels).model != model_id:
                raise BenchmarkError(f"an answer came from another model than {model_id}")

        api_calls = [(lambda c=c: api(c)) for c in clients]
        raw_calls = [lambda: session.run(None, {INPUT_NAME: floats})] * n
        for call in (*api_calls, *raw_calls):
            call()
        acc: dict[str, dict[str, Any]] = {leg: {"ms": [], "wall": 0.0} for leg in ("api", "raw")}
        for r in range(plan.conc_rounds):
            for leg in ("api", "raw") if r % 2 == 0 else ("raw", "api"):
                ms, errs, wall = concurrent(api_calls if leg == "api" else raw_calls, plan.conc_block_s)
                acc[leg]["ms"] += ms
                if errs:
                    raise BenchmarkError(f"{len(errs)} {leg} requests failed with {n} clients: {errs[0]}")
                acc[leg]["wall"] += wall
        row = {}
        for leg, a in acc.items():
            row[leg] = summary(a["ms"]) | {
                "requests_per_s": len(a["ms"]) / a["wall"],
                "samples_per_s": batch * len(a["ms"]) / a["wall"],
            }
        row["throughput_ratio_api_to_raw"] = row["api"]["samples_per_s"] / row["raw"]["samples_per_s"]
        out[str(n)] = row
        for c in clients:
            c.close()
    return out


# -- 3. swaps ----------------------------------------------------------------------------------
def swap_test(daemon: DaemonProcess, ids: tuple[str, str], plan: Plan, batch: int = 1) -> dict[str, Any]:
    """p99 of a continuous client in swap segments against steady segments of the same length."""
    with daemon.client() as probe:
        check_serving(probe, ids[0])
    pixels = np.random.default_rng(7).integers(0, 256, (batch, *INPUT_SHAPE[1:]), dtype=np.uint8)
    records: list[tuple[float, float, str]] = []  # (start, ms, model)
    failures: list[str] = []
    stop = threading.Event()
    client = daemon.client()
    client.predict(pixels)

    def predictor() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                pred = client.predict(pixels)
            except Exception as exc:  # every failure counts, whatever it is
                failures.append(f"{type(exc).__name__}: {exc}")
                continue
            records.append((t0, (time.perf_counter() - t0) * 1e3, pred.model))

    admin = daemon.client(timeout=120)
    thread = threading.Thread(target=predictor, daemon=True)
    thread.start()
    time.sleep(0.5)
    segments: list[tuple[str, float, float]] = []
    deploy_ms: list[float] = []
    load_ms: list[float] = []
    per_segment = max(1, plan.swaps // plan.swap_segments)
    done, serving = 0, ids[0]
    while done < plan.swaps:
        t0 = time.perf_counter()
        for _ in range(min(per_segment, plan.swaps - done)):
            serving = ids[1] if serving == ids[0] else ids[0]
            d0 = time.perf_counter()
            result = admin.deploy(model=serving, reason="benchmark swap")
            deploy_ms.append((time.perf_counter() - d0) * 1e3)
            if result.get("load_ms") is not None:
                load_ms.append(float(result["load_ms"]))
            if not result["changed"]:
                raise BenchmarkError(f"deploy of {serving} changed nothing: {result}")
            done += 1
            time.sleep(plan.swap_gap_s)
        t1 = time.perf_counter()
        segments.append(("swap", t0, t1))
        time.sleep(t1 - t0)
        segments.append(("steady", t1, time.perf_counter()))
    stop.set()
    thread.join(30)
    if serving != ids[0]:
        admin.deploy(model=ids[0], reason="benchmark: back to the first model")
    admin.close()
    client.close()

    def in_kind(kind: str) -> list[float]:
        return [ms for start, ms, _ in records if any(k == kind and a <= start < b for k, a, b in segments)]

    swap_ms, steady_ms = in_kind("swap"), in_kind("steady")
    models = {m: sum(1 for *_, mm in records if mm == m) for m in {r[2] for r in records}}
    s_swap, s_steady = summary(swap_ms), summary(steady_ms)
    return {
        "batch": batch,
        "swaps": done,
        "segments": len(segments),
        "seconds_swap": sum(b - a for k, a, b in segments if k == "swap"),
        "seconds_steady": sum(b - a for k, a, b in segments if k == "steady"),
        "during_swaps": s_swap,
        "steady": s_steady,
        "p99_ratio": s_swap["p99"] / s_steady["p99"],
        "p50_ratio": s_swap["p50"] / s_steady["p50"],
        "failed_requests": len(failures),
        "failures": failures[:10],
        "answers_by_model": models,
        "answers_from_unknown_models": sum(n for m, n in models.items() if m not in ids),
        "deploy_ms": summary(deploy_ms),
        "deploying_fraction_of_swap_segments": sum(deploy_ms) / 1e3 / sum(b - a for k, a, b in segments if k == "swap"),
        "daemon_load_ms": summary(load_ms),
    }


# -- 4. one client hogging connections ---------------------------------------------------------
HOG = r"""
import socket, sys, time
path, n = sys.argv[1], int(sys.argv[2])
held = []
for i in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    try:
        if i % 2:  # half-sent: headers and part of the body, then nothing
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 4000\r\n\r\nab")
    except OSError:
        pass
    held.append(s)
print("holding", flush=True)
sys.stdin.read()
"""


def hog_test(daemon: DaemonProcess, model_id: str, seconds: float) -> dict[str, Any]:
    """Another process holds ``HOG_CONNECTIONS`` idle or half-sent connections; this one's
    health checks and batch-1 predicts are timed meanwhile (a fresh client, one connection)."""
    import subprocess

    hog = subprocess.Popen([sys.executable, "-c", HOG, str(daemon.socket), str(HOG_CONNECTIONS)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert hog.stdout is not None
        hog.stdout.readline()
        pixels = np.zeros((1, *INPUT_SHAPE[1:]), np.uint8)
        health, predict = [], []
        with daemon.client(timeout=30) as c:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                c.health()
                t1 = time.perf_counter()
                if c.predict(pixels).model != model_id:
                    raise BenchmarkError(f"an answer came from another model than {model_id}")
                health.append((t1 - t0) * 1e3)
                predict.append((time.perf_counter() - t1) * 1e3)
            metrics = c.metrics()
    finally:
        hog.communicate(b"", timeout=30)
    refused = [line for line in metrics.splitlines() if line.startswith("lifelong_connections_refused_total")]
    return {
        "connections_held": HOG_CONNECTIONS,
        "health_ms": summary(health),
        "predict_ms": summary(predict),
        "max_ms": max(max(health), max(predict)),
        "refused_total": float(refused[0].split()[-1]) if refused else None,
    }


# -- 5. memory ---------------------------------------------------------------------------------
def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM and Threads of ``pid`` (kB, kB, count)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            out[key] = int(value.split()[0])
    return out


def rss_by_mapping(pid: int) -> dict[str, float]:
    """Resident MB of ``pid`` by what is mapped (``/proc/PID/smaps``): the heap, anonymous
    mappings (thread heaps, onnxruntime's arenas, numpy buffers), thread stacks,
    libonnxruntime, other shared libraries and Python extension modules, and the rest."""
    out: dict[str, float] = {}
    kind = "other"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:  # a mapping's header line
            name = head[5] if len(head) > 5 else ""
            kind = (
                "heap" if name == "[heap]"
                else "stack" if name.startswith("[stack")
                else "anonymous" if not name
                else "libonnxruntime" if "onnxruntime" in name and ".so" in name
                else "shared libraries" if ".so" in name
                else "other"
            )  # fmt: skip
        elif head and head[0] == "Rss:":
            out[kind] = out.get(kind, 0.0) + int(head[1]) / 1024
    return {k: round(v, 1) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def torch_mappings(pid: int) -> list[str]:
    """Files mapped into ``pid`` that belong to torch (libtorch*, .../site-packages/torch/...)."""
    paths = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)  # address perms offset dev inode [path]
        if len(parts) == 6:
            paths.add(parts[5])
    return sorted(p for p in paths if "libtorch" in p or "/torch/" in p or "libc10" in p)


# -- main --------------------------------------------------------------------------------------
def git_state() -> dict[str, Any]:
    """The commit measured, and the files changed beside it: a benchmark of a dirty tree says so."""
    import subprocess

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=False).stdout

    changed = [line[3:] for line in git("status", "--porcelain").splitlines() if line.strip()]
    return {"commit": git("rev-parse", "HEAD").strip() or None, "changed_files": changed}


def markdown_legs(overheads: dict[str, dict[str, Any]]) -> str:
    lines = [
        "| model | batch | api p50 ms | wsgi p50 ms | runtime p50 ms | raw p50 ms | api p99 ms | raw p99 ms "
        "| overhead p50 | overhead throughput |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, by_batch in overheads.items():
        for b, o in by_batch.items():
            ms = " | ".join(f"{o[leg]['p50']:.3f}" for leg in LEGS)
            lines.append(
                f"| {label} | {b} | {ms} | {o['api']['p99']:.3f} | {o['raw']['p99']:.3f} | "
                f"{o['overhead_p50_pct']:+.1f}% | {o['overhead_throughput_pct']:+.1f}% |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short blocks, fewer swaps (< 1 min)")
    ap.add_argument(
        "--model",
        type=Path,
        action="append",
        default=None,
        help="an exported ONNX model to measure (repeatable) [the largest subnet at FP32 and W8A8, random weights]",
    )
    ap.add_argument("--keep", action="store_true", help="keep the daemon's state and log folder")
    ap.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="a device profile (`lifelong profile`): its predicted latency of each model is compared with the "
        "daemon's own p50 session time at batch 1 and 32",
    )
    args = ap.parse_args()
    for m in args.model or ():
        if not m.is_file():
            ap.error(f"--model {m}: no such file; expected an ONNX model such as `lifelong export` writes")
    plan = QUICK if args.quick else FULL
    name = "serve-quick" if args.quick else "serve"
    t_start, load_start = time.monotonic(), os.getloadavg()

    work = short_dir("llbench")
    state, run_dir = work / "state", work / "run"
    run_dir.mkdir()
    space = SearchSpace()
    if args.model:
        models = [file_model(m, work, i) for i, m in enumerate(args.model)]
    else:
        models = [
            random_model(space, Precision(32, 32), 0, work / "fp32.onnx"),
            random_model(space, Precision(8, 8), 0, work / "w8a8.onnx"),
        ]
    partner = partner_of(models[0], space, work, from_file=bool(args.model))

    state.mkdir()
    (state / "policy.toml").write_text(POLICY)
    folders = sorted({str(m.path.resolve().parent) for m in models} | {str(partner.resolve().parent)})
    deploy_dirs = [a for d in folders for a in ("--deploy-dir", d)]  # the models are deployed by path
    daemon = DaemonProcess(
        state,
        run_dir,
        args=("--threads", str(THREADS), "--api-threads", str(API_THREADS), "--probe-interval", "3600", *deploy_dirs),
        watchdog_s=None,
    )
    ok = False
    try:
        daemon.start()
        pid = daemon.proc.pid  # type: ignore[union-attr]
        rss_start = proc_status(pid)
        client = daemon.client(timeout=120)
        counter = ConnectionCounter(client)
        ids: dict[str, str] = {}
        for m in models:
            ids[m.label] = client.deploy(path=m.path, reason="benchmark")["model_id"]
        partner_id = client.deploy(path=partner, reason="benchmark swap partner")["model_id"]
        print(f"daemon pid {pid}; models {ids}; partner {partner_id}", flush=True)

        # 1. overhead, one client; first the floor: a request with no body and no model run
        for _ in range(5):
            client.health()
        health_ms, _ = run_block(client.health, 2 * plan.block_s)
        http_floor = summary(health_ms)
        print(f"GET /v1/health round trip: p50 {http_floor['p50']:.3f} ms p99 {http_floor['p99']:.3f}", flush=True)
        overheads: dict[str, dict[str, Any]] = {}
        for m in models:
            client.deploy(model=ids[m.label], reason="benchmark")
            overheads[m.label] = {}
            for batch in (32, 1):
                o = overhead(client, m, ids[m.label], batch, plan)
                overheads[m.label][str(batch)] = o
                print(
                    f"{m.label} b{batch}: p50 ms api {o['api']['p50']:.3f} (daemon's model time "
                    f"{o['daemon_model_ms']['p50']:.3f}) wsgi {o['wsgi']['p50']:.3f} runtime {o['runtime']['p50']:.3f} "
                    f"raw {o['raw']['p50']:.3f}"
                    f"  overhead p50 {o['overhead_p50_pct']:+.1f}% throughput {o['overhead_throughput_pct']:+.1f}%",
                    flush=True,
                )
        client.deploy(model=ids[models[0].label], reason="benchmark")
        persistent = {
            "client": "service.api.client.Client over the Unix socket (service.api.http_wire, HTTP/1.1 keep-alive)",
            "connections_opened": counter.opened,
            "requests": sum(o["api"]["n"] for by in overheads.values() for o in by.values()),
        }
        persistent["persistent"] = counter.opened == 1
        print(f"client connections opened: {counter.opened} for {persistent['requests']} API requests", flush=True)

        # 2. concurrency
        conc = {str(b): concurrency(daemon, models[0], ids[models[0].label], b, plan) for b in (32, 1)}
        for b, rows in conc.items():
            for n, row in rows.items():
                print(
                    f"b{b} x{n} clients: api {row['api']['samples_per_s']:.0f} samples/s, raw "
                    f"{row['raw']['samples_per_s']:.0f} ({100 * row['throughput_ratio_api_to_raw']:.0f}%)",
                    flush=True,
                )

        # 3. swaps, at batch 1 and 32
        swaps_by_batch = {}
        for b in (1, 32):
            p = plan if b == 1 else replace(plan, swaps=plan.swaps_b32, swap_segments=min(plan.swap_segments, 4))
            sw = swaps_by_batch[str(b)] = swap_test(daemon, (ids[models[0].label], partner_id), p, batch=b)
            print(
                f"b{b} swaps: {sw['swaps']}; p99 {sw['during_swaps']['p99']:.3f} ms during swaps vs "
                f"{sw['steady']['p99']:.3f} steady (x{sw['p99_ratio']:.2f}); failed {sw['failed_requests']}, "
                f"from another model {sw['answers_from_unknown_models']}; deploy p50 {sw['deploy_ms']['p50']:.0f} ms",
                flush=True,
            )

        # 4. one client holding many connections
        hog = hog_test(daemon, ids[models[0].label], 5 * plan.block_s)
        print(f"{hog['connections_held']} connections held by another client: health p50 {hog['health_ms']['p50']:.3f} "
              f"ms, predict p50 {hog['predict_ms']['p50']:.3f} ms, slowest {hog['max_ms']:.1f} ms", flush=True)  # fmt: skip

        # 5. memory, idle
        time.sleep(plan.idle_s)
        st = client.status()
        mem = proc_status(pid)
        torch_maps = torch_mappings(pid)
        torch_imported = bool(st.get("daemon", {}).get("torch_imported"))
        memory = {
            "pid": pid,
            "status_pid": st.get("daemon", {}).get("pid"),
            "rss_after_start_mb": rss_start["VmRSS"] / 1024,
            "rss_idle_mb": mem["VmRSS"] / 1024,
            "rss_peak_mb": mem["VmHWM"] / 1024,
            "threads": mem["Threads"],
            "serving": st.get("model"),
            "draining_models": st.get("runtime", {}).get("draining"),
            "torch_imported": torch_imported,
            "torch_mappings": torch_maps,
            "idle_heap_trims": (st.get("memory_trim") or {}).get("trims"),
            "rss_by_mapping_mb": rss_by_mapping(pid),
        }
        print(f"idle RSS {memory['rss_idle_mb']:.1f} MB (peak {memory['rss_peak_mb']:.1f}); torch: {torch_imported}")
        print(f"  by mapping (MB): {memory['rss_by_mapping_mb']}")
        client.close()
        rc = daemon.stop()
        log_lines = daemon.log_path.read_text(errors="replace").splitlines()
        complaints = [line for line in log_lines if line.startswith(("WARNING", "ERROR", "CRITICAL"))]
        ok = True
    finally:
        if not ok:
            print(daemon.log(), file=sys.stderr)
        daemon.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    first = models[0].label
    targets = []
    for m in models:
        o1, o32 = overheads[m.label]["1"], overheads[m.label]["32"]
        added = o1["api"]["p50"] - o1["raw"]["p50"]
        targets.append(target(f"added p50 latency over session.run at batch 1, {m.label} (ms)", added, "<= 0.15",
                              added <= 0.15))  # fmt: skip
        targets.append(target(f"added p50 latency over session.run at batch 32, {m.label} (%)",
                              o32["overhead_p50_pct"], "<= 5", o32["overhead_p50_pct"] <= 5))  # fmt: skip
    most = str(max(plan.clients))
    ratio = conc["1"][most]["throughput_ratio_api_to_raw"]
    targets.append(target(f"throughput of {most} batch-1 clients / {most} threads on session.run ({first})",
                          ratio, ">= 0.8", ratio >= 0.8))  # fmt: skip
    for b, sw in swaps_by_batch.items():
        targets.append(target(f"p99 during {sw['swaps']} swaps / steady p99 (batch {b}, {first})", sw["p99_ratio"],
                              "<= 1.5", sw["p99_ratio"] <= 1.5))  # fmt: skip
    lost = sum(sw["failed_requests"] + sw["answers_from_unknown_models"] for sw in swaps_by_batch.values())
    targets += [
        target("failed or misattributed requests during swaps", lost, "0", lost == 0),
        target(
            f"slowest health or predict while another client holds {HOG_CONNECTIONS} connections (ms)",
            hog["max_ms"],
            "<= 50",
            hog["max_ms"] <= 50,
        ),  # fmt: skip
        target("idle RSS of the serving process (MB)", memory["rss_idle_mb"], "<= 120", memory["rss_idle_mb"] <= 120),
        target(
            "torch in the serving process (imported or mapped)",
            "yes" if torch_imported or torch_maps else "no",
            "no",
            not (torch_imported or torch_maps),
        ),
    ]
    predicted = predicted_vs_live(args.profile, space, models, overheads) if args.profile else None
    for row in predicted or ():
        if row["batch"] == 1 and row["rel_error"] is not None:
            targets.append(target(f"predicted batch-1 latency vs the daemon's live p50, {row['model']} (relative error)",
                                  round(row["rel_error"], 3), "within +-0.10", abs(row["rel_error"]) <= 0.10))  # fmt: skip
    payload = {
        "git": git_state(),
        "profile": None if args.profile is None else {"path": str(args.profile), "predicted_vs_live": predicted},
        "threads": THREADS,
        "api_threads": API_THREADS,
        "plan": asdict(plan),
        "seconds": time.monotonic() - t_start,
        "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(),
        "daemon_exit_code": rc,
        "daemon_log_warnings": {"count": len(complaints), "distinct": sorted(set(complaints))[:20]},
        "inputs": {
            "api": "uint8 pixels (N, 28, 28) as .npy, answers as JSON",
            "wsgi": "the same .npy body to the daemon's ApiApp in this process; the JSON answer decoded",
            "runtime": "the same uint8 array to OrtRuntime.predict in this process",
            "raw": "float32 (N, 1, 28, 28) to session.run, options from OrtRuntime",
        },
        "policy": POLICY,
        "connection": persistent,
        "hog": hog,
        "health_round_trip_ms": http_floor,
        "models": [{"label": m.label, "subnet": m.subnet, "macs": m.macs, "bytes": m.bytes} for m in models],
        "swap_partner": "same architecture, other random weights"
        if not args.model
        else "same file, one more metadata key",
        "overhead": overheads,
        "concurrency": conc,
        "swaps": swaps_by_batch,
        "memory": memory,
        "targets": targets,
    }
    out = write_results(name, payload)
    print()
    print(markdown_legs(overheads))
    print()
    print(markdown_targets(targets))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
