"""Measured picks: time the search's best candidates on this device before the front is trusted.

The latency model (:mod:`lifelong.device.latency_table`) sums profiled rows; once onnxruntime has
optimised a whole graph (fusions, layout changes, requantization at borders) those rows do
not compose exactly. On the uniform supernet's front its batch-1 predictions were below the
exported models' latency on all 13 exported points, by a median of 34%
(``benchmarks/results/search.json``, ``predictor_error``), so a policy's "most accurate under
0.17 ms" measured 0.20-0.27 ms and the candidate that really ran that fast was never looked at.

Timing a candidate costs little: :func:`lifelong.deploy.onnx_graph.build_model` builds its graph with
random weights (the graph the export writes, :func:`lifelong.device.profile.random_net`), and
:class:`lifelong.device.profile.PairedTimer` times it beside the profile's reference graph, 0.1-0.7 s
a candidate on a 2-core CPU. Weights do not change the kernels onnxruntime runs, so this is
the exported model's latency up to timing noise (on those 13 points, graph and export agreed
within 10-20% where the model was off by up to 2x).

So after the search (:func:`lifelong.search.front_search.search_front`) a pool of candidates is
timed: successive non-dominated layers of everything the search evaluated, in the plane of
predicted accuracy and predicted latency at the policy's batch, among those within the size
and memory budgets and within :attr:`MeasureSettings.slack` times the latency budget (the
prediction can be off either way). The front is then rebuilt from the pool on the measured
latency: a point is kept if no other timed candidate is at least as accurate (predicted, or
measured on the validation split), as fast (measured) and as small, and it meets the
latency budget as measured. Every point of that front carries ``measured_latency_ms`` and
``latency_source = "graph"``; :func:`lifelong.search.front.choose` picks on those figures.

Torch-free: this runs in the service's workers and in ``lifelong search`` alike.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from lifelong.search.evaluator import Constraints, Metrics
from lifelong.search.front import Front
from lifelong.search.pareto import non_dominated
from lifelong.space.config import SearchSpace, SubnetConfig

if TYPE_CHECKING:
    from lifelong.device.profile import DeviceProfile

__all__ = ["MeasureSettings", "MeasuredPool", "candidate_pool", "measure_pool", "measured_front"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MeasureSettings:
    """How many of the search's candidates are timed, and how far past the budget to look.

    Attributes:
        candidates: Graphs timed (0: none; the front stays on predicted latency).
        slack: Candidates predicted up to this multiple of the latency budget are timed: the
            prediction can be under the measurement (it was, by up to 2x) or over it.
    """

    candidates: int = 64
    slack: float = 1.5

    def __post_init__(self) -> None:
        problems = []
        if self.candidates < 0:
            problems.append(f"candidates must be >= 0, got {self.candidates!r}")
        if not self.slack >= 1.0:
            problems.append(f"slack must be >= 1, got {self.slack!r}")
        if problems:
            raise ValueError("invalid measure settings: " + "; ".join(problems))


def candidate_pool(metrics: Metrics, constraints: Constraints, n: int, slack: float = 1.5) -> np.ndarray:
    """Indices into ``metrics`` of at most ``n`` candidates worth timing, best layers first.

    Layers are peeled in the (predicted accuracy, predicted latency) plane: the first is the
    predicted front, the next what that front dominated, and so on, so a candidate the
    latency model over-rates by a layer or two is still timed. Size and memory budgets apply
    as predicted (they are exact); the latency budget is relaxed by ``slack``. Within the last
    layer taken, candidates are spread over latency so the pool does not crowd one end.
    """
    if n <= 0 or not len(metrics):
        return np.zeros(0, np.int64)
    relaxed = replace(
        constraints, latency_ms=None if constraints.latency_ms is None else constraints.latency_ms * slack
    )
    left = np.flatnonzero(relaxed.violation(metrics) <= 0)
    F = np.stack([-metrics.accuracy, metrics.latency_ms], axis=1)
    out: list[int] = []
    while len(left) and len(out) < n:
        layer = left[non_dominated(F[left])]
        layer = layer[np.argsort(metrics.latency_ms[layer], kind="stable")]
        room = n - len(out)
        if len(layer) > room:  # spread the last layer over its latency range
            layer = layer[np.unique(np.round(np.linspace(0, len(layer) - 1, room)).astype(np.int64))]
        out.extend(int(i) for i in layer)
        left = np.setdiff1d(left, layer, assume_unique=True)
    return np.asarray(out, np.int64)


@dataclass(frozen=True)
class MeasuredPool:
    """Candidates timed on this device.

    Attributes:
        subnets: Canonical names, in the order timed.
        measured_ms: Per candidate, latency (ms) by profiled batch size, at the profile's
            reference speed (:class:`lifelong.device.profile.PairedTimer`).
        predicted_ms: Per candidate, the latency model's figure by the same batch sizes.
        seconds: Wall time of the timing.
    """

    subnets: tuple[str, ...]
    measured_ms: tuple[dict[int, float], ...]
    predicted_ms: tuple[dict[int, float], ...]
    seconds: float

    def errors(self, batch: int) -> np.ndarray:
        """Relative error of the prediction, ``predicted / measured - 1``, at ``batch``."""
        if not self.subnets:
            return np.zeros(0)
        m = np.array([x[batch] for x in self.measured_ms])
        p = np.array([x[batch] for x in self.predicted_ms])
        return p / m - 1.0

    def summary(self) -> dict[str, Any]:
        """JSON-able: counts, seconds and the latency model's error on the pool, per batch."""
        out: dict[str, Any] = {"timed": len(self.subnets), "seconds": round(self.seconds, 2)}
        if self.subnets:
            for b in sorted(self.measured_ms[0]):
                e = self.errors(b)
                out[f"prediction_error_b{b}"] = {
                    "median": float(np.median(e)),
                    "median_abs": float(np.median(np.abs(e))),
                    "within_10pct": float((np.abs(e) <= 0.10).mean()),
                }
        return out


def measure_pool(
    space: SearchSpace,
    profile: DeviceProfile,
    cfgs: Sequence[SubnetConfig],
    predicted_ms: Sequence[dict[int, float]],
    progress: Callable[[int, int], None] | None = None,
) -> MeasuredPool:
    """Time each of ``cfgs`` (its graph with random weights) at every profiled batch size."""
    from lifelong.device.profile import PairedTimer

    t0 = time.perf_counter()
    timer = PairedTimer(profile, space)
    measured = []
    for i, cfg in enumerate(cfgs):
        measured.append({int(b): float(ms) for b, ms in timer.measure_subnet(cfg).items()})
        if progress is not None:
            progress(i + 1, len(cfgs))
    return MeasuredPool(
        tuple(str(c) for c in cfgs), tuple(measured), tuple(dict(p) for p in predicted_ms), time.perf_counter() - t0
    )


def measured_front(front: Front, pool: MeasuredPool, constraints: Constraints, predicted_front: int = 0) -> Front:
    """The non-dominated points of ``front`` (one point per timed candidate, predicted
    figures) on measured latency at ``constraints.batch``, with the latency budget applied
    to the measurement. Every kept point carries its measurement and ``latency_source``
    ``"graph"``; ``front.info`` gains ``measured_pick`` (the pool's summary, and the sizes of
    the ``predicted_front`` the search found and of the measured one)."""
    by_name = dict(zip(pool.subnets, pool.measured_ms, strict=True))
    points = [p for p in front.points if p.subnet in by_name]
    batch = constraints.batch
    acc = np.array([p.best_accuracy() for p in points])
    lat = np.array([by_name[p.subnet][batch] for p in points])
    size = np.array([float(p.model_bytes) for p in points])
    peak = np.array([float(p.peak_memory_bytes) for p in points])
    ok = np.flatnonzero(constraints.violation(Metrics(acc, lat, size, peak)) <= 0) if points else np.zeros(0, int)
    keep = ok[non_dominated(np.stack([-acc[ok], lat[ok], size[ok]], axis=1))] if len(ok) else ok
    kept = []
    for i in keep:
        p = points[int(i)]
        kept.append(replace(p, measured_latency_ms=by_name[p.subnet], latency_source="graph"))
    info = {
        **front.info,
        "measured_pick": pool.summary() | {"predicted_front": predicted_front, "measured_front": len(kept)},
    }
    logger.info(
        "measured picks: %d candidates timed in %.1f s; %d on the measured front", len(pool.subnets), pool.seconds, len(kept)
    )  # fmt: skip
    return Front(tuple(kept), info).sorted(batch)
