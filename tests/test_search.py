from __future__ import annotations

import logging

import numpy as np
import pytest
from benchmark_modules import load
from search_helpers import CODEC, SPACE, landscape, samples, structured_profile

from lifelong.device.latency_table import LatencyTable
from lifelong.device.profile import ProfileError
from lifelong.errors import DataError
from lifelong.predictor.features import SubnetFeatures
from lifelong.predictor.mlp import AccuracyPredictor, PredictorConfig
from lifelong.search.evaluator import (
    Constraints,
    Evaluator,
    FunctionEvaluator,
    Metrics,
    PredictorEvaluator,
    measure_throughput,
)
from lifelong.search.nsga2 import SearchProgress, nsga2
from lifelong.search.pareto import (
    crowding_distance,
    dominance,
    hypervolume,
    non_dominated,
    ranks_by_constraint_domination,
)
from policies import load_preset

EVALUATIONS = 3000
random_search = load("search_baselines").random_search
regularized_evolution = load("search_baselines").regularized_evolution


@pytest.fixture(scope="module")
def evaluator() -> FunctionEvaluator:
    return landscape()


@pytest.fixture(scope="module")
def runs(evaluator: FunctionEvaluator) -> dict[str, object]:
    """The three algorithms at one budget of evaluations, unconstrained."""
    return {
        "nsga2": nsga2(SPACE, evaluator, population=60, generations=10_000, max_evaluations=EVALUATIONS, seed=3),
        "random": random_search(SPACE, evaluator, max_evaluations=EVALUATIONS, seed=3),
        "evolution": regularized_evolution(SPACE, evaluator, max_evaluations=EVALUATIONS, seed=3),
    }


# -- Pareto machinery -----------------------------------------------------------------------------
def test_hypervolume_by_hand() -> None:
    # (accuracy, ms): (0.8, 0.5) and (0.9, 1.0) against (0.5, 2.0):
    # from 0.5 to 1.0 ms the best is 0.8 -> 0.5 * 0.3; from 1.0 to 2.0 ms 0.9 -> 1.0 * 0.4
    assert hypervolume([0.8, 0.9], [0.5, 1.0], ref=(0.5, 2.0)) == pytest.approx(0.15 + 0.4)
    # a dominated point, a point past the reference latency and one below its accuracy add nothing
    assert hypervolume([0.8, 0.9, 0.7, 0.99, 0.4], [0.5, 1.0, 1.5, 2.5, 0.1], ref=(0.5, 2.0)) == pytest.approx(0.55)
    assert hypervolume([], [], ref=(0.5, 2.0)) == 0.0
    with pytest.raises(DataError, match="as many accuracies as latencies"):
        hypervolume([0.8], [0.5, 1.0], ref=(0.5, 2.0))


def test_non_dominated_matches_brute_force_with_ties() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 7, 60, 400):
        F = rng.integers(0, 5, (n, 3)).astype(float)  # many equal rows and ties
        assert np.array_equal(non_dominated(F), ~dominance(F).any(0))
    assert non_dominated(np.zeros((0, 3))).shape == (0,)


def test_crowding_distance_by_hand() -> None:
    F = np.array([[0.0, 4.0], [1.0, 3.0], [3.0, 1.0], [4.0, 0.0]])
    d = crowding_distance(F)
    assert np.isinf(d[0]) and np.isinf(d[3])
    assert d[1] == pytest.approx((3 - 0) / 4 + (4 - 1) / 4)
    assert d[2] == pytest.approx((4 - 1) / 4 + (3 - 0) / 4)


def test_constraint_domination_ranks_feasible_first_then_by_violation() -> None:
    F = np.array([[0.0, 0.0], [1.0, 1.0], [-5.0, -5.0], [-9.0, -9.0], [2.0, 0.5]])
    violation = np.array([0.0, 0.0, 0.3, 0.1, 0.0])
    ranks = ranks_by_constraint_domination(F, violation)
    # feasible: row 0 dominates rows 1 and 4 -> ranks 0, 1, 1; then the infeasible by violation,
    # however good their objectives (row 3 before row 2)
    assert ranks.tolist() == [0, 1, 3, 2, 1]


def test_constraints_from_a_policy_and_their_violation() -> None:
    policy = load_preset("balanced")
    c = Constraints.from_policy(policy)
    assert (c.latency_ms, c.model_bytes, c.peak_memory_bytes, c.batch) == (5.0, 4_000_000, 64_000_000, 1)
    m = Metrics(np.array([0.9, 0.9]), np.array([4.0, 10.0]), np.array([1e6, 6e6]), np.array([1e6, 6e6]))
    assert c.violation(m).tolist() == pytest.approx([0.0, 1.0 + 0.5])
    with pytest.raises(ValueError, match="latency_ms must be > 0"):
        Constraints(latency_ms=0)
    with pytest.raises(DataError, match="different lengths"):
        Metrics(np.zeros(2), np.zeros(3), np.zeros(2), np.zeros(2))


# -- the algorithms -------------------------------------------------------------------------------
def test_same_seed_same_front_other_seed_other_front(evaluator: FunctionEvaluator) -> None:
    a = nsga2(SPACE, evaluator, population=20, generations=5, seed=7)
    b = nsga2(SPACE, evaluator, population=20, generations=5, seed=7)
    c = nsga2(SPACE, evaluator, population=20, generations=5, seed=8)
    assert a.names == b.names and np.array_equal(a.front_metrics.accuracy, b.front_metrics.accuracy)
    assert [str(x) for x in a.population] == [str(x) for x in b.population]
    assert a.names != c.names
    for algorithm in (random_search, regularized_evolution):
        r1 = algorithm(SPACE, evaluator, max_evaluations=300, seed=1)
        r2 = algorithm(SPACE, evaluator, max_evaluations=300, seed=1)
        assert r1.names == r2.names


def test_every_algorithm_spends_exactly_its_budget_and_returns_a_front(runs: dict[str, object]) -> None:
    for name, r in runs.items():
        assert r.evaluations == EVALUATIONS, name
        assert len(r.front) == len(r.front_metrics) > 5, name
        assert len({str(c) for c in r.front}) == len(r.front)
        lat = r.front_metrics.latency_ms
        assert np.all(np.diff(lat) >= 0), f"{name}: front not ordered by latency"
        assert non_dominated(r.front_metrics.objectives()).all(), f"{name}: a dominated point in the front"


def test_nsga2_beats_random_search_at_equal_evaluations(runs: dict[str, object]) -> None:
    fronts = runs.values()
    ref = (min(r.front_metrics.accuracy.min() for r in fronts), max(r.front_metrics.latency_ms.max() for r in fronts))
    hv = {name: r.hypervolume(ref) for name, r in runs.items()}
    assert hv["nsga2"] > 1.1 * hv["random"], hv
    assert hv["evolution"] > hv["random"], hv
    assert runs["nsga2"].front_metrics.accuracy.max() > runs["random"].front_metrics.accuracy.max()


def test_constraints_are_hard(evaluator: FunctionEvaluator) -> None:
    free = nsga2(SPACE, evaluator, population=30, generations=5, seed=2)
    budget = float(np.median(free.front_metrics.latency_ms))
    size = float(np.median(free.front_metrics.model_bytes))
    c = Constraints(latency_ms=budget, model_bytes=size)
    for r in (
        nsga2(SPACE, evaluator, c, population=30, generations=10, seed=2),
        random_search(SPACE, evaluator, c, max_evaluations=500, seed=2),
        regularized_evolution(SPACE, evaluator, c, max_evaluations=500, seed=2),
    ):
        assert r.front and r.feasible > 0, r.algorithm
        assert (r.front_metrics.latency_ms <= budget).all() and (r.front_metrics.model_bytes <= size).all()
    impossible = nsga2(SPACE, evaluator, Constraints(latency_ms=1e-6), population=10, generations=3, seed=2)
    assert impossible.front == [] and impossible.feasible == 0 and impossible.evaluations > 0


def test_warm_start_from_a_cached_front(evaluator: FunctionEvaluator, caplog: pytest.LogCaptureFixture) -> None:
    cold = nsga2(SPACE, evaluator, population=40, generations=20, seed=4)
    assert len(cold.front) > 40, "the test wants a front larger than the population"
    seeds = ["c99.k3w8a8.p_c1.k3w8a8.p_hg.ow8a8", "not a subnet"] + cold.names
    with caplog.at_level(logging.WARNING, logger="lifelong.search.nsga2"):
        warm = nsga2(SPACE, evaluator, population=40, generations=1, initial=seeds, seed=5)
    assert warm.warm_started == 40
    assert "skipping c99.k3w8a8" in caplog.text and "skipping not a subnet" in caplog.text
    ref = (float(cold.front_metrics.accuracy.min()), float(cold.front_metrics.latency_ms.max()))
    fresh = nsga2(SPACE, evaluator, population=40, generations=1, seed=5)
    # with one generation the warm start keeps most of what the long search found; a fresh one cannot
    assert warm.hypervolume(ref) > 0.9 * cold.hypervolume(ref) > fresh.hypervolume(ref)


def test_progress_is_reported_every_generation(evaluator: FunctionEvaluator) -> None:
    seen: list[SearchProgress] = []
    r = nsga2(SPACE, evaluator, population=20, generations=6, seed=1, progress=seen.append)
    assert [p.step for p in seen] == [1, 2, 3, 4, 5, 6] and r.steps == 6
    assert all(a.evaluations <= b.evaluations for a, b in zip(seen, seen[1:], strict=False))
    assert seen[-1].evaluations == r.evaluations and seen[-1].max_evaluations == 20 * 7
    assert seen[-1].best_accuracy == pytest.approx(float(r.front_metrics.accuracy.max()))
    steps: list[SearchProgress] = []
    random_search(SPACE, evaluator, max_evaluations=250, batch=100, progress=steps.append)
    assert [p.evaluations for p in steps] == [100, 200, 250]


def test_two_objective_search_and_bad_arguments(evaluator: FunctionEvaluator) -> None:
    r = nsga2(SPACE, evaluator, population=20, generations=5, seed=1, objectives=("accuracy", "latency_ms"))
    assert np.all(np.diff(r.front_metrics.accuracy) > 0), "a 2-D front rises with latency"
    with pytest.raises(ValueError, match="unknown objective 'speed'"):
        nsga2(SPACE, evaluator, population=20, generations=1, objectives=("accuracy", "speed"))
    with pytest.raises(ValueError, match="population must be >= 4"):
        nsga2(SPACE, evaluator, population=2)
    with pytest.raises(ValueError, match=r"max_evaluations \(10\) must be at least the population \(20\)"):
        nsga2(SPACE, evaluator, population=20, max_evaluations=10)


# -- the real evaluator ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_evaluator() -> PredictorEvaluator:
    """The production evaluator with an APQ-sized predictor (400-400), briefly trained."""
    features = SubnetFeatures(SPACE, codec=CODEC)
    predictor = AccuracyPredictor(features.length, PredictorConfig(max_epochs=3), meta={"features": features.name})
    cfgs = samples(300, seed=9)
    predictor.fit(features(cfgs), np.random.default_rng(0).random(300))
    return PredictorEvaluator(predictor, LatencyTable(structured_profile(), SPACE, CODEC), batch=1)


def test_predictor_evaluator_agrees_with_its_parts(real_evaluator: PredictorEvaluator) -> None:
    assert isinstance(real_evaluator, Evaluator)
    cfgs = samples(50, seed=10)
    m = real_evaluator.evaluate(cfgs)
    profile = structured_profile()
    assert np.array_equal(m.latency_ms, [profile.predict(SPACE, c, 1) for c in cfgs])
    assert np.array_equal(m.accuracy, real_evaluator.predictor.predict(real_evaluator.features(cfgs)))
    costs = real_evaluator.costs
    assert np.array_equal(m.peak_memory_bytes, costs.weight_bytes(cfgs) + costs.peak_activation_bytes(cfgs))
    front = real_evaluator.front(cfgs[:3], seed=1)
    assert [p.subnet for p in front.points] == [str(c) for c in cfgs[:3]] and front.info == {"seed": 1}
    assert front.points[0].latency_at(32) == profile.predict(SPACE, cfgs[0], 32)


def test_predictor_evaluator_refuses_a_mismatched_predictor(real_evaluator: PredictorEvaluator) -> None:
    table = real_evaluator.latency
    plain = AccuracyPredictor(SPACE.encoding_length(), PredictorConfig(hidden=(4,)))
    PredictorEvaluator(plain, table)  # a plain one-hot predictor gets one-hot features
    with pytest.raises(DataError, match=r"inputs of length 7, this search space gives \d+"):
        PredictorEvaluator(AccuracyPredictor(7), table, features=real_evaluator.features)
    noted = AccuracyPredictor(SPACE.encoding_length(), PredictorConfig(hidden=(4,)), meta={"features": "onehot-9"})
    with pytest.raises(DataError, match="trained on features 'onehot-9'"):
        PredictorEvaluator(noted, table)
    with pytest.raises(ProfileError, match="batch 4 was not profiled"):
        PredictorEvaluator(real_evaluator.predictor, table, batch=4)


def test_evaluations_per_second(real_evaluator: PredictorEvaluator) -> None:
    """The issue asks >= 20k/s (predictor + latency model) on two cores. Asserted at half of
    that, so that a busy CI machine does not fail it; benchmarks report the figure itself."""
    speed = measure_throughput(real_evaluator, samples(10_000, seed=11), batch=1000, repeats=3)
    assert speed["evaluations_per_s"] >= 10_000, speed


def test_the_sandwich_corners_compete_for_the_first_population(evaluator: FunctionEvaluator) -> None:
    """The most accurate subnet is a corner no random draw reaches; seeded as a contender it
    reaches the front, without displacing the warm start."""
    from lifelong.search.front_search import corner_subnets
    from lifelong.space.config import Precision

    largest = SPACE.largest(Precision())
    corners = corner_subnets(SPACE)
    assert largest in corners and SPACE.smallest(Precision(8, 8)) in corners and len(set(corners)) == len(corners)
    plain = nsga2(SPACE, evaluator, population=20, generations=3, seed=5)
    seeded = nsga2(SPACE, evaluator, population=20, generations=3, seed=5, contenders=corners)
    assert str(largest) not in plain.names and str(largest) in seeded.names
    best = max(evaluator.evaluate([largest]).accuracy)
    assert max(seeded.front_metrics.accuracy) >= best > max(plain.front_metrics.accuracy)
    assert seeded.warm_started == 0, "contenders are not the warm start"
