"""The hypervolume's reference point, fixed from the space before any search runs.

Hypervolumes compare only under one reference point. :func:`reference_point` fixes it from a
seeded uniform sample of the space (its worst predicted accuracy, and its worst latency or the
latency budget, whichever is lower), so that it depends on the space, the evaluator and the
constraints, never on what a search found; the same inputs give the same reference in every
search record and every comparison of algorithms (``benchmarks/search_baselines.py``).
"""

from __future__ import annotations

import numpy as np

from lifelong.predictor.mlp import limit_blas_threads
from lifelong.search.evaluator import Constraints, Evaluator
from lifelong.space.config import SearchSpace

__all__ = ["REFERENCE_SAMPLES", "REFERENCE_SEED", "reference_point"]

REFERENCE_SAMPLES = 1000
REFERENCE_SEED = 20_260_101  # fixed: the reference must not move with the search's seed


def reference_point(
    space: SearchSpace,
    evaluator: Evaluator,
    constraints: Constraints | None = None,
    *,
    samples: int = REFERENCE_SAMPLES,
    seed: int = REFERENCE_SEED,
) -> tuple[float, float]:
    """A fixed ``(accuracy, latency_ms)`` reference for hypervolumes of fronts of ``space``.

    The worst predicted accuracy of ``samples`` uniformly sampled subnets, and their worst
    latency, capped by the constraints' latency limit (points past it are infeasible anyway,
    and a limit far above every subnet would only add the same empty area to every front).
    These evaluations are not counted against any algorithm's budget.
    """
    if samples < 2:
        raise ValueError(f"samples must be >= 2, got {samples}")
    rng = np.random.default_rng(seed)
    with limit_blas_threads(1):
        m = evaluator.evaluate([space.sample(rng) for _ in range(samples)])
    latency = float(m.latency_ms.max())
    if constraints is not None and constraints.latency_ms is not None:
        latency = min(latency, float(constraints.latency_ms))
    return float(m.accuracy.min()), latency
