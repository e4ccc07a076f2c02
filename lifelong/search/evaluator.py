"""What the search asks of a candidate subnet: predicted accuracy, latency, size and memory.

The search algorithms (:mod:`lifelong.search.nsga2`) see subnets only through an :class:`Evaluator`,
so that they run on any mix of accuracy predictor and cost model: the real ones
(:class:`PredictorEvaluator`: the numpy MLP, the device's latency table and the analytic cost
table), plain functions (:class:`FunctionEvaluator`, used by the tests and the baselines), or
measured values. :class:`Constraints` turns a policy's budgets into the hard constraints of the
search (Deb's constraint-domination, see :mod:`lifelong.search.nsga2`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from lifelong.errors import DataError
from lifelong.space.config import SubnetConfig

if TYPE_CHECKING:  # types only: lifelong imports no policy code at run time
    from lifelong.device.latency_table import CostTable, LatencyTable
    from lifelong.predictor.features import SubnetFeatures
    from lifelong.predictor.mlp import AccuracyPredictor
    from lifelong.search.front import Front
    from lifelong.space.codec import SubnetCodec
    from policies import Policy

__all__ = [
    "OBJECTIVES",
    "Constraints",
    "Evaluator",
    "FunctionEvaluator",
    "Metrics",
    "PredictorEvaluator",
    "measure_throughput",
]


OBJECTIVES = ("accuracy", "latency_ms", "model_bytes")
"""The search's objectives by default: accuracy up, latency and size down."""


@dataclass(frozen=True)
class Metrics:
    """Figures of ``N`` subnets, one array of shape ``(N,)`` each.

    Attributes:
        accuracy: Predicted top-1 accuracy in [0, 1] (maximised).
        latency_ms: Predicted latency of one batch at the search's batch size (minimised).
        model_bytes: Weight bytes of the model (minimised).
        peak_memory_bytes: Weights plus the peak of live activations, for the memory budget.
    """

    accuracy: np.ndarray
    latency_ms: np.ndarray
    model_bytes: np.ndarray
    peak_memory_bytes: np.ndarray

    def __post_init__(self) -> None:
        arrays = [np.asarray(getattr(self, f), np.float64).ravel() for f in _FIELDS]
        if len({a.shape for a in arrays}) != 1:
            raise DataError(f"metrics of different lengths: {[a.shape for a in arrays]}")
        for name, a in zip(_FIELDS, arrays, strict=True):
            if not np.isfinite(a).all():
                raise DataError(f"metric {name} has non-finite values")
            object.__setattr__(self, name, a)

    def __len__(self) -> int:
        return len(self.accuracy)

    def objectives(self, names: Sequence[str] = OBJECTIVES) -> np.ndarray:
        """``(N, len(names))`` values to minimise: ``-accuracy`` and the costs, by name."""
        cols = []
        for name in names:
            if name not in OBJECTIVES + ("peak_memory_bytes",):
                raise ValueError(f"unknown objective {name!r}; expected some of {OBJECTIVES + ('peak_memory_bytes',)}")
            cols.append(-self.accuracy if name == "accuracy" else getattr(self, name))
        return np.stack(cols, axis=1)

    def take(self, idx: np.ndarray | Sequence[int]) -> Metrics:
        idx = np.asarray(idx, dtype=np.int64)
        return Metrics(*(getattr(self, f)[idx] for f in _FIELDS))

    @staticmethod
    def concat(parts: Sequence[Metrics]) -> Metrics:
        if not parts:
            return Metrics(*([np.zeros(0)] * len(_FIELDS)))
        return Metrics(*(np.concatenate([getattr(p, f) for p in parts]) for f in _FIELDS))


_FIELDS = ("accuracy", "latency_ms", "model_bytes", "peak_memory_bytes")


@runtime_checkable
class Evaluator(Protocol):
    """Anything that gives :class:`Metrics` for a batch of subnets."""

    def evaluate(self, cfgs: Sequence[SubnetConfig]) -> Metrics: ...


@dataclass(frozen=True)
class Constraints:
    """Hard limits of a search; ``None`` is no limit. ``batch`` is the batch latency is taken at.

    A candidate's *violation* is the sum of its relative excesses over the limits (0 when it
    meets them all), so that constraints of different units weigh alike.
    """

    latency_ms: float | None = None
    model_bytes: float | None = None
    peak_memory_bytes: float | None = None
    batch: int = 1

    def __post_init__(self) -> None:
        for name in ("latency_ms", "model_bytes", "peak_memory_bytes"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"constraint {name} must be > 0 or None, got {v!r}")
        if self.batch < 1:
            raise ValueError(f"constraint batch must be >= 1, got {self.batch!r}")

    @classmethod
    def from_policy(cls, policy: Policy) -> Constraints:
        """The policy's budgets at the policy's batch size."""
        b = policy.budgets
        return cls(b.latency_ms_p95, b.model_bytes, b.peak_memory_bytes, policy.target.batch)

    def violation(self, m: Metrics) -> np.ndarray:
        """``(N,)`` summed relative excess over the limits; 0 for a feasible candidate."""
        out = np.zeros(len(m))
        for limit, value in (
            (self.latency_ms, m.latency_ms),
            (self.model_bytes, m.model_bytes),
            (self.peak_memory_bytes, m.peak_memory_bytes),
        ):
            if limit is not None:
                out += np.maximum(0.0, value / limit - 1.0)
        return out


_Fn = Callable[[Sequence[SubnetConfig]], Any]


class FunctionEvaluator:
    """An evaluator made of plain functions, each mapping a list of subnets to ``(N,)`` values.

    Args:
        accuracy: Predicted accuracy.
        latency_ms: Predicted latency at the search's batch size.
        model_bytes: Model size.
        peak_memory_bytes: Peak memory; left out, the model bytes stand for it.
    """

    def __init__(self, accuracy: _Fn, latency_ms: _Fn, model_bytes: _Fn, peak_memory_bytes: _Fn | None = None) -> None:
        self.fns = (accuracy, latency_ms, model_bytes, peak_memory_bytes)

    def evaluate(self, cfgs: Sequence[SubnetConfig]) -> Metrics:
        acc, lat, size, peak = self.fns
        b = np.asarray(size(cfgs), np.float64)
        return Metrics(acc(cfgs), lat(cfgs), b, b if peak is None else peak(cfgs))


class PredictorEvaluator:
    """The real evaluator: numpy MLP, device latency table and analytic cost table.

    The subnets of a batch are walked once into integer codes; the predictor's inputs, the
    latency rows and the costs are then numpy gathers over the whole batch
    (:mod:`lifelong.space.codec`).

    Args:
        predictor: Fitted accuracy predictor over this space's features.
        latency: Latency table compiled from the device profile.
        batch: Batch size the search optimises latency at (one the profile measured).
        costs: Cost table; built from the latency table's space and codec when left out.
        features: The predictor's inputs; by default the ones named in ``predictor.meta
            ["features"]``, or, for a predictor without that note, the ones its input size fits.
        measured: Top-1 measured on the predictor's validation images, by canonical subnet
            name; these subnets get their measurement instead of the prediction. The
            predictor is smooth and rates the neighbours of the largest subnet above the
            largest itself; with the measurement the accurate corner keeps its place.
    """

    def __init__(
        self,
        predictor: AccuracyPredictor,
        latency: LatencyTable,
        batch: int = 1,
        costs: CostTable | None = None,
        features: SubnetFeatures | None = None,
        measured: Mapping[str, float] | None = None,
    ) -> None:
        from lifelong.device.latency_table import CostTable
        from lifelong.predictor.features import SubnetFeatures

        self.codec: SubnetCodec = latency.codec
        self.costs = costs or CostTable(latency.space, self.codec)
        noted = predictor.meta.get("features")
        if features is None:
            analytic = noted != "onehot-1" if noted else predictor.input_dim != self.codec.encoding_length
            features = SubnetFeatures(latency.space, analytic=analytic, codec=self.codec, costs=self.costs)
        if noted is not None and noted != features.name:
            raise DataError(
                f"the predictor was trained on features {noted!r}, the evaluator computes {features.name!r}"
            )
        if predictor.input_dim != features.length:
            raise DataError(
                f"the predictor reads inputs of length {predictor.input_dim}, this search space gives "
                f"{features.length} ({features.name}): retrain it for this space"
            )
        latency._batch_index(batch)  # fails early, naming the profiled batches
        self.predictor, self.latency, self.batch, self.features = predictor, latency, batch, features
        self.measured = dict(measured or {})

    def evaluate(self, cfgs: Sequence[SubnetConfig]) -> Metrics:
        codes = self.codec.codes(cfgs)  # (N, code length)
        size = self.costs.weight_bytes(codes)
        accuracy = self.predictor.predict(self.features(codes))
        if self.measured:
            for i, cfg in enumerate(cfgs):
                known = self.measured.get(str(cfg))
                if known is not None:
                    accuracy[i] = known
        return Metrics(
            accuracy,
            self.latency.predict(codes, self.batch),
            size,
            size + self.costs.peak_activation_bytes(codes),
        )

    def front(self, cfgs: Sequence[SubnetConfig], **info: Any) -> Front:
        """A :class:`~lifelong.search.front.Front` of ``cfgs`` with latency at every profiled batch."""
        from lifelong.search.front import Front

        codes = self.codec.codes(cfgs)
        m = self.evaluate(cfgs)
        return Front.from_arrays(
            [str(c) for c in cfgs],
            m.accuracy,
            self.latency.predict_all(codes),
            m.model_bytes,
            m.peak_memory_bytes,
            info=info,
        )


def measure_throughput(
    evaluator: Evaluator, cfgs: Sequence[SubnetConfig], *, batch: int = 1000, repeats: int = 3
) -> dict[str, float]:
    """Candidate evaluations per second of ``evaluator`` on ``cfgs``, in batches of ``batch``.

    Returns the best of ``repeats`` passes (the machine may be shared), with the seconds per
    pass, so that a benchmark can report the figure the issue asks for (>= 20k/s).
    """
    from lifelong.predictor.mlp import limit_blas_threads

    if not cfgs:
        raise DataError("measure_throughput needs at least one subnet")
    best = np.inf
    with limit_blas_threads(1):
        for _ in range(repeats):
            t0 = time.perf_counter()
            for start in range(0, len(cfgs), batch):
                evaluator.evaluate(cfgs[start : start + batch])
            best = min(best, time.perf_counter() - t0)
    return {"evaluations_per_s": len(cfgs) / best, "seconds": best, "subnets": float(len(cfgs)), "batch": batch}
