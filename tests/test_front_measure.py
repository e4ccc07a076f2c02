"""Measured picks: which candidates get timed, and the front rebuilt on what was timed.

The pool and the rebuild are checked on hand-made figures whose answer is known; the last
test runs a real search whose candidates are real onnxruntime graphs timed on this machine.
"""

from __future__ import annotations

import numpy as np
import pytest
from search_helpers import CODEC, COSTS, SPACE, samples, structured_profile, true_accuracy

from lifelong.errors import DataError
from lifelong.predictor.features import SubnetFeatures
from lifelong.predictor.mlp import AccuracyPredictor, PredictorConfig
from lifelong.search.evaluator import Constraints, Metrics
from lifelong.search.front import Front, FrontPoint, choose
from lifelong.search.front_search import SearchSettings, search_front
from lifelong.search.measure import MeasuredPool, MeasureSettings, candidate_pool, measured_front
from policies import load_policy, load_preset


def _metrics(acc: list[float], lat: list[float], size: list[float] | None = None) -> Metrics:
    size = size or [1000.0] * len(acc)
    return Metrics(np.array(acc), np.array(lat), np.array(size), np.array(size) * 2)


def test_the_pool_takes_the_predicted_front_first_then_what_it_dominated() -> None:
    # 0, 1, 2 form the front; 3 and 4 are dominated once (by 1 and 2); 5 is dominated twice
    m = _metrics([0.90, 0.85, 0.80, 0.84, 0.79, 0.78], [3.0, 2.0, 1.0, 2.5, 1.5, 2.6])
    assert candidate_pool(m, Constraints(), 3).tolist() == [2, 1, 0]
    assert candidate_pool(m, Constraints(), 5).tolist() == [2, 1, 0, 4, 3]
    assert sorted(candidate_pool(m, Constraints(), 10).tolist()) == list(range(6))
    assert candidate_pool(m, Constraints(), 0).tolist() == []


def test_the_pool_keeps_size_budgets_exact_and_relaxes_the_latency_budget_by_the_slack() -> None:
    m = _metrics([0.9, 0.8, 0.7, 0.95], [1.4, 1.0, 0.5, 1.6], size=[100, 100, 100, 900])
    budget = Constraints(latency_ms=1.0, model_bytes=500)
    # 3 is over the size budget however fast it might measure; 0 is over the latency budget as
    # predicted, but within 1.5x of it, so it is timed; with no slack it is not
    assert sorted(candidate_pool(m, budget, 10, slack=1.5).tolist()) == [0, 1, 2]
    assert sorted(candidate_pool(m, budget, 10, slack=1.0).tolist()) == [1, 2]


def test_a_last_layer_too_big_for_the_room_left_is_spread_over_latency() -> None:
    lat = np.linspace(0.1, 1.0, 10)
    m = _metrics(list(0.5 + lat / 4), list(lat))  # all ten on one front
    picked = candidate_pool(m, Constraints(), 4)
    assert len(picked) == 4 and picked[0] == 0 and picked[-1] == 9


def _front(names: list[str], acc: list[float], predicted: list[float]) -> Front:
    return Front.from_arrays(names, acc, {1: predicted}, [1000] * len(names), [2000] * len(names))


def test_the_front_is_rebuilt_on_measured_latency_with_the_budget_applied_to_the_measurement(tmp_path) -> None:  # noqa: ANN001
    names = ["a", "b", "c", "d"]
    front = _front(names, [0.90, 0.88, 0.86, 0.80], [0.10, 0.12, 0.20, 0.05])
    # the model rated "a" fast; it measured slow, slower than the more accurate... nothing:
    # "c", predicted slowest, measured fastest of the accurate ones
    measured = ({1: 0.30}, {1: 0.16}, {1: 0.11}, {1: 0.12})
    pool = MeasuredPool(tuple(names), measured, tuple({1: p} for p in (0.10, 0.12, 0.20, 0.05)), 1.0)
    out = measured_front(front, pool, Constraints(latency_ms=0.25), predicted_front=3)
    # "a" is over the budget as measured; "d" is slower than "c" and less accurate: dominated
    assert [p.subnet for p in out.points] == ["c", "b"]
    assert all(p.latency_source == "graph" for p in out.points)
    assert out["c"].latency_at(1) == pytest.approx(0.11) and out["c"].latency_at(1, measured=False) == 0.20
    pick = out.info["measured_pick"]
    assert pick["timed"] == 4 and pick["predicted_front"] == 3 and pick["measured_front"] == 2
    assert pick["prediction_error_b1"]["within_10pct"] == 0.0
    tight = tmp_path / "tight.toml"
    tight.write_text(
        'format_version = 1\nname = "t"\n[budgets]\nlatency_ms_p95 = 0.13\n[objective]\nkind = "max-accuracy"\n'
    )
    policy = load_policy(tight)
    # on the predictions "b" (0.12 ms predicted) would be chosen; it measured 0.16
    assert choose(out, policy, measured=False).subnet == "b"  # type: ignore[union-attr]
    assert choose(out, policy).subnet == "c"  # type: ignore[union-attr]


def test_a_point_says_what_its_latency_timed_and_a_front_file_keeps_it(tmp_path) -> None:  # noqa: ANN001
    point = FrontPoint("x", 0.9, {1: 0.1}, 10, 20, measured_latency_ms={1: 0.12}, latency_source="graph")
    path = Front((point,), {}).save(tmp_path / "front.json")
    assert Front.load(path)["x"].latency_source == "graph"
    with pytest.raises(DataError, match="latency_source must be one of"):
        FrontPoint("x", 0.9, {1: 0.1}, 10, 20, latency_source="guessed")


def test_measure_settings_name_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="candidates must be >= 0.*slack must be >= 1"):
        MeasureSettings(candidates=-1, slack=0.5)


@pytest.mark.slow
def test_a_search_with_measured_picks_times_real_graphs_and_chooses_on_them() -> None:
    features = SubnetFeatures(SPACE, codec=CODEC, costs=COSTS)
    cfgs = samples(300, seed=21)
    predictor = AccuracyPredictor(
        features.length, PredictorConfig(hidden=(32,), max_epochs=30, patience=10), meta={"features": features.name}
    )
    predictor.fit(features(cfgs), true_accuracy(cfgs))
    policy = load_preset("balanced")
    ticks: list[tuple[int, int]] = []
    settings = SearchSettings(evaluations=600, population=30, seed=2, measure=MeasureSettings(candidates=12))
    found = search_front(predictor, structured_profile(), policy, settings=settings, measure_progress=lambda *a: ticks.append(a))  # fmt: skip
    front = found.front
    assert ticks[-1] == (12, 12) and front.info["measured_pick"]["timed"] == 12
    assert 1 <= len(front) <= 12
    for p in front.points:
        assert p.latency_source == "graph" and p.measured_latency_ms is not None
        assert all(ms > 0 for _, ms in p.measured_latency_ms)
    # no kept point is beaten on accuracy and measured latency by another kept one
    lat = [p.latency_at(policy.target.batch) for p in front.points]
    acc = [p.best_accuracy() for p in front.points]
    size = [p.model_bytes for p in front.points]
    for i in range(len(front)):
        for j in range(len(front)):
            better = acc[j] >= acc[i] and lat[j] <= lat[i] and size[j] <= size[i]
            assert not (better and (acc[j], lat[j], size[j]) != (acc[i], lat[i], size[i])), (i, j)
    chosen = choose(front, policy)
    assert chosen is not None and chosen.latency_source == "graph"
