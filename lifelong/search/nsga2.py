"""Multi-objective search of the space: NSGA-II over an archive of evaluated subnets.

:func:`nsga2` is NSGA-II (Deb, Pratap, Agarwal and Meyarivan, "A fast and elitist
multiobjective genetic algorithm: NSGA-II", IEEE TEVC 2002) over three objectives: predicted
accuracy (maximised), predicted latency at the policy's batch size and model bytes (both
minimised). A policy's budgets are hard constraints handled by Deb's *constraint-domination*
(same paper, section VI): a feasible candidate beats an infeasible one, of two infeasible ones
the one with the smaller violation wins, and feasible ones compare by Pareto rank and crowding
distance. Parents are picked by binary tournament; children come from the search space's own
uniform crossover and per-gene mutation, so every child is a valid subnet.

The baselines it was measured against at the same number of candidate evaluations (uniform
random search, and the regularised evolution of OFA/APQ) live in
``benchmarks/search_baselines.py``: they are measurements, not something the service runs.

Every search evaluates through an :class:`~lifelong.search.evaluator.Evaluator`; evaluations are
cached by subnet name and counted once per distinct subnet, and the returned front is the set
of non-dominated feasible subnets among *everything evaluated*, so results compare fairly.
:func:`lifelong.search.pareto.hypervolume` measures a front in the accuracy/latency plane.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from lifelong.errors import DataError, SpaceError
from lifelong.predictor.mlp import limit_blas_threads
from lifelong.search.evaluator import OBJECTIVES, Constraints, Evaluator, Metrics
from lifelong.search.pareto import crowding_by_rank, hypervolume, non_dominated, ranks_by_constraint_domination
from lifelong.space.config import SearchSpace, SubnetConfig

__all__ = [
    "Archive",
    "Progress",
    "SearchProgress",
    "SearchResult",
    "fill_population",
    "nsga2",
]

logger = logging.getLogger(__name__)


# -- results and the shared evaluation archive --------------------------------------------------
@dataclass(frozen=True)
class SearchProgress:
    """Passed to the ``progress`` callback after every generation (or batch of a baseline)."""

    algorithm: str
    step: int
    evaluations: int
    max_evaluations: int
    feasible: int
    best_accuracy: float | None
    seconds: float


@dataclass
class SearchResult:
    """What a search found; ``front`` is ordered by latency. ``evaluated`` is every distinct
    subnet evaluated, with ``evaluated_metrics`` (what measured picks choose from)."""

    algorithm: str
    front: list[SubnetConfig]
    front_metrics: Metrics
    population: list[SubnetConfig]
    evaluations: int
    steps: int
    seconds: float
    seed: int
    feasible: int
    warm_started: int = 0
    info: dict[str, object] = field(default_factory=dict)
    evaluated: list[SubnetConfig] = field(default_factory=list, repr=False)
    evaluated_metrics: Metrics | None = field(default=None, repr=False)

    def hypervolume(self, ref: tuple[float, float]) -> float:
        """:func:`hypervolume` of the front in the (accuracy, latency) plane."""
        return hypervolume(self.front_metrics.accuracy, self.front_metrics.latency_ms, ref)

    @property
    def names(self) -> list[str]:
        return [str(c) for c in self.front]


class Archive:
    """Every distinct subnet evaluated, its metrics, and the evaluation budget: what every
    search (NSGA-II here, the baselines in ``benchmarks/search_baselines.py``) evaluates
    through, so that results at equal evaluations compare fairly."""

    def __init__(self, evaluator: Evaluator, constraints: Constraints, budget: int) -> None:
        self.evaluator, self.constraints, self.budget = evaluator, constraints, budget
        self.index: dict[str, int] = {}
        self.cfgs: list[SubnetConfig] = []
        self.parts: list[Metrics] = []
        self._metrics: Metrics | None = None

    @property
    def evaluations(self) -> int:
        return len(self.cfgs)

    @property
    def left(self) -> int:
        return self.budget - len(self.cfgs)

    def evaluate(self, cfgs: Sequence[SubnetConfig]) -> list[int]:
        """Archive indexes of ``cfgs``, evaluating the new ones; new ones past the budget are
        dropped (so the result may be shorter than ``cfgs``)."""
        out, new = [], []
        for cfg in cfgs:
            name = str(cfg)
            i = self.index.get(name)
            if i is None:
                if len(self.cfgs) >= self.budget:
                    continue
                i = self.index[name] = len(self.cfgs)
                self.cfgs.append(cfg)
                new.append(cfg)
            out.append(i)
        if new:
            m = self.evaluator.evaluate(new)
            if len(m) != len(new):
                raise DataError(f"the evaluator returned {len(m)} results for {len(new)} subnets")
            self.parts.append(m)
            self._metrics = None
        return out

    @property
    def metrics(self) -> Metrics:
        if self._metrics is None:
            self._metrics = Metrics.concat(self.parts)
            self.parts = [self._metrics]
        return self._metrics

    def violation(self, idx: Sequence[int]) -> np.ndarray:
        return self.constraints.violation(self.metrics.take(idx))

    def progress(self, algorithm: str, step: int, t0: float) -> SearchProgress:
        m = self.metrics
        ok = self.constraints.violation(m) <= 0
        best = float(m.accuracy[ok].max()) if ok.any() else None
        return SearchProgress(
            algorithm, step, self.evaluations, self.budget, int(ok.sum()), best, time.perf_counter() - t0
        )

    def result(
        self,
        algorithm: str,
        population: list[int],
        steps: int,
        t0: float,
        seed: int,
        objectives: Sequence[str] = OBJECTIVES,
    ) -> SearchResult:
        m = self.metrics
        ok = np.flatnonzero(self.constraints.violation(m) <= 0)
        front = ok[non_dominated(m.take(ok).objectives(objectives))] if len(ok) else ok
        front = front[np.lexsort((-m.accuracy[front], m.latency_ms[front]))]
        return SearchResult(
            algorithm,
            [self.cfgs[i] for i in front],
            m.take(front),
            [self.cfgs[i] for i in population],
            self.evaluations,
            steps,
            time.perf_counter() - t0,
            seed,
            len(ok),
            evaluated=list(self.cfgs),
            evaluated_metrics=m,
        )


def _initial(space: SearchSpace, initial: Sequence[SubnetConfig | str]) -> list[SubnetConfig]:
    """Valid, distinct warm-start subnets; ones from another space are skipped with a warning."""
    out, seen = [], set()
    for item in initial:
        try:
            cfg = space.parse(item) if isinstance(item, str) else space.validate(item)
        except SpaceError as exc:
            logger.warning("warm start: skipping %s: %s", item, exc)
            continue
        if str(cfg) not in seen:
            seen.add(str(cfg))
            out.append(cfg)
    return out


def fill_population(
    space: SearchSpace, rng: np.random.Generator, cfgs: list[SubnetConfig], n: int
) -> list[SubnetConfig]:
    """``cfgs`` topped up to ``n`` distinct subnets with uniform samples (fewer if the space
    runs dry)."""
    seen = {str(c) for c in cfgs}
    for _ in range(50 * n):
        if len(cfgs) >= n:
            break
        cfg = space.sample(rng)
        if str(cfg) not in seen:
            seen.add(str(cfg))
            cfgs.append(cfg)
    return cfgs


Progress = Callable[[SearchProgress], None]


# -- NSGA-II ------------------------------------------------------------------------------------
def nsga2(
    space: SearchSpace,
    evaluator: Evaluator,
    constraints: Constraints | None = None,
    *,
    population: int = 100,
    generations: int = 100,
    max_evaluations: int | None = None,
    crossover_prob: float = 0.9,
    mutation_prob: float = 0.1,
    initial: Sequence[SubnetConfig | str] = (),
    contenders: Sequence[SubnetConfig | str] = (),
    seed: int = 0,
    objectives: Sequence[str] = OBJECTIVES,
    progress: Progress | None = None,
    blas_threads: int | None = 1,
) -> SearchResult:
    """NSGA-II with constraint-domination (see the module docstring).

    Args:
        space: Where subnets come from and how they vary.
        evaluator: Predicted accuracy, latency, bytes and memory of subnets.
        constraints: Hard limits (a policy's budgets); none by default.
        population: Individuals per generation.
        generations: Generations after the initial one.
        max_evaluations: Stop once this many distinct subnets were evaluated.
        crossover_prob: Chance that a child is a crossover of two parents (else a copy).
        mutation_prob: Chance that each gene of a child is resampled.
        initial: Warm start: subnets (or names) seeded into the first population, e.g. the
            cached front (evenly thinned when it is larger than the population); the rest
            of the population is sampled. Names outside the space are skipped with a warning.
        contenders: Subnets evaluated with the first population and competing with it for
            its places (the sandwich corners, which random draws never reach).
        seed: Same seed, same evaluator, same result.
        objectives: Names of :class:`~lifelong.search.evaluator.Metrics` fields to optimise
            (accuracy up, the others down); ``("accuracy", "latency_ms")`` searches the
            accuracy/latency plane alone. The returned front is non-dominated in these.
        progress: Called after every generation.
        blas_threads: BLAS threads for the predictor (see ``limit_blas_threads``).
    """
    if population < 4:
        raise ValueError(f"population must be >= 4, got {population}")
    budget = max_evaluations if max_evaluations is not None else population * (generations + 1)
    if budget < population:
        raise ValueError(f"max_evaluations ({budget}) must be at least the population ({population})")
    constraints = constraints or Constraints()
    rng = np.random.default_rng(seed)
    archive = Archive(evaluator, constraints, budget)
    t0 = time.perf_counter()
    seeds = _initial(space, initial)
    if len(seeds) > population:  # keep the spread of a front ordered by latency
        seeds = [seeds[i] for i in np.unique(np.linspace(0, len(seeds) - 1, population).round().astype(int))]
    with limit_blas_threads(blas_threads):
        pop = archive.evaluate(fill_population(space, rng, list(seeds), population))
        taken = {str(archive.cfgs[i]) for i in pop}
        extra = [c for c in _initial(space, contenders) if str(c) not in taken]
        if extra:  # they compete with the first population for its places
            merged = list(dict.fromkeys(pop + archive.evaluate(extra)))
            F = archive.metrics.take(merged).objectives(objectives)
            ranks = ranks_by_constraint_domination(F, archive.violation(merged))
            pop = [merged[i] for i in np.lexsort((-crowding_by_rank(F, ranks), ranks))[:population]]
        gen, stale = 0, 0
        for gen in range(1, generations + 1):
            if archive.left <= 0 or stale >= 20:  # the budget is spent, or nothing new comes up
                break
            before = archive.evaluations
            F = archive.metrics.take(pop).objectives(objectives)
            ranks = ranks_by_constraint_domination(F, archive.violation(pop))
            crowd = crowding_by_rank(F, ranks)

            # binary tournaments, two per child: lower rank wins, then the less crowded
            i, j = rng.integers(len(pop), size=(2, population, 2))
            i_wins = (ranks[i] < ranks[j]) | ((ranks[i] == ranks[j]) & (crowd[i] > crowd[j]))
            parents = np.where(i_wins, i, j)  # (children, 2)
            cross = rng.random(population) < crossover_prob
            children = []
            for (pa, pb), c in zip(parents, cross, strict=True):
                a, b = archive.cfgs[pop[pa]], archive.cfgs[pop[pb]]
                children.append(space.mutate(space.crossover(a, b, rng) if c else a, rng, mutation_prob))
            merged = list(dict.fromkeys(pop + archive.evaluate(children)))  # distinct, in order
            F = archive.metrics.take(merged).objectives(objectives)
            ranks = ranks_by_constraint_domination(F, archive.violation(merged))
            crowd = crowding_by_rank(F, ranks)
            order = np.lexsort((-crowd, ranks))[:population]  # by rank, then the least crowded
            pop = [merged[i] for i in order]
            stale = stale + 1 if archive.evaluations == before else 0
            if progress is not None:
                progress(archive.progress("nsga2", gen, t0))
    result = archive.result("nsga2", pop, gen, t0, seed, objectives)
    result.warm_started = len(seeds)
    logger.info(
        "nsga2: %d evaluations in %.1f s, %d feasible, front of %d",
        result.evaluations, result.seconds, result.feasible, len(result.front),
    )  # fmt: skip
    return result
