"""NSGA-II against its baselines at equal numbers of predictor evaluations, by hypervolume.

The issue asks whether NSGA-II earns its place: at the same number of candidate evaluations
(predictor + latency model calls, the search's only real cost), does it find a better
accuracy/latency front than :func:`~lifelong.search.nsga2.random_search` and than the regularised
evolution of OFA/APQ (:func:`~lifelong.search.nsga2.regularized_evolution`)? One run says little,
so :func:`compare_algorithms` runs each algorithm over several seeds and reports the mean and
standard deviation of the hypervolume of its front.

Hypervolumes compare only under one reference point. :func:`reference_point` fixes it before
any algorithm runs, from a seeded uniform sample of the space (its worst predicted accuracy,
and its worst latency or the latency budget, whichever is lower), so that it depends on the
space, the evaluator and the constraints, never on what an algorithm found; the same inputs
give the same reference in every comparison and every search record.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lifelong.predictor.mlp import limit_blas_threads
from lifelong.search.evaluator import Constraints, Evaluator
from lifelong.search.nsga2 import SearchResult, nsga2, random_search, regularized_evolution
from lifelong.space.config import SearchSpace

__all__ = [
    "ALGORITHMS",
    "REFERENCE_SAMPLES",
    "REFERENCE_SEED",
    "AlgorithmScore",
    "Comparison",
    "compare_algorithms",
    "reference_point",
]

logger = logging.getLogger(__name__)

ALGORITHMS = ("nsga2", "random_search", "regularized_evolution")
"""The algorithms :func:`compare_algorithms` knows, by the names its results use."""

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


@dataclass(frozen=True)
class AlgorithmScore:
    """One algorithm's runs, one entry per seed (in the order of :attr:`Comparison.seeds`)."""

    algorithm: str
    hypervolumes: tuple[float, ...]
    evaluations: tuple[int, ...]
    front_sizes: tuple[int, ...]
    best_accuracy: tuple[float | None, ...]
    seconds: tuple[float, ...]

    @property
    def mean(self) -> float:
        return float(np.mean(self.hypervolumes))

    @property
    def std(self) -> float:
        """Sample standard deviation over the seeds (0 for a single seed)."""
        n = len(self.hypervolumes)
        return float(np.std(self.hypervolumes, ddof=1)) if n > 1 else 0.0

    @property
    def evaluations_per_s(self) -> float:
        seconds = sum(self.seconds)
        return sum(self.evaluations) / seconds if seconds > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "hypervolume_mean": self.mean,
            "hypervolume_std": self.std,
            "hypervolumes": list(self.hypervolumes),
            "evaluations": list(self.evaluations),
            "front_sizes": list(self.front_sizes),
            "best_accuracy": list(self.best_accuracy),
            "seconds": list(self.seconds),
            "evaluations_per_s": self.evaluations_per_s,
        }


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare_algorithms` measured.

    Attributes:
        reference: The ``(accuracy, latency_ms)`` reference every hypervolume was taken at.
        evaluations: The budget of distinct candidate evaluations each run had.
        seeds: The seeds, one run of every algorithm each.
        scores: Per algorithm, in the order they ran.
        settings: The algorithms' settings (population...), for the record.
    """

    reference: tuple[float, float]
    evaluations: int
    seeds: tuple[int, ...]
    scores: dict[str, AlgorithmScore]
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": {"accuracy": self.reference[0], "latency_ms": self.reference[1]},
            "evaluations": self.evaluations,
            "seeds": list(self.seeds),
            "settings": self.settings,
            "algorithms": {name: s.to_dict() for name, s in self.scores.items()},
        }


Runner = Callable[[int], SearchResult]


def compare_algorithms(
    space: SearchSpace,
    evaluator: Evaluator,
    constraints: Constraints | None = None,
    *,
    evaluations: int = 10_000,
    seeds: Sequence[int] = (0, 1, 2),
    population: int = 100,
    algorithms: Sequence[str] = ALGORITHMS,
    reference: tuple[float, float] | None = None,
    progress: Callable[[str, int, SearchResult], None] | None = None,
) -> Comparison:
    """Run each algorithm once per seed with ``evaluations`` candidate evaluations each.

    Args:
        space: The search space.
        evaluator: What every algorithm evaluates through (the predictor and latency model).
        constraints: Hard limits, the same for every algorithm.
        evaluations: Distinct candidate evaluations per run (NSGA-II may stop short when its
            population stops producing new subnets; the evaluations it used are reported).
        seeds: One run of every algorithm per seed.
        population: Population of NSGA-II and of the regularised evolution.
        algorithms: Names from :data:`ALGORITHMS`.
        reference: The hypervolume reference; by default :func:`reference_point`.
        progress: Called as ``progress(algorithm, seed, result)`` after every run.
    """
    unknown = [a for a in algorithms if a not in ALGORITHMS]
    if unknown or not algorithms:
        raise ValueError(f"unknown algorithms {unknown}; expected some of {list(ALGORITHMS)}")
    if not seeds:
        raise ValueError("compare_algorithms needs at least one seed")
    if evaluations < population:
        raise ValueError(f"evaluations ({evaluations}) must be at least the population ({population})")
    ref = reference if reference is not None else reference_point(space, evaluator, constraints)
    runners: dict[str, Runner] = {
        "nsga2": lambda seed: nsga2(
            space, evaluator, constraints, population=population, generations=10**9,
            max_evaluations=evaluations, seed=seed,
        ),
        "random_search": lambda seed: random_search(
            space, evaluator, constraints, max_evaluations=evaluations, seed=seed
        ),
        "regularized_evolution": lambda seed: regularized_evolution(
            space, evaluator, constraints, max_evaluations=evaluations, population=population, seed=seed
        ),
    }  # fmt: skip
    scores = {}
    for name in algorithms:
        hv, evals, sizes, best, secs = [], [], [], [], []
        for seed in seeds:
            r = runners[name](int(seed))
            hv.append(r.hypervolume(ref))
            evals.append(r.evaluations)
            sizes.append(len(r.front))
            best.append(float(r.front_metrics.accuracy.max()) if len(r.front) else None)
            secs.append(r.seconds)
            if progress is not None:
                progress(name, int(seed), r)
        scores[name] = AlgorithmScore(name, tuple(hv), tuple(evals), tuple(sizes), tuple(best), tuple(secs))
        logger.info("%s: hypervolume %.4g +- %.2g over %d seeds", name, scores[name].mean, scores[name].std, len(seeds))
    settings = {"population": population, "algorithms": list(algorithms)}
    return Comparison((float(ref[0]), float(ref[1])), evaluations, tuple(int(s) for s in seeds), scores, settings)
