"""Timing onnxruntime sessions on this device: the medians every latency figure rests on.

One session timed alone (:func:`time_session`, :func:`measure_model`), or two timed
alternately so that both see the same load (:func:`measure_pair`). The device profile
(:mod:`lifelong.device.profile`) times its parts and its reference graph with these.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from lifelong.deploy.model_format import INPUT_SHAPE, ort_session

__all__ = ["measure_model", "measure_pair", "repeats_for", "time_session"]


def time_session(session: Any, x: np.ndarray, warmup: int, repeats: int) -> float:
    """Median ms of ``repeats`` runs of ``session`` on ``x`` after ``warmup`` untimed ones."""
    name = session.get_inputs()[0].name
    feed = {name: x}
    for _ in range(warmup):
        session.run(None, feed)
    times = np.empty(repeats)
    for r in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feed)
        times[r] = time.perf_counter() - t0
    return float(np.median(times) * 1e3)


def repeats_for(batch: int) -> tuple[int, int]:
    """Warm-up runs and timed repeats: fewer for big batches, whose runs are long and steady."""
    return (10, 30) if batch == 1 else (3, 9)


def measure_model(
    model: Any, batches: tuple[int, ...] = (1, 32), threads: int = 2, shape: tuple[int, ...] = INPUT_SHAPE
) -> dict[int, float]:
    """Median latency in ms of an ONNX model (proto or bytes) at each batch size."""
    data = model if isinstance(model, bytes) else model.SerializeToString()
    session = ort_session(data, threads)
    rng = np.random.default_rng(0)
    out = {}
    for b in batches:
        warmup, repeats = repeats_for(b)
        out[b] = time_session(session, rng.random((b, *shape), dtype=np.float32), warmup, repeats * 2)
    return out


def measure_pair(
    a: Any, b: Any, batches: tuple[int, ...] = (1, 32), threads: int = 2, shape: tuple[int, ...] = INPUT_SHAPE
) -> tuple[dict[int, float], dict[int, float]]:
    """Median latency in ms of two ONNX models (protos or bytes) at each batch size, run
    alternately so that both see the same load: on a busy device, two models timed one after
    the other differed by a third though they were the same graph with other weights."""
    sessions = [ort_session(m if isinstance(m, bytes) else m.SerializeToString(), threads) for m in (a, b)]
    names = [s.get_inputs()[0].name for s in sessions]
    rng = np.random.default_rng(0)
    out: tuple[dict[int, float], dict[int, float]] = ({}, {})
    for batch in batches:
        x = rng.random((batch, *shape), dtype=np.float32)
        warmup, repeats = repeats_for(batch)
        for _ in range(warmup):
            for s, n in zip(sessions, names, strict=True):
                s.run(None, {n: x})
        times = np.empty((2, repeats * 2))
        for r in range(repeats * 2):
            for i, (s, n) in enumerate(zip(sessions, names, strict=True)):
                t0 = time.perf_counter()
                s.run(None, {n: x})
                times[i, r] = time.perf_counter() - t0
        out[0][batch], out[1][batch] = (float(np.median(times[i]) * 1e3) for i in range(2))
    return out
