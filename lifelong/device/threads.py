"""The onnxruntime thread count as a per-model choice, timed on this device.

For the models of search space v2 one intra-op thread often beats two at batch 1: on the 46
points of the headline's front, one thread was faster for 67-70% of them, by a median of
18-26% (two runs), while at batch 32 two threads were faster for 87-96% (median 1.4-1.5x;
``benchmarks/results/latency.json``). Which count wins depends on the model, so it is timed
per model: both counts run the same input in turn, in interleaved blocks so that both see
the same load, and the median over the rounds decides. The export writes the choice into the
model's ONNX metadata (:data:`META_THREADS`, a JSON map of batch size to threads), and a
runtime whose policy says ``target.threads = 0`` opens each model with the count chosen for
the policy's batch size.

Torch-free.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lifelong.deploy.model_format import INPUT_SHAPE, ort_session
from lifelong.persist.versioned import write_bytes_atomic

__all__ = ["META_THREADS", "THREAD_CHOICES", "choose_threads", "threads_for", "time_threads", "write_thread_choice"]

META_THREADS = "lifelong.threads"
"""ONNX metadata key: JSON ``{"batch": threads, ...}``, the count timed fastest at each batch."""

THREAD_CHOICES = (1, 2)
"""The counts timed. A gateway's few cores are shared with the applications it serves."""


def time_threads(
    model: bytes | str, batches: Sequence[int], choices: Sequence[int] = THREAD_CHOICES, runs: int | None = None
) -> dict[int, dict[int, float]]:
    """Median latency (ms) by batch size and thread count.

    The counts run alternately, one run each in turn (the order reversed every round), so that
    both see the same load from run to run: timed in blocks of 12 runs, a two-thread session of
    0.2 ms on a 2-core machine came out 0.176 ms in one timing and 0.287 ms in the next, and the
    choice made on one timing was up to 57% slower in the other (``latency.json`` before this
    change). ``runs`` per count: 150 at batch 1 and 15 at larger batches by default.
    """
    data = Path(model).read_bytes() if isinstance(model, str) else model
    sessions = {t: ort_session(data, t) for t in choices}
    name = next(iter(sessions.values())).get_inputs()[0].name
    rng = np.random.default_rng(0)
    out: dict[int, dict[int, float]] = {}
    for b in batches:
        feed = {name: rng.random((b, *INPUT_SHAPE), dtype=np.float32)}
        n = runs or (150 if b == 1 else 15)
        for s in sessions.values():  # warm
            for _ in range(3):
                s.run(None, feed)
        times: dict[int, list[float]] = {t: [] for t in choices}
        order = list(choices)
        for _ in range(n):
            for t in order:
                t0 = time.perf_counter()
                sessions[t].run(None, feed)
                times[t].append(time.perf_counter() - t0)
            order.reverse()
        out[int(b)] = {t: float(np.median(v) * 1e3) for t, v in times.items()}
    return out


def choose_threads(timings: Mapping[int, Mapping[int, float]]) -> dict[int, int]:
    """The fastest count at each batch size; a tie goes to fewer threads (a core left free)."""
    return {int(b): min(ms, key=lambda t: (ms[t], t)) for b, ms in timings.items()}


def threads_for(metadata: Mapping[str, str], batch: int) -> int | None:
    """The count a model's metadata chose for ``batch``, or None (no choice, or unreadable).

    A batch size that was not timed takes the choice of the nearest timed one.
    """
    raw = metadata.get(META_THREADS)
    if not raw:
        return None
    try:
        chosen = {int(b): int(t) for b, t in json.loads(raw).items()}
    except (ValueError, TypeError, AttributeError):
        return None
    chosen = {b: t for b, t in chosen.items() if b >= 1 and 1 <= t <= (os.cpu_count() or 1) * 4}
    if not chosen:
        return None
    nearest = min(chosen, key=lambda b: (abs(b - batch), b))
    return chosen[nearest]


def write_thread_choice(path: str | Path, choice: Mapping[int, int]) -> int:
    """Record ``choice`` in the ONNX file's metadata (rewritten atomically); its new size.

    Only metadata changes: the graph and its weights are what the parity gate checked.
    """
    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    props[META_THREADS] = json.dumps({str(b): int(t) for b, t in sorted(choice.items())})
    del model.metadata_props[:]
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    data = model.SerializeToString()
    write_bytes_atomic(path, data)
    return len(data)
