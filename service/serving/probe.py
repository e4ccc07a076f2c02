"""The latency probe: time the serving model on a fixed batch, as the device runs it now.

Environment drift (contention from other programs, thermal throttling) shows as a slower
model with no change of model, so the probe replays the same input at the policy's batch
size and records the p50 and p95 as metrics (``latency_probe_p50_ms``/``_p95_ms``, labelled
with the model and batch). A model whose latency the store does not know yet (deployed from
a file, not from a search) gets the batch-1 figures as its measured latency.

The probe's predictions go through the runtime like any request, so they appear in its
counters and live percentiles; they are few (``runs`` per interval).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lifelong.deploy.model_format import INPUT_SHAPE
from service.serving.runtime import Runtime
from service.state.store import Metric, Store

__all__ = ["probe_latency"]


def probe_latency(runtime: Runtime, store: Store, batch: int, runs: int) -> dict[str, Any] | None:
    """Run ``runs`` predictions of a fixed ``batch`` and record the percentiles; None when nothing serves."""
    if runtime.current_id is None:
        return None
    x = np.random.default_rng(0).random((batch, *INPUT_SHAPE), dtype=np.float32)  # (B, 1, 28, 28)
    times, model_id = [], None
    for _ in range(runs):
        pred = runtime.predict(x)
        if model_id is not None and pred.model_id != model_id:
            times, model_id = [], pred.model_id  # a swap happened: time the new model only
        times.append(pred.latency_ms)
        model_id = pred.model_id
    assert model_id is not None
    p50, p95 = (float(v) for v in np.percentile(times, [50, 95]))
    labels = {"model": model_id, "batch": batch}
    store.record_metrics([Metric("latency_probe_p50_ms", p50, labels), Metric("latency_probe_p95_ms", p95, labels)])
    record = store.get_model(model_id)
    if batch == 1 and record is not None and record.latency_p50_ms is None:
        store.update_model(model_id, latency_p50_ms=p50, latency_p95_ms=p95)
    return {"model": model_id, "batch": batch, "runs": len(times), "p50_ms": p50, "p95_ms": p95}
