"""One search of the front for a policy: predictor + device profile + policy -> a stored Front.

This is what ``lifelong search`` runs, and what the service's re-search runs after drift:
NSGA-II (:func:`lifelong.search.nsga2.nsga2`) over predicted accuracy, predicted latency at the
policy's batch size and model bytes, with the policy's budgets as hard constraints,
warm-started from the cached front when that front comes from the same search space. The
result is a :class:`~lifelong.search.front.Front` whose ``info`` is the search's record: seed,
budget, evaluations and evaluations per second, hypervolume (at the fixed reference of
:func:`lifelong.search.reference.reference_point`), the policy, and whatever the caller adds
(the predictor's and profile's file hashes, see :func:`input_record`), so a front can always
be traced to what made it.

Measured figures (accuracy, latency, size of exported points) of the cached front are kept
for the subnets that are still on the new front: they are measurements of those exact
subnets, and a re-search that only moved the front should not throw them away.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lifelong.device.latency_table import LatencyTable
from lifelong.errors import DataError
from lifelong.persist.digest import file_sha256
from lifelong.search.evaluator import Constraints, Metrics, PredictorEvaluator
from lifelong.search.front import Front
from lifelong.search.measure import MeasureSettings, candidate_pool, measure_pool, measured_front
from lifelong.search.nsga2 import SearchProgress, SearchResult, nsga2
from lifelong.search.reference import reference_point
from lifelong.space.config import SearchSpace, SpaceConfig, SubnetConfig

if TYPE_CHECKING:  # types only: lifelong imports no policy code at run time
    from lifelong.device.profile import DeviceProfile
    from lifelong.predictor.mlp import AccuracyPredictor
    from lifelong.predictor.samples import PredictorData
    from policies import Policy

__all__ = [
    "FrontSearch",
    "SearchSettings",
    "file_sha256",
    "input_record",
    "search_front",
    "space_for_predictor",
    "space_hash",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchSettings:
    """How one search runs.

    Attributes:
        evaluations: Budget of distinct candidate evaluations (predictor + latency model).
            At the >= 20k evaluations per second the issue asks for, the default takes
            about a second of evaluation.
        population: NSGA-II's population.
        seed: Same seed, same inputs, same front.
        crossover_prob: Chance that a child is a crossover of two parents.
        mutation_prob: Chance that each gene of a child is resampled.
        warm_start: Seed the first population with the cached front (same space only).
        blas_threads: BLAS threads for the predictor (one leaves a core to serving).
        measure: Measured picks (:mod:`lifelong.search.measure`): how many of the search's
            best candidates are timed on this device and the front rebuilt on their measured
            latency. Off by default here (no timing in a library call unless asked);
            ``lifelong search`` and the service's re-search turn it on.
    """

    evaluations: int = 20_000
    population: int = 100
    seed: int = 0
    crossover_prob: float = 0.9
    mutation_prob: float = 0.1
    warm_start: bool = True
    blas_threads: int | None = 1
    measure: MeasureSettings = field(default_factory=lambda: MeasureSettings(candidates=0))

    def __post_init__(self) -> None:
        problems = []
        if self.population < 4:
            problems.append(f"population must be >= 4, got {self.population}")
        if self.evaluations < self.population:
            problems.append(f"the budget of evaluations ({self.evaluations}) must be at least the population "
                            f"({self.population})")  # fmt: skip
        for name in ("crossover_prob", "mutation_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if problems:
            raise ValueError("invalid search settings: " + "; ".join(problems))


@dataclass(frozen=True)
class FrontSearch:
    """What :func:`search_front` produced.

    Attributes:
        front: The new front, its ``info`` holding the search's record.
        result: NSGA-II's own result (population, front metrics at the policy's batch).
        warm_started: Subnets of the cached front seeded into the first population.
        warm_start_note: Why a cached front was not used (another search space), else None.
        measurements_kept: Points whose measured figures were carried over from the cached front.
    """

    front: Front
    result: SearchResult
    warm_started: int = 0
    warm_start_note: str | None = None
    measurements_kept: int = 0


def corner_subnets(space: SearchSpace) -> list[SubnetConfig]:
    """The sandwich corners (:meth:`SearchSpace.corners`): the accurate end of the space is one
    corner, so the corners compete for places in the first population and evolution works
    inward from them."""
    return space.corners()


def measured_accuracies(data: PredictorData, predictor: AccuracyPredictor) -> tuple[dict[str, float], str]:
    """The measured validation top-1 of ``data`` usable in a search with ``predictor``, and why.

    Only measurements of the supernet the predictor was built for count: another checkpoint's
    subnets have other accuracies.
    """
    want = predictor.meta.get("checkpoint_sha256")
    have = data.provenance.checkpoint_sha256
    if not want or want != have:
        return {}, f"predictor data of checkpoint {have[:12]} does not match the predictor's ({str(want)[:12]})"
    measured = data.measured_top1()
    return measured, f"{len(measured)} subnets measured on the validation split use their measurement"


def space_hash(space: SearchSpace) -> str:
    """A short fingerprint of the space's definition: fronts of other spaces do not warm-start."""
    text = json.dumps(space.config.to_dict(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def space_for_predictor(predictor: AccuracyPredictor) -> SearchSpace:
    """The space a predictor was trained over: ``meta["space"]`` (a ``SpaceConfig.to_dict()``),
    else the default space."""
    described = predictor.meta.get("space")
    if isinstance(described, Mapping):
        return SearchSpace(SpaceConfig.from_dict(dict(described)))
    return SearchSpace()


def input_record(predictor_path: str | Path, profile_path: str | Path) -> dict[str, str]:
    """The files a search read, with their hashes, for the front's record."""
    return {
        "predictor": str(predictor_path),
        "predictor_sha256": file_sha256(predictor_path),
        "profile": str(profile_path),
        "profile_sha256": file_sha256(profile_path),
    }


class _Timed:
    """An evaluator that adds up the time spent in it: the search's rate is bounded by the
    operators (mutation, crossover, sorting) as much as by the predictor, and the record
    keeps the two apart."""

    def __init__(self, inner: PredictorEvaluator) -> None:
        self.inner, self.seconds, self.count = inner, 0.0, 0

    def evaluate(self, cfgs: Sequence[SubnetConfig]) -> Metrics:
        t0 = time.perf_counter()
        out = self.inner.evaluate(cfgs)
        self.seconds += time.perf_counter() - t0
        self.count += len(cfgs)
        return out


def _other_space(cached: Front | None, space: SearchSpace) -> str | None:
    """Why ``cached`` cannot be used with ``space`` (None when it can, or when there is none)."""
    if cached is None:
        return None
    theirs = cached.info.get("space_hash")
    if theirs != space_hash(space):
        return f"the cached front comes from another search space ({theirs!r}; this one is {space_hash(space)!r})"
    return None


def _keep_measurements(front: Front, cached: Front | None) -> tuple[Front, int]:
    if cached is None:
        return front, 0
    kept = 0
    for point in front.points:
        try:
            old = cached[point.subnet]
        except KeyError:
            continue
        if old.measured_accuracy is None and old.measured_latency_ms is None and old.measured_model_bytes is None:
            continue
        # a fresh timing of the graph beats an old one; the exported model's own timing beats both
        old_latency = old.measured_latency_ms is not None and (
            point.measured_latency_ms is None or old.latency_source == "export"
        )
        front = front.with_measurement(
            point.subnet,
            accuracy=old.measured_accuracy,
            latency_ms=dict(old.measured_latency_ms) if old_latency and old.measured_latency_ms else None,
            model_bytes=old.measured_model_bytes,
            latency_source=old.latency_source if old_latency else None,
        )
        kept += 1
    return front, kept


def search_front(
    predictor: AccuracyPredictor,
    profile: DeviceProfile,
    policy: Policy,
    *,
    space: SearchSpace | None = None,
    settings: SearchSettings | None = None,
    cached: Front | None = None,
    progress: Callable[[SearchProgress], None] | None = None,
    record: Mapping[str, Any] | None = None,
    measured: Mapping[str, float] | None = None,
    measure_progress: Callable[[int, int], None] | None = None,
) -> FrontSearch:
    """Search the front of ``space`` for ``policy`` and return it with the search's record.

    Args:
        predictor: The accuracy predictor.
        profile: The device's latency profile; it must have profiled the policy's batch size.
        policy: Budgets (hard constraints) and the batch size latency is optimised at.
        space: The search space; by default the predictor's (:func:`space_for_predictor`).
        settings: Budget, population, seed, warm start.
        cached: The cached front: the warm start, and the source of kept measurements.
        progress: Called after every generation.
        record: Extra JSON-able facts for the front's ``info`` (e.g. :func:`input_record`).
        measured: Measured validation top-1 by subnet name (:func:`measured_accuracies`),
            used instead of the prediction for those subnets.
        measure_progress: Called with (timed, total) after each candidate measured picks time.

    Raises:
        DataError: The predictor does not fit the space.
        ProfileError: The profile lacks the policy's batch size or rows of the space.
    """
    settings = settings or SearchSettings()
    space = space or space_for_predictor(predictor)
    constraints = Constraints.from_policy(policy)
    table = LatencyTable(profile, space)
    evaluator = PredictorEvaluator(predictor, table, batch=constraints.batch, measured=measured)
    note = _other_space(cached, space)
    if note is not None:
        logger.warning("cached front not used: %s", note)
        cached = None
    initial = [p.subnet for p in cached.points] if cached is not None and settings.warm_start else []
    created = time.time()
    timed = _Timed(evaluator)
    result = nsga2(
        space,
        timed,
        constraints,
        population=settings.population,
        generations=10**9,  # the budget of evaluations decides when to stop
        max_evaluations=settings.evaluations,
        crossover_prob=settings.crossover_prob,
        mutation_prob=settings.mutation_prob,
        initial=initial,
        contenders=corner_subnets(space),
        seed=settings.seed,
        progress=progress,
        blas_threads=settings.blas_threads,
    )
    ref = reference_point(space, evaluator, constraints)
    hv = result.hypervolume(ref)
    info: dict[str, Any] = {
        "algorithm": result.algorithm,
        "seed": settings.seed,
        "budget": settings.evaluations,
        "population": settings.population,
        "evaluations": result.evaluations,
        "generations": result.steps,
        "seconds": result.seconds,
        "evaluations_per_s": result.evaluations / result.seconds if result.seconds > 0 else None,
        "evaluator_evaluations_per_s": timed.count / timed.seconds if timed.seconds > 0 else None,
        "feasible": result.feasible,
        "hypervolume": hv,
        "hypervolume_reference": {"accuracy": ref[0], "latency_ms": ref[1], "batch": constraints.batch},
        "policy": policy.name,
        "batch": constraints.batch,
        "constraints": {
            "latency_ms": constraints.latency_ms,
            "model_bytes": constraints.model_bytes,
            "peak_memory_bytes": constraints.peak_memory_bytes,
        },
        "space_hash": space_hash(space),
        "space": space.describe(),
        "profile_fingerprint": dict(profile.fingerprint),
        "predictor_meta": dict(predictor.meta),
        "warm_started": result.warm_started,
        "measured_subnets": len(evaluator.measured),
        "created": created,
        **dict(record or {}),
    }
    if not result.front:
        logger.warning("no subnet met the policy %r's budgets in %d evaluations", policy.name, result.evaluations)
    front = evaluator.front(result.front, **info)
    if len(front) != len(result.front):  # an invariant of Front: one point per subnet
        raise DataError(f"the search returned {len(result.front)} subnets but the front holds {len(front)}")
    if settings.measure.candidates > 0 and result.evaluated_metrics is not None:
        pool_idx = candidate_pool(
            result.evaluated_metrics, constraints, settings.measure.candidates, settings.measure.slack
        )
        pool_cfgs = [result.evaluated[int(i)] for i in pool_idx]
        pool_front = evaluator.front(pool_cfgs, **info)
        pool = measure_pool(
            space, profile, pool_cfgs, [dict(pool_front[str(c)].latency_ms) for c in pool_cfgs], measure_progress
        )
        front = measured_front(pool_front, pool, constraints, predicted_front=len(front))
    front, kept = _keep_measurements(front, cached)
    on_validation = sorted(p.subnet for p in front.points if p.subnet in evaluator.measured)
    front = Front(
        front.sorted(constraints.batch).points,
        {**front.info, "measurements_kept": kept, "validation_measured": on_validation},
    )
    logger.info(
        "front of %d points for policy %r: %d evaluations (%.0f/s), hypervolume %.4g, warm start %d",
        len(front), policy.name, result.evaluations, info["evaluations_per_s"] or 0.0, hv, result.warm_started,
    )  # fmt: skip
    return FrontSearch(front, result, result.warm_started, note, kept)
