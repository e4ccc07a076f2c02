"""Search baselines, and NSGA-II against them at equal numbers of predictor evaluations.

The question is whether NSGA-II (``lifelong.search.nsga2``) earns its place: at the same number
of candidate evaluations (predictor + latency model calls, the search's only real cost), does
it find a better accuracy/latency front than uniform :func:`random_search` and than the
regularised evolution of OFA/APQ (:func:`regularized_evolution`)? One run says little, so
:func:`compare_algorithms` runs each algorithm over several seeds and reports the mean and
standard deviation of the hypervolume of its front, at the fixed reference of
:func:`lifelong.search.reference.reference_point`. Run by ``benchmarks/search_algos.py``; kept
out of the library because the service never runs them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lifelong.predictor.mlp import limit_blas_threads
from lifelong.search.evaluator import Constraints, Evaluator
from lifelong.search.nsga2 import Archive, Progress, SearchResult, fill_population, nsga2
from lifelong.search.reference import reference_point
from lifelong.space.config import SearchSpace

logger = logging.getLogger(__name__)

ALGORITHMS = ("nsga2", "random_search", "regularized_evolution")
"""The algorithms :func:`compare_algorithms` knows, by the names its results use."""


def random_search(
    space: SearchSpace,
    evaluator: Evaluator,
    constraints: Constraints | None = None,
    *,
    max_evaluations: int = 10_000,
    batch: int = 500,
    seed: int = 0,
    progress: Progress | None = None,
    blas_threads: int | None = 1,
) -> SearchResult:
    """Uniformly sampled distinct subnets, evaluated in batches: the baseline of baselines."""
    constraints = constraints or Constraints()
    rng = np.random.default_rng(seed)
    archive = Archive(evaluator, constraints, max_evaluations)
    t0, step, stale = time.perf_counter(), 0, 0
    with limit_blas_threads(blas_threads):
        while archive.left > 0 and stale < 10:
            before = archive.evaluations
            archive.evaluate([space.sample(rng) for _ in range(min(batch, archive.left))])
            stale = stale + 1 if archive.evaluations == before else 0  # a tiny space runs dry
            step += 1
            if progress is not None:
                progress(archive.progress("random", step, t0))
    return archive.result("random", list(range(archive.evaluations)), step, t0, seed)


def regularized_evolution(
    space: SearchSpace,
    evaluator: Evaluator,
    constraints: Constraints | None = None,
    *,
    max_evaluations: int = 10_000,
    latency_targets: int | Sequence[float] = 4,
    population: int = 100,
    sample_size: int = 25,
    mutation_prob: float = 0.1,
    batch: int = 16,
    seed: int = 0,
    progress: Progress | None = None,
    blas_threads: int | None = 1,
) -> SearchResult:
    """Aging evolution (Real et al. 2019) maximising accuracy under a latency target.

    Each step takes ``batch`` tournaments of ``sample_size`` random members of the population,
    mutates each winner, evaluates the children together and retires the oldest members
    (``batch`` children per step stand for Real et al.'s parallel workers). The fitness is the
    predicted accuracy of a candidate within the target and the constraints, and minus its
    violation otherwise.

    ``latency_targets``: latency limits, one run each with an equal share of the evaluations;
    an int ``k`` spreads ``k`` targets over the latency quantiles (10% to 90%) of a random
    initial population, capped by the constraints' latency limit.
    """
    constraints = constraints or Constraints()
    rng = np.random.default_rng(seed)
    archive = Archive(evaluator, constraints, max_evaluations)
    t0 = time.perf_counter()
    with limit_blas_threads(blas_threads):
        first = archive.evaluate(fill_population(space, rng, [], min(population, max_evaluations)))
        if isinstance(latency_targets, int):
            lat = archive.metrics.latency_ms[first]
            targets = list(np.quantile(lat, np.linspace(0.1, 0.9, latency_targets))) if latency_targets > 1 else []
            targets = targets or [constraints.latency_ms or float(lat.max())]
        else:
            targets = [float(t) for t in latency_targets]
        if constraints.latency_ms is not None:
            targets = [min(t, constraints.latency_ms) for t in targets]
        share, step, stale = archive.left // len(targets), 0, 0
        for k, target in enumerate(targets):
            run = Constraints(target, constraints.model_bytes, constraints.peak_memory_bytes, constraints.batch)
            stop = archive.evaluations + share if k < len(targets) - 1 else archive.budget
            pop = list(first)  # every run starts from the same random population

            def fitness(idx: list[int], run: Constraints = run) -> np.ndarray:
                m = archive.metrics.take(idx)
                v = run.violation(m)
                return np.where(v <= 0, m.accuracy, -v)

            while archive.evaluations < stop and stale < 100:  # a tiny space may run dry
                before = archive.evaluations
                fit = fitness(pop)
                children = []
                for _ in range(min(batch, stop - archive.evaluations)):
                    contenders = rng.choice(len(pop), size=min(sample_size, len(pop)), replace=False)
                    parent = archive.cfgs[pop[contenders[np.argmax(fit[contenders])]]]
                    children.append(space.mutate(parent, rng, mutation_prob))
                pop = (pop + archive.evaluate(children))[-population:]  # the oldest die
                stale = stale + 1 if archive.evaluations == before else 0
                step += 1
                if progress is not None:
                    progress(archive.progress("regularized_evolution", step, t0))
    result = archive.result("regularized_evolution", pop, step, t0, seed)
    result.info["latency_targets"] = [float(t) for t in targets]
    return result


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
